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

from alol.core.errors import AlolError

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


# Every top-level key of params.yaml: a section maps onto its dataclass ("module:name", imported by
# name when a file is checked: some pull in torch; `rewards` onto the function that checks it), a
# scalar onto (its default, its valid values). Checking can fail a stage, never change its outputs.
SECTIONS = {
    "base": "alol.core.params:BaseConfig",
    "download": "alol.core.fetch:DownloadConfig",
    "clean": "alol.tasks:TASKS",  # the `task:` value's record, whose `config` is its clean dataclass
    "rewards": "alol.rewards:reward_configs",  # component name -> its type's settings (alol.rewards.REWARD_TYPES)
    "model": "alol.models.load:ModelConfig",
    "train_reference": "alol.training.reference:ReferenceConfig",
    "estimate_value": "alol.models.value:ValueConfig",
    "sample": "alol.training.pairs:SampleConfig",
    "plan": "alol.training.plans:PlanConfig",
    "finetune": "alol.algorithms.finetune:FinetuneConfig",
    "evaluate": "alol.evaluation.evaluate:EvaluateConfig",
}
SCALARS = {"task": ("dataset", "alol.tasks:TASKS"),
           "algorithm": ("a_lol", "alol.algorithms:ALGORITHMS")}


def _resolve(target: str):
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def section_class(name: str, task: str = "dataset"):
    """The dataclass of top-level section `name` (`rewards`: the function that checks it)."""
    target = _resolve(SECTIONS[name])
    return target[task].config if isinstance(target, dict) else target  # a registry: the task's record


def _unknown(where: str, what: str, key: str, valid) -> AlolError:
    import difflib

    names = {str(v).lower(): v for v in valid}  # `task: HH` is a near miss too
    close = difflib.get_close_matches(str(key).lower(), list(names), n=1)
    hint = f" Did you mean {names[close[0]]!r}?" if close else ""
    return AlolError(f"{where}: unknown {what} {key!r}.{hint} Valid: {', '.join(map(str, valid))}.")


class Params(dict):
    """Loaded params: the mapping of params.yaml's sections, as `yaml.safe_load` reads them (with the
    scalars' defaults filled in), and `path`, the file they came from (named in every error)."""

    def __init__(self, data: dict[str, Any], path: str | Path):
        super().__init__(data)
        self.path = Path(path)


def params_file(params: dict[str, Any]) -> str:
    """The file `params` was read from, for error messages; `params.yaml` for a plain dict."""
    return str(params.path) if isinstance(params, Params) else "params.yaml"


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml and check every key of it once: an unknown section, setting or value is an
    error naming the file and the key (so a typo never silently runs the defaults)."""
    path = Path(path)
    if not path.exists():
        raise AlolError(f"{path}: no such params file. Run the stage from the folder holding params.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise AlolError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise AlolError(f"{path}: the top level must be a mapping of sections.")
    for key in data:
        if key not in SECTIONS and key not in SCALARS:
            raise _unknown(str(path), "top-level section", key, [*SECTIONS, *SCALARS])
    for key, (default, valid) in SCALARS.items():
        valid = tuple(_resolve(valid) if isinstance(valid, str) else valid)
        data.setdefault(key, default)
        if data[key] not in valid:
            raise _unknown(str(path), key, data[key], valid)
    data = Params(data, path)
    for name in SECTIONS:
        if name == "rewards":
            section_class(name)(data)
        elif name in data:
            section(data, name, section_class(name, data["task"]))
    return data


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build dataclass `cls` from section `name` of loaded params (missing section: defaults)."""
    where = f"{params_file(params)}: {name}"
    return from_dict(cls, params.get(name) or {}, where)


def from_dict(cls: type[T], data: Any, where: str, default: T | None = None) -> T:
    """`cls` from a mapping of settings; the settings not given keep `default`'s values (the
    enclosing dataclass's default for a nested one), else the class defaults."""
    if not isinstance(data, dict):
        raise AlolError(f"{where}: expected a mapping of settings, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise AlolError(f"{where}: unknown setting(s) {unknown}; valid settings are {sorted(fields)}.")
    base = default if default is not None else _defaults(cls)
    kwargs = {}
    for key, value in data.items():
        nested = getattr(base, key, None) if base is not None else None
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and nested is not None:
            kwargs[key] = from_dict(hints[key], value, f"{where}.{key}", nested)
        else:
            kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise AlolError(f"{where}: {err}") from None


def _defaults(cls):
    """The all-defaults instance of `cls`, or None if some field has no default."""
    try:
        return cls()
    except TypeError:
        return None


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
