"""params.yaml parsing: typed sections and errors that name the key and the fix."""

import pytest

from alol.data.chitchat import CleanConfig
from alol.errors import AlolError
from alol.params import load_params, section
from alol.rewards import reward_configs


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return load_params(path)


def test_sections_become_typed_dataclasses(tmp_path):
    params = write(tmp_path, "clean:\n  context_turns: 2\n  max_rows: {train: 10}\n")
    cfg = section(params, "clean", CleanConfig)
    assert cfg.context_turns == 2 and cfg.max_rows == {"train": 10} and cfg.max_prompt_tokens == 256


def test_non_numeric_weight_names_the_setting(tmp_path):
    params = write(tmp_path, "rewards:\n  safety: {weight: heavy}\n")
    with pytest.raises(AlolError, match=r"params\.yaml: rewards\.safety\.weight: expected a number, got 'heavy'"):
        reward_configs(params)


def test_yaml_exponent_without_dot_gets_a_hint(tmp_path):
    params = write(tmp_path, "rewards:\n  safety: {weight: 2e-4}\n")
    with pytest.raises(AlolError, match=r"write floats like 2\.0e-4"):
        reward_configs(params)


def test_unknown_setting_lists_valid_ones(tmp_path):
    params = write(tmp_path, "clean:\n  context_turn: 2\n")
    with pytest.raises(AlolError, match=r"clean: unknown setting\(s\) \['context_turn'\]; valid settings are .*context_turns"):
        section(params, "clean", CleanConfig)


def test_invalid_value_is_reported_with_the_section(tmp_path):
    params = write(tmp_path, "clean:\n  context_turns: 0\n")
    with pytest.raises(AlolError, match=r"clean: context_turns must be at least 1"):
        section(params, "clean", CleanConfig)
