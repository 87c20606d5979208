"""The task's reward: named components and their weighted sum, configured in `rewards:`.

One `RewardFunction` serves every stage that scores text (annotate, estimate_value,
evaluate), so a reward means the same thing everywhere. Add a reward without touching the
library with `type: python` (a function) or `type: hf_classifier` (any classifier).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from alol.core.errors import AlolError
from alol.core.shard import map_blocks
from alol.rewards.components import (Component, DialogRPT, DialogueRewardModel, Diversity, HarperFluency,
                                     HFClassifier, Positivity, PythonFunction, Relevance, RewardInputs, Safety,
                                     ToxiChat)

BLOCK_ROWS = 256  # rows per scoring call of every component (the unit dealt to processes)
BUILTIN_TYPES = ("safety", "positivity", "relevance", "diversity", "harper_fluency", "reward_model", "hf_classifier",
                 "dialog_rpt", "toxichat", "comet_critic", "python")


@dataclasses.dataclass
class RewardComponentConfig:
    """One entry under `rewards:`; the entry's key is the component's name (column `reward_<name>`)."""

    type: str | None = None
    """One of safety, positivity, relevance, diversity, harper_fluency, reward_model, hf_classifier, dialog_rpt,
    toxichat, comet_critic, python. Defaults to the name."""
    weight: float = 1.0
    """Weight of this component in `reward` = sum of weight * component."""
    model: str | None = None
    """hf_classifier: hub id or folder of an AutoModelForSequenceClassification; reward_model: of a
    GPT-NeoX reward model (OASST layout, no remote code); dialog_rpt: of a DialogRPT ranker
    (e.g. microsoft/DialogRPT-updown); toxichat: a local folder with the ToxiChat classifier's state
    dict, GPT-2 config.json and tokenizer; comet_critic: a critic folder (`python -m alol.rewards.comet
    convert`)."""
    test_model: str | None = None
    """reward_model: another reward model for the test split (null: `model`)."""
    max_tokens: int = 1024
    """reward_model, dialog_rpt, toxichat: inputs are left-truncated to this many tokens; comet_critic:
    pairs are truncated to this many."""
    use_stored_logits: bool = True
    """reward_model: use the logits stored with the train split's data replies (PRO's train file, scored
    by the train/validation model) instead of rescoring them; validation and test are always rescored."""
    label: str | int | None = None
    """hf_classifier: the label whose probability is the reward (name or index)."""
    text_pair: str | None = None
    """hf_classifier: null (completion alone), 'context', 'prompt' or 'knowledge' (the wow task's passage:
    FaithCritic's (knowledge, reply) pair) as the first text of a pair."""
    trust_remote_code: bool = False
    """hf_classifier: allow the model's own Python code. Off by default: it runs arbitrary code."""
    head: str | None = None
    """toxichat: state-dict prefix of the 2-way head (null: the only (2, hidden) weight outside the GPT-2 body)."""
    fit_on: str = "train"
    """diversity: 'train' (the train split's completions) or a Parquet file with a `completion` column to
    fit the tf-idf on, relative to the folder dvc runs in (Reddit: the pos + neg train replies)."""
    scale: float = 5.0
    """harper_fluency: the score is exp(-scale * lints / words)."""
    ignore_kinds: list[str] = dataclasses.field(default_factory=lambda: ["Formatting", "Readability", "Style"])
    """harper_fluency: Harper lint kinds not counted (spacing and style advice, not errors)."""
    use_stored_scores: bool = True
    """comet_critic: train and validation data replies keep the score stored with them (ATOMIC-10x's
    p_valid_model, the authors' train reward); test rows and generated replies are scored by the critic."""
    seed: int = 0
    """comet_critic: seed of the first names that replace PersonX / PersonY (drawn per head)."""
    function: str | None = None
    """python: 'module:function' taking (prompts, completions) and returning one float per row."""
    batch_size: int = 64
    """Rows per forward pass for model-based components."""
    dtype: str = "auto"
    """Model-based components: float32, bfloat16 or float16; auto: bf16 on a GPU for reward_model and
    hf_classifier, float32 for the small built-ins and on the CPU (alol/core/device.py says why)."""


def build_component(name: str, cfg: RewardComponentConfig, assets: Path, where: str) -> Component:
    kind = cfg.type or name
    if kind == "safety":
        return Safety(assets, batch_size=max(cfg.batch_size, 256), dtype=cfg.dtype)
    if kind == "positivity":
        return Positivity()
    if kind == "relevance":
        return Relevance(assets, batch_size=cfg.batch_size, dtype=cfg.dtype)
    if kind == "diversity":
        return Diversity(cfg.fit_on)
    if kind == "harper_fluency":
        return HarperFluency(cfg.scale, tuple(cfg.ignore_kinds))
    if kind == "dialog_rpt":
        return DialogRPT(cfg.model, where, cfg.max_tokens, min(cfg.batch_size, 16), cfg.dtype)
    if kind == "toxichat":
        return ToxiChat(cfg.model, cfg.head, where, cfg.max_tokens, min(cfg.batch_size, 16), cfg.dtype)
    if kind == "reward_model":
        return DialogueRewardModel(cfg.model, cfg.test_model, cfg.max_tokens, cfg.use_stored_logits, where,
                                   min(cfg.batch_size, 8), cfg.dtype)
    if kind == "hf_classifier":
        if not cfg.model:
            raise AlolError(f"{where}.model: hf_classifier needs a model (hub id or folder).")
        return HFClassifier(cfg.model, cfg.label, cfg.text_pair, where, cfg.batch_size,
                            trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    if kind == "comet_critic":
        from alol.rewards.comet import CometCriticReward

        return CometCriticReward(cfg.model, where, cfg.seed, cfg.use_stored_scores, cfg.batch_size,
                                 min(cfg.max_tokens, 512), cfg.dtype)
    if kind == "python":
        return PythonFunction(cfg.function, where)
    hint = "" if cfg.type else f" (no `type:` given, so the name {name!r} was taken as the type)"
    raise AlolError(f"{where}: unknown reward component type {kind!r}{hint}. Valid types: {', '.join(BUILTIN_TYPES)}.")


class RewardFunction:
    """reward_<name> per component and `reward` = their weighted sum, with every value checked; plus
    `raw_reward` when a component squashes its score (see `raw_reward`)."""

    def __init__(self, configs: dict[str, RewardComponentConfig], assets: str | Path,
                 where: str = "params.yaml: rewards"):
        if not configs:
            raise AlolError(f"{where}: no reward components configured; add at least one, e.g. `safety: {{weight: 1.0}}`.")
        self.where = where
        self.weights = {name: cfg.weight for name, cfg in configs.items()}
        self.components = {name: build_component(name, cfg, Path(assets), f"{where}.{name}")
                           for name, cfg in configs.items()}

    @property
    def columns(self) -> list[str]:
        return [f"reward_{name}" for name in self.components] + ["reward"]

    def fit(self, train: RewardInputs) -> dict:
        """Fit components that learn from train data; return their state (JSON-serialisable)."""
        for component in self.components.values():
            component.fit(train)
        return self.state()

    def state(self) -> dict:
        return {name: c.state() for name, c in self.components.items() if c.state() is not None}

    def load_state(self, state: dict) -> None:
        for name, component in self.components.items():
            if isinstance(component, Diversity):
                component.load_state(state.get(name))

    def __call__(self, rows: RewardInputs, source: str = "", row_ids: list[str] | None = None,
                 description: str | None = "scoring", local: bool = False) -> dict[str, np.ndarray]:
        """Score `rows`. `source` and `row_ids` only serve error messages (file and row).

        Rows are scored in blocks of BLOCK_ROWS in their given order, the blocks dealt to processes
        (alol.core.shard): every process must call this with the same rows, and gets every score back;
        local=True scores this process's own rows alone (a TRL trainer's per-process completions).
        `raw_reward` (the weighted sum with each squashed component's raw value, e.g. a reward
        model's logit) is added when a component has one."""
        raws = [type(c).raw_and_score is not Component.raw_and_score for c in self.components.values()]

        def block(number: int, idx: list[int]) -> list[list[float]]:
            part, columns = rows.subset(idx), []
            for component in self.components.values():
                raw, score = component.raw_and_score(part)
                columns += [np.asarray(score, dtype=np.float64),
                            np.full(len(idx), np.nan) if raw is None else np.asarray(raw, dtype=np.float64)]
            return np.stack(columns, axis=1).tolist()

        values = np.asarray(map_blocks(block, range(len(rows)), BLOCK_ROWS, description, local), dtype=np.float64)
        values = values.reshape(len(rows), 2 * len(self.components))
        out = {}
        for column, name in enumerate(self.components):
            bad = np.flatnonzero(~np.isfinite(values[:, 2 * column]))
            if bad.size:
                row = int(bad[0])
                rid = f" (prompt_id {row_ids[row]!r})" if row_ids else ""
                raise AlolError(f"{self.where}.{name}: returned {values[row, 2 * column]} for row {row}{rid} of "
                                f"{source or 'the input'}; every reward must be a finite number ({bad.size} bad row(s)).")
            out[f"reward_{name}"] = values[:, 2 * column]
        out["reward"] = sum(self.weights[n] * out[f"reward_{n}"] for n in self.components) if out else np.zeros(0)
        if any(raws):
            out["raw_reward"] = sum(self.weights[n] * values[:, 2 * i + 1 if raw else 2 * i]
                                    for i, (n, raw) in enumerate(zip(self.components, raws)))
        return out


def raw_reward(table) -> np.ndarray:
    """PRO's reward scale (spec section 2: its temperature is a difference of RAW reward-model
    scores): the weighted sum of each component's raw score, a reward model's logit rather than
    its sigmoid. A task whose components squash nothing (the chit-chat default: every built-in is
    a probability or a score in [0, 1] with no logit beneath) has no `raw_reward`: it is `reward`.
    `table`: the scores of a RewardFunction call, or a table of its columns."""
    return np.asarray(table["raw_reward"] if "raw_reward" in table else table["reward"], dtype=np.float64)


def reward_configs(params: dict) -> dict[str, RewardComponentConfig]:
    """The `rewards:` section of loaded params as component configs."""
    from alol.core.params import from_dict, params_file

    where = f"{params_file(params)}: rewards"
    raw = params.get("rewards") or {}
    if not isinstance(raw, dict):
        raise AlolError(f"{where}: expected a mapping of component name -> settings.")
    return {name: from_dict(RewardComponentConfig, cfg or {}, f"{where}.{name}") for name, cfg in raw.items()}
