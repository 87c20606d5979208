"""The task's reward: named components and their weighted sum, configured in `rewards:`.

One `RewardFunction` serves every stage that scores text (annotate, estimate_value,
evaluate), so a reward means the same thing everywhere. Add a reward without touching the
library with `type: python` (a function of the prompts, the replies and the rows' other
columns) or `type: hf_classifier` (any classifier).

Each `type:` is one module of this package, ending with its record (components.RewardType):
its own config dataclass (so a key of another type is an error), how it is built, the row's
columns it needs, its bounds, what it fits on train data, and its asset folders. REWARD_TYPES
below is the one place where a `type:` string becomes code.

Adding a reward type `my_type`:
  1. alol/rewards/my_type.py: `MyTypeConfig(RewardConfig)` with a docstring per setting, a
     `Component` subclass (`score(rows) -> one float per row`; `fit` / `state` / `load_state`
     if it learns from train data), and at the end
     `REWARD_TYPE = RewardType(name="my_type", config=MyTypeConfig, build=..., bounds=(0.0, 1.0))`
     (bounds None if unknown; `needs`, `fits`, `assets`, `fit_files` when they apply). Import heavy
     libraries inside the component, as the other modules do.
  2. One line in TYPE_MODULES below (tests/test_rewards.py checks that every type module is listed).
  3. Its test, e.g. tests/test_rewards.py, with a score worked out by hand.
Nothing else: params checking, the error for unknown keys, the value head's range, DVC's
asset deps (asset_deps) all read the record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from alol.core.errors import AlolError
from alol.core.shard import map_blocks
from alol.rewards import (column, comet_critic, dialog_rpt, diversity, harper_fluency, hf_classifier, positivity,
                          python, relevance, reward_model, safety, toxichat)
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType

BLOCK_ROWS = 256  # rows per scoring call of every component (the unit dealt to processes)
TYPE_MODULES = (safety, positivity, relevance, diversity, harper_fluency, reward_model, hf_classifier, dialog_rpt,
                toxichat, comet_critic, python, column)
REWARD_TYPES: dict[str, RewardType] = {m.REWARD_TYPE.name: m.REWARD_TYPE for m in TYPE_MODULES}
"""`type:` -> its record: the only place a reward type's name becomes code."""
_BY_CONFIG = {record.config: record for record in REWARD_TYPES.values()}


def reward_type(cfg: RewardConfig) -> RewardType:
    """The record of a component's settings (each type has its own config class)."""
    return _BY_CONFIG[type(cfg)]


def reward_config(name: str, settings: dict, where: str = "rewards") -> RewardConfig:
    """Entry `name` of `rewards:` as its type's config; `where` names it in errors (`<file>: rewards.<name>`
    is f"{where}.{name}")."""
    from alol.core.params import from_dict

    where = f"{where}.{name}"
    settings = settings or {}
    if not isinstance(settings, dict):
        raise AlolError(f"{where}: expected a mapping of settings, got {settings!r}.")
    kind = settings.get("type") or name
    if not isinstance(kind, str) or kind not in REWARD_TYPES:
        hint = "" if settings.get("type") else f" (no `type:` given, so the name {name!r} was taken as the type)"
        raise AlolError(f"{where}: unknown reward component type {kind!r}{hint}. Valid types: {', '.join(REWARD_TYPES)}.")
    record = REWARD_TYPES[kind]
    valid = sorted(f.name for f in dataclasses.fields(record.config))
    foreign = sorted(set(settings) - set(valid))
    if foreign:
        owners = {key: [t for t, r in REWARD_TYPES.items() if key in {f.name for f in dataclasses.fields(r.config)}]
                  for key in foreign}
        elsewhere = "; ".join(f"{key!r} is a setting of {', '.join(types)}" for key, types in owners.items() if types)
        raise AlolError(f"{where}: unknown setting(s) {foreign} for a {kind} reward"
                        f"{f' ({elsewhere})' if elsewhere else ''}; valid settings of {kind} are {valid}.")
    cfg = from_dict(record.config, settings, where)
    cfg.check(where)
    return cfg


def reward_bounds(cfg: RewardConfig) -> tuple[float, float] | None:
    """[low, high] of one component's scores under its settings (its record's `bounds`); None: unknown."""
    bounds = reward_type(cfg).bounds
    return bounds(cfg) if callable(bounds) else bounds


def build_component(name: str, cfg: RewardConfig, assets: Path, where: str) -> Component:
    """The component of one `rewards:` entry, built by its type's record."""
    return reward_type(cfg).build(cfg, Path(assets), where)


class RewardFunction:
    """reward_<name> per component and `reward` = their weighted sum, with every value checked; plus
    `raw_reward` when a component squashes its score (see `raw_reward`)."""

    def __init__(self, configs: dict[str, RewardConfig], assets: str | Path, where: str = "params.yaml: rewards"):
        if not configs:
            raise AlolError(f"{where}: no reward components configured; add at least one, e.g. `safety: {{weight: 1.0}}`.")
        self.where = where
        self.weights = {name: cfg.weight for name, cfg in configs.items()}
        self.components = {name: build_component(name, cfg, Path(assets), f"{where}.{name}")
                           for name, cfg in configs.items()}
        # the components that fit on train data (their record says what): the only ones with a state
        self.fitted = [name for name, cfg in configs.items() if reward_type(cfg).fits]

    @property
    def columns(self) -> list[str]:
        return [f"reward_{name}" for name in self.components] + ["reward"]

    def fit(self, train: RewardInputs, heldout: RewardInputs | None = None) -> dict:
        """Fit components that learn from train data (`heldout`: validation rows to select on); return
        their state (JSON-serialisable; `tensors()` holds their arrays)."""
        for name in self.fitted:
            self.components[name].fit(train, heldout)
        return self.state()

    def state(self) -> dict:
        return {name: self.components[name].state() for name in self.fitted}

    def load_state(self, state: dict, tensors: dict | None = None) -> None:
        for name in self.fitted:
            self.components[name].load_state(state.get(name))
            own = {key.split(".", 1)[1]: value for key, value in (tensors or {}).items() if key.split(".", 1)[0] == name}
            if own:
                self.components[name].load_tensors(own)

    def tensors(self) -> dict:
        """The fitted components' arrays as {'<name>.<key>': tensor} (one safetensors file)."""
        return {f"{name}.{key}": value for name in self.fitted for key, value in self.components[name].tensors().items()}

    def unscorable(self, frame) -> np.ndarray:
        """Rows of a data table whose own reply some component cannot score (a missing score)."""
        masks = [m for m in (c.unscorable(frame) for c in self.components.values()) if m is not None]
        return np.logical_or.reduce(masks) if masks else np.zeros(frame.height, bool)

    def agreement(self, rows: RewardInputs) -> dict:
        """{component: how its score of new text agrees with the data's own} for the components that have one."""
        return {name: a for name, c in self.components.items() if (a := c.agreement(rows)) is not None}

    def describe(self) -> str:
        """The reward in words, as evaluate reports it: 'safety + positivity' or
        'score (new text: a regression head on MiniLM, learned from the column)'."""
        parts = []
        for name, component in self.components.items():
            weight = "" if self.weights[name] == 1 else f"{self.weights[name]:g} x "
            extra = component.describe()
            parts.append(f"{weight}{name}" + (f" ({extra})" if extra else ""))
        return " + ".join(parts)

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


def reward_configs(params: dict) -> dict[str, RewardConfig]:
    """The `rewards:` section of loaded params: component name -> its type's config."""
    from alol.core.params import params_file

    return configs_of(params.get("rewards") or {}, f"{params_file(params)}: rewards")


def configs_of(raw, where: str) -> dict[str, RewardConfig]:
    """A mapping of component name -> settings (a `rewards:` section) as configs; `where` names it in errors."""
    if not isinstance(raw, dict):
        raise AlolError(f"{where}: expected a mapping of component name -> settings.")
    return {name: reward_config(name, settings, where) for name, settings in raw.items()}


def evaluation_reward_configs(params: dict) -> dict[str, RewardConfig] | None:
    """`evaluate.rewards:`, the reward evaluate scores test replies with when it is not the training
    reward (e.g. a judge the policy never trained on); None: evaluation uses `rewards:`."""
    from alol.core.params import params_file

    raw = (params.get("evaluate") or {}).get("rewards")
    return None if raw is None else configs_of(raw, f"{params_file(params)}: evaluate.rewards")


def every_reward_config(params: dict, evaluation: bool = True) -> dict[str, RewardConfig]:
    """The training reward's configs and (`evaluation`) evaluate.rewards' as 'evaluate.<name>': what the
    stages that build them read (assets) and fit on (fit files)."""
    more = (evaluation_reward_configs(params) or {}) if evaluation else {}
    return {**reward_configs(params), **{f"evaluate.{name}": cfg for name, cfg in more.items()}}


def asset_deps(configs: dict[str, RewardConfig] | None = None, folder: str = "data/assets") -> list[str]:
    """The asset folders the reward of `configs` reads (None: every reward type's), as DVC deps of
    every stage that scores: ['data/assets/toxicity', 'data/assets/minilm'] for chit-chat's."""
    records = REWARD_TYPES.values() if configs is None else [reward_type(c) for c in configs.values()]
    return list(dict.fromkeys(f"{folder}/{asset}" for record in records for asset in record.assets))


def needed_columns(configs: dict[str, RewardConfig]) -> list[str]:
    """The row columns the reward of `configs` needs (each type's `needs`), e.g. for a task to check
    that its tables provide them: ['completion', 'context'] for chit-chat's."""
    return list(dict.fromkeys(column for cfg in configs.values() for column in reward_type(cfg).needs(cfg)))


def fit_deps(configs: dict[str, RewardConfig]) -> list[str]:
    """Files the fit on train data reads besides the train split (diversity's `fit_on`), as DVC
    deps of annotate, the stage that fits; relative to the folder dvc runs in."""
    return list(dict.fromkeys(path for cfg in configs.values() for path in reward_type(cfg).fit_files(cfg)))
