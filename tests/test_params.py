"""params.yaml parsing: typed sections and errors that name the key and the fix."""

import pytest

from alol.tasks.dataset import DatasetConfig, SplitConfig
from alol.core.errors import AlolError
from alol.core.params import BaseConfig, load_params, section


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return load_params(path)


def test_sections_become_typed_dataclasses(tmp_path):
    params = write(tmp_path, "clean:\n  max_history_turns: 2\n  splits: {rows: {train: 10}}\n")
    cfg = section(params, "clean", DatasetConfig)
    assert cfg.max_history_turns == 2 and isinstance(cfg.splits, SplitConfig)
    # the nested section keeps the settings not written: validation's default, the other splits' names
    assert cfg.splits.rows == {"train": 10} and cfg.splits.validation == 0.1
    assert cfg.splits.names == {"train": "train", "validation": "validation", "test": "test"}


def test_non_numeric_weight_names_the_setting(tmp_path):
    with pytest.raises(AlolError, match=r"params\.yaml: rewards\.safety\.weight: expected a number, got 'heavy'"):
        write(tmp_path, "rewards:\n  safety: {weight: heavy}\n")


def test_yaml_exponent_without_dot_gets_a_hint(tmp_path):
    with pytest.raises(AlolError, match=r"write floats like 2\.0e-4"):
        write(tmp_path, "rewards:\n  safety: {weight: 2e-4}\n")


def test_unknown_setting_lists_valid_ones(tmp_path):
    with pytest.raises(AlolError, match=r"clean: unknown setting\(s\) \['max_history_turn'\]; valid settings are "
                                        r".*'max_history_turns'"):
        write(tmp_path, "clean:\n  max_history_turn: 2\n")
    with pytest.raises(AlolError, match=r"clean\.splits: unknown setting\(s\) \['row'\]; valid settings are "
                                        r"\['column', 'names', 'redraw', 'rows', 'test', 'validation'\]"):
        write(tmp_path, "clean:\n  splits: {row: {train: 1}}\n")


def test_invalid_value_is_reported_with_the_section(tmp_path):
    with pytest.raises(AlolError, match=r"params\.yaml: clean\.splits: unknown split 'dev'; ours are \['train', "
                                        r"'validation', 'test'\]"):
        write(tmp_path, "clean:\n  splits: {rows: {dev: 1}}\n")
    with pytest.raises(AlolError, match=r"clean\.too_long: 'cut' is not one of \['truncate', 'drop'\]"):
        write(tmp_path, "clean:\n  too_long: cut\n")


# --- one source of truth: the registry of sections, and defaults written once ----------------

def test_unknown_top_level_section_is_an_error_with_a_suggestion(tmp_path):
    with pytest.raises(AlolError, match=r"params\.yaml: unknown top-level section 'finetun'\. Did you mean "
                                        r"'finetune'\? Valid: base, download, clean"):
        write(tmp_path, "finetun:\n  ppo_clip: 0.5\n")


def test_task_and_algorithm_are_checked_values(tmp_path):
    with pytest.raises(AlolError, match=r"params\.yaml: unknown task 'HH'\. Did you mean 'hh'\? Valid: dataset, hh"):
        write(tmp_path, "task: HH\n")
    with pytest.raises(AlolError, match=r"unknown algorithm 'alol'\. Did you mean 'a_lol'\?"):
        write(tmp_path, "algorithm: alol\n")
    assert write(tmp_path, "base: {seed: 1}\n")["task"] == "dataset"  # the default, filled in once


def test_unknown_setting_in_any_section_is_caught_at_load(tmp_path):
    # not only when the stage that reads `finetune:` runs
    with pytest.raises(AlolError, match=r"finetune\.train: unknown setting\(s\) \['learning_rat'\]"):
        write(tmp_path, "finetune:\n  train: {learning_rat: 1.0e-4}\n")


def test_nested_settings_keep_the_enclosing_default(tmp_path):
    """`finetune: {train: {eval_every: 5}}` changes eval_every only: the batch stays finetune's
    default (8), not TrainConfig's class default."""
    from alol.algorithms.finetune import FinetuneConfig

    cfg = section(write(tmp_path, "finetune:\n  train: {eval_every: 5}\n"), "finetune", FinetuneConfig)
    assert (cfg.train.eval_every, cfg.train.batch_size, cfg.train.learning_rate) == (5, 8, 1.0e-4)


def leaves(value, prefix=""):
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and prefix.count(".") < 3:
        for key, item in value.items():
            yield from leaves(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, value


# Defaults in a module another change owns now (merge: make them equal, then delete the entry).


DEFAULT_DATA = {  # the root's data (BYU Chit-Chat) and how it is read: (written, the dataset task's default)
    "download.chitchat": (True, False),
    "clean.columns.group": ("id", "<no such default>"),
    "clean.speakers": ("both", "assistant"),
    "clean.max_history_turns": (3, 0),
    "clean.system_prompt": ("You are a friendly person chatting casually. Reply in a sentence or two.", None),
    "clean.drop_reply_pattern": (r"(?i)\s*((https?://|www\.)\S+\s*)+", None),
    "clean.too_long": ("drop", "truncate"),
    "clean.splits.validation": (400, 0.1),
    "clean.splits.test": (400, 0.1),
    "clean.splits.rows.train": (384, 0),
    "clean.splits.rows.validation": (128, 0),
    "clean.splits.rows.test": (128, 0),
}
"""The dataset task's defaults are for any data (a file of the user's); the root pipeline's data is one
such file, and these settings are its reading of it, as `rewards` is its reward."""


def test_root_params_repeat_the_dataclass_defaults():
    """Every value written in the root params.yaml equals what an empty params file gives: the
    dataclass defaults are the embedded pipeline's settings, params.yaml only shows them; only the
    default data's own settings (DEFAULT_DATA) differ."""
    import dataclasses
    from pathlib import Path

    import yaml

    from alol.core.params import SCALARS, section_class

    root = Path(__file__).resolve().parents[1] / "params.yaml"
    written = yaml.safe_load(root.read_text())
    differ = {}
    for name, values in written.items():
        if name == "rewards":  # the task's reward is data, not a setting with a default
            continue
        if name in SCALARS:
            default = {name: SCALARS[name][0]}
            values = {name: values}
        else:
            default = {name: dataclasses.asdict(section({}, name, section_class(name)))}
            values = {name: values}
        flat = dict(leaves(default))
        for key, value in leaves(values):
            if key not in flat or flat[key] != value:
                differ[key] = (value, flat.get(key, "<no such default>"))
    assert differ == DEFAULT_DATA


def test_loaded_params_carry_their_file_as_an_attribute_not_a_key(tmp_path):
    from alol.rewards import reward_configs

    path = tmp_path / "my_params.yaml"
    path.write_text("base: {seed: 3}\nrewards: {safety: {weight: 1.0}}\n")
    p = load_params(path)
    assert p.path == path and "__file__" not in p  # no magic key among the sections
    assert p["base"] == {"seed": 3} and p["task"] == "dataset"  # still the dict it was
    p["base"] = {"seed": "x"}
    with pytest.raises(AlolError, match=r"my_params\.yaml: base\.seed: expected an integer"):
        section(p, "base", BaseConfig)
    p["rewards"] = {"safety": {"wieght": 1.0}}
    with pytest.raises(AlolError, match=r"my_params\.yaml: rewards\.safety: unknown setting"):
        reward_configs(p)
    with pytest.raises(AlolError, match=r"^params\.yaml: base\.seed"):  # a plain dict (tests): the default name
        section({"base": {"seed": "x"}}, "base", BaseConfig)
