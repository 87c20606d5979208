"""evaluate.rewards: evaluation scored by a reward of its own, the training reward reported beside it, on a
tiny random Llama with two python rewards whose scores are worked out here from the replies."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import build_tiny_llama

from alol.core.params import BaseConfig
from alol.evaluation.evaluate import EvaluateConfig, evaluate_policy, headline
from alol.evaluation.metrics import is_reward_column
from alol.pipeline import stage_entry, STAGES
from alol.rewards.annotate import (EVALUATION_FILES, STATE_FILE, annotate_splits, fit_evaluation_reward,
                                   load_reward)
from alol.tasks import TASKS


def letters(prompts, completions):
    """The training reward: reply length in characters."""
    return [float(len(c)) for c in completions]


def spaces(prompts, completions):
    """The evaluation reward: spaces in the reply (another function of the same text)."""
    return [float(c.count(" ")) for c in completions]


PARAMS = {"task": "dataset",
          "rewards": {"letters": {"type": "python", "function": "test_evaluation_reward:letters"}},
          "evaluate": {"rewards": {"spaces": {"type": "python", "function": "test_evaluation_reward:spaces"}}}}


def table(n: int, seed: int) -> pl.DataFrame:
    replies = [" ".join(["hello"] * (i % 4 + 1)) for i in range(n)]
    return pl.DataFrame({"prompt_id": [f"{seed}-{i}" for i in range(n)], "group_id": [f"{seed}-{i}" for i in range(n)],
                         "prompt": [f"User: hi {i}\nAssistant:" for i in range(n)], "context": [f"hi {i}" for i in range(n)],
                         "completion": replies})


@pytest.fixture()
def annotated(tmp_path):
    """What the annotate stage writes: the tables scored by the training reward, both fitted states."""
    splits = {"train": table(8, 0), "validation": table(4, 1), "test": table(6, 2)}
    reward = load_reward(PARAMS, tmp_path)
    tables, _, files = annotate_splits(splits, reward, {k: f"{k}.parquet" for k in splits}, TASKS["dataset"])
    evaluation_files, _ = fit_evaluation_reward(PARAMS, tmp_path, splits)
    for name, content in {**files, **evaluation_files}.items():
        (tmp_path / name).write_text(json.dumps(content))
    return tmp_path, tables["test"]


def test_evaluation_scores_with_its_own_reward_and_the_training_one_beside_it(tmp_path, annotated, tiny_tokenizer):
    folder, test = annotated
    assert sorted(p.name for p in folder.glob("*.json")) == sorted([STATE_FILE, EVALUATION_FILES[0]])
    assert test["reward"].to_list() == [float(len(c)) for c in test["completion"]]  # annotate: training reward
    build_tiny_llama(tmp_path / "policy", tiny_tokenizer)
    cfg = EvaluateConfig(kl_samples=0, bootstrap_resamples=200, rewards=PARAMS["evaluate"]["rewards"])
    cfg.generation.max_new_tokens = 6
    generations, metrics = evaluate_policy(PARAMS, BaseConfig(), cfg, tmp_path / "policy", test, folder, folder)
    replies = generations["completion"].to_list()
    assert generations["reward"].to_list() == [float(r.count(" ")) for r in replies]  # scored by evaluate.rewards
    assert generations["reward_spaces"].to_list() == generations["reward"].to_list()
    assert generations["train_reward"].to_list() == [float(len(r)) for r in replies]  # and by the training reward
    assert generations["train_reward_letters"].to_list() == generations["train_reward"].to_list()
    assert "spaces" in metrics["scored_by"] and "letters" in metrics["trained_on"]
    gold = test["completion"].to_list()
    assert metrics["gold"]["reward"] == pytest.approx(np.mean([g.count(" ") for g in gold]))  # rescored here
    assert metrics["gold"]["train_reward"] == pytest.approx(np.mean([len(g) for g in gold]))
    # the paired comparison covers both rewards: a baseline answering with the gold replies
    baseline = test.select("prompt_id", "completion", **{"reward": pl.Series([float(g.count(" ")) for g in gold]),
                                                         "train_reward": pl.Series([float(len(g)) for g in gold])})
    _, metrics = evaluate_policy(PARAMS, BaseConfig(), cfg, tmp_path / "policy", test, folder, folder, baseline=baseline)
    for column, score in (("reward", lambda r: r.count(" ")), ("train_reward", len)):
        assert metrics["vs_baseline"][column]["gain"] == pytest.approx(
            np.mean([score(r) - score(g) for r, g in zip(replies, gold)]))
    assert headline(metrics)["train_reward"] == pytest.approx(np.mean([len(r) for r in replies]))


def test_without_evaluate_rewards_the_training_reward_scores_evaluation(tmp_path, annotated, tiny_tokenizer):
    folder, test = annotated
    params = {**PARAMS, "evaluate": {"rewards": None}}
    build_tiny_llama(tmp_path / "policy", tiny_tokenizer)
    cfg = EvaluateConfig(kl_samples=0, bootstrap_resamples=200)
    cfg.generation.max_new_tokens = 6
    generations, metrics = evaluate_policy(params, BaseConfig(), cfg, tmp_path / "policy", test, folder, folder)
    assert generations["reward"].to_list() == [float(len(r)) for r in generations["completion"]]
    assert not any(c.startswith("train_") for c in generations.columns) and "trained_on" not in metrics


def test_reward_columns_include_the_training_rewards():
    assert [c for c in ("reward", "reward_x", "train_reward", "train_reward_x", "rewarded", "train_loss", "prompt")
            if is_reward_column(c)] == ["reward", "reward_x", "train_reward", "train_reward_x"]


def test_the_evaluations_depend_on_the_evaluation_reward_state_only_where_it_is_set():
    stages = {s.name: s for s in STAGES}
    for params, expected in ((PARAMS, True), ({**PARAMS, "evaluate": {}}, False)):
        for name in ("evaluate", "evaluate_reference"):
            deps = stage_entry(stages[name], params)["deps"]
            assert (f"data/annotated/{EVALUATION_FILES[0]}" in deps) is expected, name
        assert f"data/annotated/{EVALUATION_FILES[0]}" not in stage_entry(stages["annotate"], params)["deps"]
        assert "evaluate.rewards" in stage_entry(stages["annotate"], params)["params"]
