"""Smoke test: the real default pipeline (real assets from PyPI) at tiny size, through `dvc repro`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import run_stage

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
    assert stats["read"] == {"train": 7168}  # the BYU Chit-Chat conversations, one file
    assert stats["replies"] == 131569  # every turn after a conversation's first: a (context -> next turn) pair
    assert stats["rows"] == {"train": 48, "validation": 16, "test": 16}
    rewards = json.loads((tiny_pipeline / "results" / "annotate" / "reward_stats.json").read_text())
    assert set(rewards) == {"train", "validation", "test"}
    assert 0 <= rewards["train"]["reward_safety"]["mean"] <= 1


def test_evaluation_outputs(tiny_pipeline):
    results = tiny_pipeline / "results"
    details = json.loads((results / "evaluate" / "details.json").read_text())
    assert details["rows"] == 16
    for part in ("generations", "gold"):
        for key in ("reward", "reward_safety", "reward_positivity", "reward_relevance", "reward_diversity",
                    "distinct_1", "distinct_2", "distinct_3", "length_words", "length_tokens"):
            assert np.isfinite(details[part][key]), (part, key)
    assert np.isfinite(details["generations"]["kl"]) and details["generations"]["kl_stderr"] > 0
    reference = json.loads((results / "evaluate_reference" / "details.json").read_text())
    assert "vs_baseline" not in reference and "kl" not in reference["generations"]
    assert reference["gold"] == details["gold"]
    generations = pl.read_parquet(results / "evaluate" / "generations.parquet")
    assert generations.height == 16 and {"prompt_id", "prompt", "completion", "reward", "logp"} <= set(
        generations.columns)
    # the means of the tables are the metrics: nothing is computed twice in two ways
    assert generations["reward"].mean() == pytest.approx(details["generations"]["reward"])
    paired = generations.join(pl.read_parquet(results / "evaluate_reference" / "generations.parquet"), on="prompt_id")
    gain = details["vs_baseline"]["reward"]
    assert gain["gain"] == pytest.approx((paired["reward"] - paired["reward_right"]).mean())
    assert gain["win_rate"] == pytest.approx(((paired["reward"] > paired["reward_right"]).mean()
                                              + 0.5 * (paired["reward"] == paired["reward_right"]).mean()))
    headline = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert headline == {"reward": details["generations"]["reward"], "gain": gain["gain"], "gain_ci_low": gain["ci_low"],
                        "gain_ci_high": gain["ci_high"], "win_rate": gain["win_rate"],
                        "kl": details["generations"]["kl"], "distinct_2": details["generations"]["distinct_2"],
                        "length_words": details["generations"]["length_words"]}
    png = results / "evaluate" / "reward_distribution.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dvc_shows_metrics_and_plots(tiny_pipeline):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=tiny_pipeline,
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    files = next(iter(json.loads(shown.stdout).values()))["data"]  # the workspace's entry
    # DVC collects every dvc.yaml: the task pipelines' metrics are listed too, as missing until they run
    columns = {f"{name}:{key}" for name, entry in files.items() if not name.startswith("pipelines/")
               for key in entry["data"]}
    assert columns == {"results/evaluate/metrics.json:" + k for k in ("reward", "gain", "gain_ci_low", "gain_ci_high",
                                                                      "win_rate", "kl", "distinct_2", "length_words")
                       } | {"results/estimate_value/metrics.json:heldout_r2", "results/advantages/metrics.json:positive_fraction"}
    # `dvc.yaml` names this pipeline's plots: a bare `dvc plots show` also collects pipelines/hh's, unrun here
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "dvc.yaml", "-o", "plots_html"],
                           cwd=tiny_pipeline, capture_output=True, text=True, env=env)
    assert plots.returncode == 0, plots.stderr
    assert (tiny_pipeline / "plots_html" / "index.html").exists()
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "dvc.yaml", "--json"], cwd=tiny_pipeline,
                           capture_output=True, text=True, env=env)
    # every plot loads but the comparison's, which `python -m alol.compare` writes (not a stage; not run here)
    errors = [e for e in json.loads(shown.stdout).get("errors", []) if not e["source"].startswith("results/compare/")]
    assert errors == [], errors


def test_second_repro_is_a_no_op(tiny_pipeline):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tiny_pipeline, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Running stage" not in proc.stdout
    assert "up to date" in proc.stdout


def test_experiment_with_another_algorithm_reruns_only_finetune_onwards(tiny_pipeline):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "algorithm=nll"], cwd=tiny_pipeline,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = sorted(line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage"))
    assert ran == ["evaluate", "finetune"], proc.stdout
    summary = json.loads((tiny_pipeline / "results" / "finetune" / "summary.json").read_text())
    assert summary["algorithm"] == "nll"


def test_value_from_several_sampled_replies_per_prompt(tiny_pipeline, tmp_path):
    """estimate_value.replies_per_prompt: 3 sampled replies to each validation prompt, their mean reward
    the head's target; greedy replies cannot be repeated (they would all be the same)."""
    params = yaml.safe_load((tiny_pipeline / "params.yaml").read_text())
    params["estimate_value"].update(replies_per_prompt=3, generation={"max_new_tokens": 6, "do_sample": True})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    root = tiny_pipeline
    proc = run_stage("estimate_value.py", root / "data/annotated", root / "data/assets", root / "models/reference",
                     tmp_path / "value", tmp_path / "results", "--params", tmp_path / "params.yaml")
    assert proc.returncode == 0, proc.stderr
    generations = pl.read_parquet(tmp_path / "results" / "generations.parquet")
    validation = pl.read_parquet(root / "data/annotated/validation.parquet")
    assert generations.height == 3 * validation.height
    assert sorted(generations["reply"].unique().to_list()) == [0, 1, 2]
    assert generations.group_by("prompt_id").len()["len"].to_list() == [3] * validation.height
    details = json.loads((tmp_path / "results" / "details.json").read_text())
    assert details["mean_generated_reward"] == pytest.approx(generations["reward"].mean())

    params["estimate_value"]["generation"]["do_sample"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage("estimate_value.py", root / "data/annotated", root / "data/assets", root / "models/reference",
                     tmp_path / "value2", tmp_path / "results2", "--params", tmp_path / "params.yaml")
    assert proc.returncode == 1 and "set generation.do_sample: true" in proc.stderr
