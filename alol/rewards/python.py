"""`python`: a user's `module:function(prompts, completions, **columns) -> one float per row`.

The function gets the prompts and the replies as its first two (positional) arguments, as TRL's
reward functions do, and the rows' other columns as keyword arguments, one list per column (for a
generated reply, the columns of its prompt's row), so a score already in the data can be used:

    def brevity(prompts, completions):                  # no other column
    def agree(prompts, completions, stored_score):      # the `stored_score` column only
    def anything(prompts, completions, **columns):      # every column: context, prompt_id, ...

The rule: a function that takes **kwargs gets every column; otherwise it gets the columns named by
its parameters after the first two (so a function of (prompts, completions) is called exactly as
before). A named parameter with no default and no such column is an error naming the columns.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import numpy as np

from alol.core.errors import AlolError
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class PythonConfig(RewardConfig):
    function: str | None = None
    """'module:function' (importable from the folder you run dvc in) taking (prompts, completions,
    **columns) and returning one float per row; module docstring of alol/rewards/python.py."""


def column_parameters(fn) -> tuple[bool, dict[str, bool]]:
    """(takes **kwargs, {name: required} of the keyword parameters after the first two)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C function without a signature: prompts, completions only
        return False, {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return True, {}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = [p for p in params if p.kind is p.KEYWORD_ONLY or
             (p.kind is p.POSITIONAL_OR_KEYWORD and p not in positional[:2])]
    return False, {p.name: p.default is p.empty for p in named}


class PythonFunction(Component):
    """A user's `module:function(prompts, completions, **columns) -> sequence of floats` (one per row)."""

    def __init__(self, function: str | None, where: str):
        if not function or ":" not in function:
            raise AlolError(f"{where}.function: give 'module:function' (the module importable from the "
                            f"folder you run dvc in), got {function!r}.")
        module_name, attr = function.split(":", 1)
        try:
            self.fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise AlolError(f"{where}.function: cannot import {function!r}: {err}") from None
        self.name, self.where = function, where
        self.every_column, self.parameters = column_parameters(self.fn)

    def columns(self, rows: RewardInputs) -> dict[str, list]:
        """The keyword arguments of one call: the rows' columns the function asks for."""
        names = list(rows.columns) if self.every_column else [n for n in self.parameters if n in rows.columns]
        missing = [n for n, required in self.parameters.items() if required and n not in rows.columns]
        if missing:
            raise AlolError(f"{self.where}: {self.name} takes {missing} but these rows have no such column; "
                            f"their columns: {sorted(rows.columns)}.")
        return {name: list(rows.columns[name]) for name in names}

    def score(self, rows: RewardInputs) -> np.ndarray:
        values = self.fn(list(rows.prompts), list(rows.completions), **self.columns(rows))
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise AlolError(f"{self.where}: {self.name} must return numbers, got {str(values)[:80]}") from None
        if values.shape != (len(rows),):
            raise AlolError(f"{self.where}: {self.name} returned {values.size} value(s) of shape {values.shape} "
                            f"for {len(rows)} rows; it must return one float per (prompt, completion).")
        return values


REWARD_TYPE = RewardType(
    name="python", config=PythonConfig, bounds=None,  # a user's function: no known range
    needs=lambda cfg: ("prompt", "completion"), optional=("*",),  # every other column, as keyword arguments
    build=lambda cfg, assets, where: PythonFunction(cfg.function, where))
