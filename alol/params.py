"""params.yaml -> typed config dataclasses, with errors that name the file and the key.

Each stage reads its own section (`clean:`, `annotate:`, ...) plus `base:`, as in DVC's
example-get-started. Sections map onto dataclasses defined next to the code they configure;
every field carries a docstring, so the dataclass is the reference for its params.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from alol.errors import AlolError

T = TypeVar("T")


@dataclasses.dataclass
class BaseConfig:
    """`base:` settings shared by every stage."""

    seed: int = 901
    """Seed for every random choice: splits, sampling plans, initialisation, dropout."""
    max_prompt_tokens: int = 256
    """Prompts are left-truncated to this many policy tokens wherever a model reads them."""
    max_completion_tokens: int = 48
    """Completions (EOS included) are right-truncated to this many tokens when trained on."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise AlolError(f"{path}: no such params file. Run the stage from the folder holding params.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise AlolError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise AlolError(f"{path}: the top level must be a mapping of sections.")
    data["__file__"] = str(path)
    return data


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build dataclass `cls` from section `name` of loaded params (missing section: defaults)."""
    where = f"{params.get('__file__', 'params.yaml')}: {name}"
    return from_dict(cls, params.get(name) or {}, where)


def from_dict(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise AlolError(f"{where}: expected a mapping of settings, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise AlolError(f"{where}: unknown setting(s) {unknown}; valid settings are {sorted(fields)}.")
    kwargs = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise AlolError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except AlolError as err:
                errors.append(str(err))
        raise AlolError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}.")
    if origin is Literal:
        if value not in args:
            raise AlolError(f"{where}: {value!r} is not one of {list(args)}.")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise AlolError(f"{where}: expected a mapping, got {value!r}.")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise AlolError(f"{where}: expected a list, got {value!r}.")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        # bool is an int subclass: `weight: true` is almost certainly a mistake.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (write floats like 2.0e-4: PyYAML reads 2e-4 as a string)" if isinstance(value, str) else ""
            raise AlolError(f"{where}: expected a number, got {value!r}{hint}.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AlolError(f"{where}: expected an integer, got {value!r}.")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise AlolError(f"{where}: expected true or false, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise AlolError(f"{where}: expected a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")  # a bug in a dataclass, not user input
