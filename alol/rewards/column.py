"""`column`: a score the data already carries (a rating, upvotes, a thumbs-up label, chosen over
rejected) as a reward component, with a reward model learned from it for text the data has no score for.

    rewards:
      rating:
        type: column
        column: upvotes          # carried into the tables by clean.keep: [upvotes]
        transform: [log1p, zscore]
        stand_in: {}             # learn a reward model from it (alol/rewards/learned.py)

The data's own replies are scored by their column, transformed in the order given (each step fit on
the train rows): `log1p`, `rank` (the train rows' empirical CDF, mid-ranks: [0, 1]), `zscore` (train
mean and standard deviation); then `clip`. Every other text (the reference's validation replies in
estimate_value, the test replies in evaluate, rollouts, periodic validation) is scored by the learned
stand-in, which predicts the same transformed scale (regression), the label's probability (logistic, a
boolean column) or, for preference data with `column: null` (the pair itself: chosen over rejected),
a Bradley-Terry logit. A logit has no common scale with the pair's 1 / 0, so then the data's replies are
scored by the stand-in too (on_data: learned): A-LoL's advantage R - V(x) needs R and V on one scale.

A column reward without a stand-in is refused whenever params are read (ColumnConfig.check: every
stage's first step, so before any work): every pipeline scores new text (at least the reference's
replies that V(x) is fit on).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from alol.core.errors import AlolError
from alol.rewards import learned
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType

TRANSFORMS = ("log1p", "rank", "zscore")


@dataclasses.dataclass
class StandInConfig:
    """`stand_in:` the reward model learned from the column (a linear head on a frozen encoder,
    alol/rewards/learned.py), which scores every reply the data has no score for."""

    loss: Literal["auto", "regression", "logistic", "bradley_terry"] = "auto"
    """auto: logistic for a boolean column, bradley_terry for preference data with `column: null`,
    regression (to the transformed score) otherwise."""
    l2: list[float] = dataclasses.field(default_factory=lambda: [1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1])
    """L2 strengths tried; the one with the lowest loss on the select half of the validation
    conversations is kept (the other half reports the fit)."""
    encoder: str = "minilm"
    """The frozen sentence encoder: a folder of the assets folder (MiniLM, shipped offline)."""
    batch_size: int = 64
    """Texts per forward pass of the encoder."""
    max_iter: int = 200
    """L-BFGS iterations per fit."""
    seed: int = 0
    """Which validation conversations select and which report."""


@dataclasses.dataclass
class ColumnConfig(RewardConfig):
    column: str | None = None
    """The data's numeric or boolean column (carry it with clean.keep); a list column scores each
    candidate. null on preference data: the pair itself, chosen 1 and rejected 0."""
    transform: list[str] = dataclasses.field(default_factory=list)
    """Steps applied in order, each fit on the train rows: log1p, rank (to [0, 1]), zscore."""
    clip: list[float] | None = None
    """[low, high] after the transform (also the reward's known range, for the value head)."""
    missing: Literal["drop", "error"] = "drop"
    """A row without a score: dropped by annotate (counted per split in its stats), or an error."""
    stand_in: StandInConfig | None = None
    """The learned reward for new text; required (`stand_in: {}` takes the defaults)."""
    on_data: Literal["auto", "column", "learned"] = "auto"
    """What scores the data's own replies: the column, or the stand-in (auto: the column, except for a
    Bradley-Terry stand-in, whose logits are not on the pair's 0 / 1 scale)."""

    def __post_init__(self):
        unknown = [t for t in self.transform if t not in TRANSFORMS]
        if unknown:
            raise ValueError(f"transform: unknown step(s) {unknown}; valid steps are {list(TRANSFORMS)}")
        if self.clip is not None and (len(self.clip) != 2 or self.clip[0] >= self.clip[1]):
            raise ValueError(f"clip must be [low, high] with low < high, got {self.clip}")

    def check(self, where: str) -> None:
        if self.stand_in is None:  # every pipeline scores new text, so a stage reading params refuses it
            raise AlolError(
                f"{where}: a column reward scores only the data's own replies, and this pipeline scores new text "
                "too (the reference's replies that V(x) is fit on, the test replies in evaluate, rollouts). Add "
                f"`stand_in: {{}}` under {where.split(': ', 1)[-1]} to learn a reward model from the column "
                "(a head on the shipped MiniLM encoder; alol/rewards/column.py), or score text with another reward type.")


def _bounds(cfg: ColumnConfig) -> tuple[float, float] | None:
    if cfg.clip is not None:
        return float(cfg.clip[0]), float(cfg.clip[1])
    if cfg.transform and cfg.transform[-1] == "rank":
        return 0.0, 1.0
    if not cfg.transform and cfg.stand_in is not None and cfg.stand_in.loss == "logistic":
        return 0.0, 1.0
    return None  # log1p, zscore, a raw score, a logit: no known range (the value head stays linear)


class Column(Component):
    def __init__(self, cfg: ColumnConfig, assets: Path, where: str):
        cfg.check(where)  # reward_config checked it already; a config built by hand is checked here
        self.cfg, self.stand_in, self.where = cfg, cfg.stand_in, where
        self.encoder_folder = Path(assets) / cfg.stand_in.encoder
        self._encoder = None
        self.kind: str | None = None
        self.steps: list[dict] = []
        self.head: learned.Head | None = None
        self.report: dict = {}

    # --- the column -----------------------------------------------------------------------------

    @property
    def on_data(self) -> str:
        if self.cfg.on_data != "auto":
            return self.cfg.on_data
        return "learned" if self.kind == "bradley_terry" else "column"

    def raw_values(self, rows: RewardInputs) -> np.ndarray:
        """The data's own score of each row's reply (candidate k of a list column); NaN where there is none."""
        k = rows.candidate
        if k is None:
            return np.full(len(rows), np.nan)
        if self.cfg.column is None:  # the pair itself: chosen (candidate 0) 1, rejected 0
            return np.full(len(rows), 1.0 if k == 0 else 0.0)
        values = rows.get(self.cfg.column)
        if values is None:
            raise AlolError(f"{self.where}.column: these rows have no column {self.cfg.column!r}; carry it into the "
                            "tables with clean.keep.")
        out = np.full(len(rows), np.nan)
        for i, v in enumerate(values):
            if isinstance(v, (list, tuple)):
                v = v[k] if k < len(v) else None
            elif k > 0:
                v = None  # one score per row describes its reply, not its other candidates
            if v is not None:
                try:
                    out[i] = float(v)
                except (TypeError, ValueError):
                    raise AlolError(f"{self.where}.column: row {i} of {self.cfg.column!r} is {v!r}, not a number or "
                                    "a boolean.") from None
        return out

    def transformed(self, raw: np.ndarray) -> np.ndarray:
        """The transform's steps (fit on train by `fit_transform`), then the clip."""
        x = raw.astype(np.float64)
        for step in self.steps:
            x = _apply(step, x)
        x = x if self.cfg.clip is None else np.clip(x, *self.cfg.clip)
        return np.where(np.isnan(raw), np.nan, x)  # no score stays no score (rank would place NaN last)

    def fit_transform(self, raw: np.ndarray) -> None:
        self.steps, x = [], raw.astype(np.float64)
        for name in self.cfg.transform:
            if name == "log1p" and (x <= -1).any():
                raise AlolError(f"{self.where}.transform: log1p needs every score > -1; the train rows' lowest is "
                                f"{x.min():g}. Use rank or zscore instead.")
            step = {"name": name}
            if name == "rank":
                step["sorted"] = np.sort(x)
            elif name == "zscore":
                if x.std() == 0:
                    raise AlolError(f"{self.where}.transform: zscore of a constant score ({x[0]:g} on every train row).")
                step |= {"mean": float(x.mean()), "std": float(x.std())}
            self.steps.append(step)
            x = _apply(step, x)

    def unscorable(self, frame) -> np.ndarray | None:
        import polars as pl

        if self.cfg.column is None:
            return None
        name = self.cfg.column
        if name not in frame.columns:
            raise AlolError(f"{self.where}.column: the tables have no column {name!r} (their columns: {frame.columns}); "
                            f"carry it with clean.keep: [{name}].")
        col = pl.col(name)
        if frame.schema[name].is_float():
            bad = col.is_null() | ~col.is_finite()
        elif frame.schema[name] == pl.Boolean or frame.schema[name].is_numeric():
            bad = col.is_null()
        elif isinstance(frame.schema[name], pl.List):
            bad = col.is_null() | col.list.eval(pl.element().is_null()).list.any()
        else:
            raise AlolError(f"{self.where}.column: {name!r} is {frame.schema[name]}; a score column must be numeric "
                            "or boolean (or a list of numbers, one per candidate).")
        mask = frame.select(bad.fill_null(True))[name].to_numpy()
        if self.cfg.missing == "error" and mask.any():
            row = int(np.flatnonzero(mask)[0])
            rid = frame["prompt_id"][row] if "prompt_id" in frame.columns else row
            raise AlolError(f"{self.where}: row {row} (prompt_id {rid!r}) has no {name!r} score ({int(mask.sum())} "
                            "row(s) in all); drop them in your data, or set `missing: drop`.")
        return mask

    # --- the stand-in -----------------------------------------------------------------------------

    @property
    def encoder(self):
        if self._encoder is None:
            from alol.rewards.relevance import sentence_encoder

            if not self.encoder_folder.exists():
                raise AlolError(f"{self.where}.stand_in.encoder: {self.encoder_folder} does not exist; the download "
                                "stage writes minilm there.")
            self._encoder = sentence_encoder(self.encoder_folder, self.stand_in.batch_size)
        return self._encoder

    def features(self, rows: RewardInputs, replies: list[str] | None = None) -> torch.Tensor:
        contexts = rows.get("context")
        contexts = list(rows.prompts if contexts is None else contexts)
        c = self.encoder.encode(contexts)
        r = self.encoder.encode(list(rows.completions if replies is None else replies))
        return torch.cat([c, r, c * r], dim=1)

    def _resolve_kind(self, rows: RewardInputs) -> str:
        if self.stand_in.loss != "auto":
            return self.stand_in.loss
        if self.cfg.column is None:
            return "bradley_terry"
        values = rows.get(self.cfg.column)
        return "logistic" if values is not None and all(isinstance(v, bool) for v in values) else "regression"

    def _rows(self, rows: RewardInputs) -> learned.Rows:
        """The stand-in's training rows: features and the transformed score (BT: chosen and rejected features)."""
        if self.kind == "bradley_terry":
            candidates = rows.get("candidates")
            if candidates is None:
                raise AlolError(f"{self.where}: a bradley_terry stand-in learns from preference pairs, and these rows "
                                "have no `candidates` (use preference data, or a score column).")
            return learned.Rows(self.features(rows, [c[0] for c in candidates]),
                                rejected=self.features(rows, [c[1] for c in candidates]))
        y = self.transformed(self.raw_values(rows))
        if self.kind == "logistic" and not np.isin(y, (0.0, 1.0)).all():
            raise AlolError(f"{self.where}: a logistic stand-in learns a label; {self.cfg.column!r} has values other "
                            "than true / false (or 1 / 0) after the transform. Use loss: regression.")
        return learned.Rows(self.features(rows), torch.as_tensor(y, dtype=torch.float32))

    def fit(self, train: RewardInputs, heldout: RewardInputs | None = None) -> None:
        self.kind = self._resolve_kind(train)
        if self.kind == "logistic" and self.cfg.transform:
            raise AlolError(f"{self.where}.transform: a label column takes no transform (loss: logistic).")
        if self.kind != "bradley_terry":
            self.fit_transform(self.raw_values(train))
        if heldout is None:
            raise AlolError(f"{self.where}: the stand-in selects and reports on the validation split, which is missing.")
        groups = heldout.get("group_id")
        groups = list(range(len(heldout))) if groups is None else list(groups)
        names = sorted(set(groups))
        if len(names) < 2:
            raise AlolError(f"{self.where}: the stand-in needs validation rows from at least 2 conversations "
                            f"(group_id) to select on one half and report on the other; got {len(names)}.")
        order = np.random.default_rng(self.stand_in.seed).permutation(len(names))
        selecting = {names[g] for g in order[:len(names) // 2]}
        pick = np.array([g in selecting for g in groups])
        fit_rows, held_rows = self._rows(train), self._rows(heldout)
        chosen = np.flatnonzero(pick)
        reporting = np.flatnonzero(~pick)
        self.head, l2, curve = learned.select(self.kind, fit_rows, held_rows.take(chosen), self.stand_in.l2,
                                              self.stand_in.max_iter)
        self.report = {"loss": self.kind, "l2": l2, "selection": curve, "fit_rows": len(fit_rows),
                       "select_rows": len(chosen), "report": self._quality(held_rows.take(reporting))}

    def _quality(self, rows: learned.Rows) -> dict:
        if self.kind == "bradley_terry":
            return learned.quality(self.kind, learned.predict(self.kind, self.head, rows.x), None,
                                   learned.predict(self.kind, self.head, rows.rejected))
        return learned.quality(self.kind, self.predict(rows.x), rows.y.double().numpy())

    def predict(self, x: torch.Tensor) -> np.ndarray:
        out = learned.predict(self.kind, self.head, x)
        return out if self.cfg.clip is None or self.kind != "regression" else np.clip(out, *self.cfg.clip)

    def score(self, rows: RewardInputs) -> np.ndarray:
        if self.head is None:
            raise AlolError(f"{self.where}: the column reward must be fit on the train rows first (annotate).")
        values = self.transformed(self.raw_values(rows)) if self.on_data == "column" else np.full(len(rows), np.nan)
        new = np.flatnonzero(np.isnan(values))
        if new.size:  # text the data has no score for: the learned reward
            values[new] = self.predict(self.features(rows.subset(new.tolist())))
        return values

    def agreement(self, rows: RewardInputs) -> dict | None:
        """The stand-in against the data's own score on these (held-out) data replies."""
        if rows.candidate is None or (self.cfg.column is not None and rows.get(self.cfg.column) is None):
            return None
        if self.kind == "bradley_terry":
            candidates = rows.get("candidates")
            if candidates is None:
                return None
            return learned.quality(self.kind, self.predict(self.features(rows, [c[0] for c in candidates])), None,
                                   self.predict(self.features(rows, [c[1] for c in candidates])))
        data = self.transformed(self.raw_values(rows))
        keep = np.flatnonzero(~np.isnan(data))
        return learned.quality(self.kind, self.predict(self.features(rows.subset(keep.tolist()))), data[keep])

    def describe(self) -> str:
        what = "the pair (chosen 1, rejected 0)" if self.cfg.column is None else f"column {self.cfg.column!r}"
        steps = f", {' then '.join(self.cfg.transform)}" if self.cfg.transform else ""
        data = "the data's replies by the column" if self.on_data == "column" else "every reply by the stand-in"
        return (f"{what}{steps}; {data}; new text by a {self.kind} head on {self.stand_in.encoder}, learned from it "
                f"(validation: {_headline(self.report.get('report', {}))})")

    # --- the fitted state -------------------------------------------------------------------------

    def state(self) -> dict:
        steps = [{k: v for k, v in s.items() if k != "sorted"} for s in self.steps]
        return {"loss": self.kind, "transform": steps, **self.report}

    def load_state(self, state: dict | None) -> None:
        if not state or "loss" not in state:
            raise AlolError(f"{self.where}: no fitted state of the column reward; run the annotate stage first.")
        self.kind = state["loss"]
        self.steps = [dict(s) for s in state["transform"]]
        self.report = {k: v for k, v in state.items() if k not in ("loss", "transform")}

    def tensors(self) -> dict:
        out = {"weight": self.head.weight, "bias": self.head.bias.reshape(1)}
        out |= {f"rank_{i}": torch.as_tensor(s["sorted"]) for i, s in enumerate(self.steps) if "sorted" in s}
        return out

    def load_tensors(self, tensors: dict) -> None:
        self.head = learned.Head(tensors["weight"], tensors["bias"].reshape(()))
        for i, step in enumerate(self.steps):
            if step["name"] == "rank":
                step["sorted"] = tensors[f"rank_{i}"].numpy()


def _apply(step: dict, x: np.ndarray) -> np.ndarray:
    if step["name"] == "log1p":
        return np.log1p(x)
    if step["name"] == "rank":  # mid-rank empirical CDF of the train rows: ties share the middle of their run
        ref = step["sorted"]
        return (np.searchsorted(ref, x, "left") + np.searchsorted(ref, x, "right")) / (2 * len(ref))
    return (x - step["mean"]) / step["std"]


def _headline(report: dict) -> str:
    for key in ("r2", "auc", "pairwise_accuracy"):
        if key in report:
            ci = report.get(f"{key}_ci") or [float("nan")] * 2
            return f"{key} {report[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] on {report['rows']} rows"
    return "not fitted"


REWARD_TYPE = RewardType(
    name="column", config=ColumnConfig, bounds=_bounds, assets=("minilm",),
    needs=lambda cfg: ("completion",) + ((cfg.column,) if cfg.column else ("candidates",)),
    optional=("context",),
    fits="the column's transform on the train rows, and the stand-in (a head on MiniLM) selected on validation",
    build=lambda cfg, assets, where: Column(cfg, assets, where))
