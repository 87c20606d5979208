"""Smoke test: the real default pipeline (real assets from PyPI) at tiny size, through `dvc repro`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.assets


def test_annotated_tables_are_complete_and_consistent(tiny_pipeline):
    rewards = yaml.safe_load((tiny_pipeline / "params.yaml").read_text())["rewards"]
    for split in ("train", "validation", "test"):
        frame = pl.read_parquet(tiny_pipeline / "data" / "annotated" / f"{split}.parquet")
        assert frame.height > 0
        assert frame.null_count().sum_horizontal().item() == 0
        for column in ("prompt_id", "group_id", "prompt", "completion", "messages", "context"):
            assert column in frame.columns
        expected = sum(cfg["weight"] * frame[f"reward_{name}"] for name, cfg in rewards.items())
        assert (frame["reward"] - expected).abs().max() < 1e-12
        for name in rewards:
            values = frame[f"reward_{name}"]
            assert values.min() >= 0.0 and values.max() <= 1.0, name
        # the prompt is exactly what the policy sees: the chat template, ending at the assistant turn
        assert all(p.endswith("<|im_start|>assistant\n") for p in frame["prompt"])


def test_no_conversation_in_two_splits(tiny_pipeline):
    groups = {split: set(pl.read_parquet(tiny_pipeline / "data" / "clean" / f"{split}.parquet")["group_id"])
              for split in ("train", "validation", "test")}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]


def test_metrics_written(tiny_pipeline):
    stats = json.loads((tiny_pipeline / "results" / "clean" / "stats.json").read_text())
    assert stats["pairs"] == 131569  # every (context -> next turn) pair in the BYU Chit-Chat data
    assert stats["rows"] == {"train": 48, "validation": 16, "test": 16}
    rewards = json.loads((tiny_pipeline / "results" / "annotate" / "reward_stats.json").read_text())
    assert set(rewards) == {"train", "validation", "test"}
    assert 0 <= rewards["train"]["reward_safety"]["mean"] <= 1


def test_second_repro_is_a_no_op(tiny_pipeline):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tiny_pipeline, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Running stage" not in proc.stdout
    assert "up to date" in proc.stdout
