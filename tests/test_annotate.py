"""The annotate stage: output columns, the weighted sum, and bad reward settings."""

from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import run_stage

SPLITS = ("train", "validation", "test")
REWARD_MODULE = """
import math
def length(prompts, completions):
    return [len(c) / 10 for c in completions]
def short(prompts, completions):
    return [1.0]
def broken(prompts, completions):
    return [float('nan') if c == 'bad' else 1.0 for c in completions]
"""


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in SPLITS:
        pl.DataFrame({"prompt_id": [f"{name}:0", f"{name}:1"], "group_id": ["g0", "g1"], "prompt": ["p", "p"],
                      "completion": ["hello", "bad" if name == "validation" else "hi"],
                      "context": ["c", "c"]}).write_parquet(clean / f"{name}.parquet")
    (tmp_path / "user_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def annotate(root, rewards_yaml):
    (root / "params.yaml").write_text("rewards:\n" + rewards_yaml)
    return run_stage("annotate.py", root / "clean", root / "assets", root / "out", root / "stats.json",
                     "--params", root / "params.yaml", cwd=root)


def assert_failed_cleanly(proc, root, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    for fragment in fragments:
        assert fragment in message, message
    assert not (root / "out").exists() and not (root / "stats.json").exists()


def test_weighted_sum_and_stats(workdir):
    proc = annotate(workdir, "  length: {type: python, function: 'user_rewards:length', weight: 3.0}\n"
                             "  half: {type: python, function: 'user_rewards:length', weight: 0.5}\n")
    assert proc.returncode == 0, proc.stderr
    train = pl.read_parquet(workdir / "out" / "train.parquet")
    assert train.columns[-3:] == ["reward_length", "reward_half", "reward"]
    # "hello" -> 0.5, "hi" -> 0.2; reward = 3.0 * x + 0.5 * x
    assert train["reward_length"].to_list() == pytest.approx([0.5, 0.2])
    assert train["reward"].to_list() == pytest.approx([3.5 * 0.5, 3.5 * 0.2])
    stats = json.loads((workdir / "stats.json").read_text())
    assert stats["train"]["reward"]["mean"] == pytest.approx(3.5 * 0.35)
    assert json.loads((workdir / "out" / "reward_state.json").read_text()) == {}


def test_unknown_component_name(workdir):
    proc = annotate(workdir, "  fluency: {weight: 1.0}\n")
    assert_failed_cleanly(proc, workdir, "rewards.fluency: unknown reward component type 'fluency'", "Valid types")


def test_non_numeric_weight(workdir):
    proc = annotate(workdir, "  length: {type: python, function: 'user_rewards:length', weight: lots}\n")
    assert_failed_cleanly(proc, workdir, "rewards.length.weight: expected a number, got 'lots'")


def test_python_reward_wrong_number_of_values(workdir):
    proc = annotate(workdir, "  short: {type: python, function: 'user_rewards:short'}\n")
    assert_failed_cleanly(proc, workdir, "rewards.short:", "returned 1 value(s)", "for 2 rows",
                          "one float per (prompt, completion)")


def test_python_reward_nan(workdir):
    proc = annotate(workdir, "  broken: {type: python, function: 'user_rewards:broken'}\n")
    assert_failed_cleanly(proc, workdir, "rewards.broken: returned nan for row 1 (prompt_id 'validation:1')",
                          "validation.parquet")
