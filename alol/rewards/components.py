"""What every reward type module builds on: the rows it scores, the component it returns, the
settings every type shares, and the record that describes a type to the rest of the pipeline.

A reward type is one module (alol/rewards/<type>.py) that ends with its `REWARD_TYPE` record; the
registry `alol.rewards.REWARD_TYPES` lists the records. See alol/rewards/__init__.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alol.core.errors import AlolError


class FrameColumns(Mapping):
    """A table's columns as lists, read on demand (a component reads only the columns it needs), so
    scoring a block of rows never converts the whole table."""

    def __init__(self, frame):
        self.frame = frame
        self.cache: dict[str, list] = {}

    def __getitem__(self, name: str) -> list:
        if name not in self.cache:
            if name not in self.frame.columns:
                raise KeyError(name)
            self.cache[name] = self.frame[name].to_list()
        return self.cache[name]

    def __iter__(self):
        return iter(self.frame.columns)

    def __len__(self) -> int:
        return len(self.frame.columns)

    def take(self, rows: list[int]) -> "FrameColumns":
        import polars as pl

        return FrameColumns(self.frame.select(pl.all().gather(rows)))


class RewardInputs:
    """The rows to score: the replies, their prompts, and the rows' other columns by their table
    names (`context`, `turns`, `knowledge`, `prompt_id`, ...; for a generated reply, the columns of
    its prompt's row). Open: a task's new column reaches every reward without editing this class.

    RewardInputs(prompts, completions, contexts, turns=..., knowledge=...) keeps the old spelling:
    `contexts` is the `context` column, every other keyword a column of that name."""

    def __init__(self, prompts: list[str], completions: list[str], contexts: list[str] | None = None, *,
                 split: str | None = None, stored_logits: list[float] | None = None,
                 stored_scores: list[float] | None = None, columns: Mapping[str, Sequence] | None = None,
                 candidate: int | None = None, **named_columns: Sequence | None):
        self.prompts, self.completions = prompts, completions
        self.split = split
        self.candidate = candidate
        """Which of the data's own replies these are: 0 the row's reply, k its candidate k (preference
        data); None for any other text (a generated reply), which a score column does not describe."""
        """train / validation / test: a component may score the test split with another model."""
        self.stored_logits = stored_logits
        """Reward-model logits stored with the data for these very completions (HH), if any."""
        self.stored_scores = stored_scores
        """A score stored with the data for these very completions (COMET: ATOMIC-10x's p_valid_model), if any."""
        extra = {"context": contexts, **named_columns}
        extra = {name: values for name, values in extra.items() if values is not None}
        columns = {} if columns is None else columns
        if extra:
            columns = {**columns, **extra}
        self.columns: Mapping[str, Sequence] = columns
        """The rows' other columns (never `prompt` or `completion`), one list per column."""

    def __len__(self) -> int:
        return len(self.completions)

    def get(self, name: str) -> Sequence | None:
        """Column `name` of the rows, or None when the task has no such column."""
        return self.columns[name] if name in self.columns else None

    @property
    def contexts(self) -> Sequence:
        """The text the completion replies to (the last user turn): what `relevance` compares against."""
        if "context" not in self.columns:
            raise AlolError("these rows have no `context` column (the text each reply answers).")
        return self.columns["context"]

    def subset(self, rows: list[int]) -> "RewardInputs":
        pick = lambda values: None if values is None else [values[i] for i in rows]  # noqa: E731
        if isinstance(self.columns, FrameColumns):
            columns = self.columns.take(rows)
        else:
            columns = {name: pick(values) for name, values in self.columns.items()}
        return RewardInputs(pick(self.prompts), pick(self.completions), split=self.split,
                            stored_logits=pick(self.stored_logits), stored_scores=pick(self.stored_scores),
                            columns=columns, candidate=self.candidate)


class Component:
    """Base class: override `score`; `fit` / `state` / `load_state` only if the type's record says
    it `fits` something on the train split (`heldout`: the validation split's own replies, for a fit
    that selects a setting on held-out rows); `tensors` / `load_tensors` for a fitted state of arrays
    (saved as safetensors beside the JSON state)."""

    def fit(self, train: RewardInputs, heldout: RewardInputs | None = None) -> None:
        pass

    def state(self) -> dict | None:
        return None

    def load_state(self, state: dict | None) -> None:
        pass

    def tensors(self) -> dict:
        return {}

    def load_tensors(self, tensors: dict) -> None:
        pass

    def unscorable(self, frame) -> "np.ndarray | None":
        """Rows of a data table (polars) whose own reply this component cannot score (a missing score);
        None: every row. annotate drops them and counts them per split."""
        return None

    def agreement(self, rows: RewardInputs) -> dict | None:
        """On the data's own replies: how well the component's score of new text agrees with the
        data's (a learned stand-in against its score column); None: nothing to compare."""
        return None

    def describe(self) -> str | None:
        """What scores new text, where that is not the component itself (evaluate reports it)."""
        return None

    def score(self, rows: RewardInputs) -> np.ndarray:
        raise NotImplementedError

    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray | None, np.ndarray]:
        """(raw, score): `raw` is what `score` squashes into its range (a reward model's logit), or
        None when the score is itself raw. PRO's temperature reads the raw scores (spec section 2)."""
        return None, self.score(rows)


@dataclasses.dataclass
class RewardConfig:
    """The settings every reward type has; a type's config adds its own (and only those are valid)."""

    type: str | None = None
    """The reward type (a key of alol.rewards.REWARD_TYPES). Defaults to the entry's name."""
    weight: float = 1.0
    """Weight of this component in `reward` = sum of weight * component."""

    def check(self, where: str) -> None:
        """Refuse settings no pipeline can run with (AlolError naming `where`, the entry): called whenever params
        are read, so every stage refuses them before any work. Each type that has such a rule overrides it."""


def _reply_only(cfg: Any) -> tuple[str, ...]:
    return ("completion",)


@dataclasses.dataclass(frozen=True)
class RewardType:
    """What the pipeline knows about one reward type; each type module ends with one (REWARD_TYPE)."""

    name: str
    """The `type:` users write under `rewards.<name>`."""
    config: type[RewardConfig]
    """Its own settings (a RewardConfig subclass): a key of another type is an error for this one."""
    build: Callable[[Any, Path, str], Component]
    """(settings, the assets folder, where for errors) -> the component."""
    bounds: tuple[float, float] | None | Callable[[Any], tuple[float, float] | None]
    """Every score lies in [low, high] (the value head's range comes from these); None: unknown (the
    value head is then linear); or settings -> either, where the settings decide (a column's transform)."""
    needs: Callable[[Any], tuple[str, ...]] = _reply_only
    """settings -> the row's columns it must have (`prompt`, `completion`, `context`, `turns`, ...)."""
    optional: tuple[str, ...] = ()
    """Columns it reads when the task provides them (DialogRPT: `turns`, else the prompt); '*': any column."""
    fits: str | None = None
    """What it fits on the train split (annotate saves the fitted state, later stages load it); None: nothing."""
    assets: tuple[str, ...] = ()
    """Folders of the assets folder (data/assets) it reads: deps of every stage that scores."""
    fit_files: Callable[[Any], tuple[str, ...]] = lambda cfg: ()
    """settings -> files (relative to the folder dvc runs in) its fit reads: deps of annotate."""


# --- shared by the GPT-2 based types (dialog_rpt, toxichat) -----------------------------------

def load_tokenizer(source: str, where: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise AlolError(f"{where}.model: no tokenizer with {source!r} ({err}); save the model's tokenizer "
                        "beside its weights (e.g. microsoft/DialoGPT-medium's).") from None
    if tokenizer.eos_token_id is None:
        raise AlolError(f"{where}.model: the tokenizer of {source!r} has no EOS token.")
    return tokenizer


