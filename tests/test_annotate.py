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


# --- the HH reward model: raw logits for PRO, stored logits for train only -------------------

def hh_frame(logits):
    return pl.DataFrame({"prompt_id": ["t:0"], "prompt": ["p"], "completion": ["good"], "context": ["c"],
                         "turns": [["<|prompter|>hi", "<|assistant|>"]], "candidates": [["good", "bad"]],
                         "candidate_logits": [logits]})


def test_pro_temperature_is_the_reward_model_logit_difference(tiny_tokenizer):
    """Stored train logits [2.0, -1.0]: rewards sigmoid = [0.8808, 0.2689], but PRO's temperature
    is the raw difference T = 2 - (-1) = 3.0 (spec), not 0.8808 - 0.2689 = 0.6119 (~5x weaker)."""
    import math

    import numpy as np
    import torch

    from alol.algorithms import ALGORITHMS, preference
    from alol.rewards.annotate import annotate_splits
    from alol.training.pairs import order_pairs
    from alol.tasks import TASKS
    from alol.rewards import RewardFunction, reward_config

    reward = RewardFunction({"oasst": reward_config("oasst", {"type": "reward_model", "model": "never-loaded"})}, ".")
    tables, _, _ = annotate_splits({"train": hh_frame([2.0, -1.0])}, reward, {"train": "train.parquet"}, TASKS["hh"])
    train = tables["train"]
    assert train["candidate_rewards"].to_list()[0] == pytest.approx([0.880797, 0.268941], abs=1e-6)
    assert train["candidate_raw_rewards"].to_list() == [[2.0, -1.0]]
    assert train["raw_reward"].to_list() == [2.0]
    pairs = order_pairs(train, ["bad"], np.array([0.268941]), [-3.0], [-4.0], np.array([-1.0]))
    _, extras = preference.encode_rows(pairs, tiny_tokenizer, ALGORITHMS["pro"], 16, 8)
    assert extras["chosen_raw_reward"][0] - extras["rejected_raw_reward"][0] == pytest.approx(3.0)
    # the ranking term with s = [-1, -2]: log(e^(-1 T) + e^(-2 T)) + T = log(1 + e^-T)
    scores = torch.tensor([[-1.0, -2.0]])
    rewards = torch.tensor([[extras["chosen_raw_reward"][0], extras["rejected_raw_reward"][0]]])
    ranking = preference.pro(scores, rewards, torch.zeros(1), sft_weight=0.0).item()
    assert ranking == pytest.approx(math.log(1 + math.exp(-3.0)))  # 0.04859 (sigmoids: log(1 + e^-0.6119) = 0.4358)


def test_without_a_reward_model_the_raw_reward_is_the_reward(workdir):
    """Chit-chat: no component squashes a logit, so PRO's temperature is the task reward's difference."""
    import numpy as np

    from alol.training.pairs import order_pairs

    frame = pl.DataFrame({"prompt_id": ["a"], "prompt": ["p"], "completion": ["d"], "reward": [0.75]})
    pairs = order_pairs(frame, ["g"], np.array([0.25]), [-1.0], [-2.0])
    assert pairs["chosen_raw_reward"].to_list() == [0.75] and pairs["rejected_raw_reward"].to_list() == [0.25]


def test_stored_logits_score_the_train_split_only(monkeypatch):
    """PRO's stored logits are the 1.4B train RM's: test (gold) replies must be scored by the test
    model like the policies' replies, validation by a fresh pass of the train model."""
    import math

    from alol.rewards.components import RewardInputs
    from alol.rewards.reward_model import DialogueRewardModel

    class Fake:
        eos = "</s>"

        def __init__(self, logit):
            self.logit = logit

        def score(self, texts, batch_size):
            return [self.logit] * len(texts)

    component = DialogueRewardModel("rm-1.4b", "rm-6.9b", 1024, True, "rewards.oasst")
    monkeypatch.setattr(component, "_model", lambda split: Fake(1.0 if split == "test" else 0.0))
    for split, logit in (("train", 3.0), ("validation", 0.0), ("test", 1.0)):
        rows = RewardInputs(["p"], ["r"], ["c"], turns=[["<|prompter|>hi", "<|assistant|>"]], stored_logits=[3.0],
                            split=split)
        assert component.score(rows)[0] == pytest.approx(1 / (1 + math.exp(-logit))), split


def test_a_failure_after_the_first_write_leaves_no_output(tmp_path):
    """write_all stages every output first: the table written before the failing JSON must not appear."""
    from alol.core.io import write_all

    table = pl.DataFrame({"a": [1, 2]})
    with pytest.raises(TypeError):
        write_all({tmp_path / "out" / "train.parquet": table, tmp_path / "stats.json": {"not json": object()}})
    assert list(tmp_path.rglob("*")) == [tmp_path / "out"]  # the folder only: no table, no temporary
    write_all({tmp_path / "out" / "train.parquet": table, tmp_path / "stats.json": {"rows": 2}})
    assert pl.read_parquet(tmp_path / "out" / "train.parquet").equals(table)
    assert json.loads((tmp_path / "stats.json").read_text()) == {"rows": 2}
