"""Value head, fit-quality metrics, sampling plans, preference pairs, stop strings."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from alol.training.plans import PlanConfig, make_plans, select_plan, step_scales
from alol.core.errors import AlolError
from alol.models.generate import cut_at_stop
from alol.training.pairs import order_pairs
from alol.training.plans import priority_plan, uniform_plan
from alol.models.value import ValueConfig, ValueHead, fit_quality, fit_value_head, predict


def test_fit_quality_by_hand():
    q = fit_quality(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    # mse = (0 + 0 + 1) / 3; var(target) = ((4/3)^2 + (1/3)^2 + (5/3)^2) / 3 = 42/27
    assert q["heldout_mse"] == pytest.approx(1 / 3)
    assert q["heldout_r2"] == pytest.approx(1 - (1 / 3) / (42 / 27))  # 0.785714
    # centred: [-1, 0, 1] and [-4/3, -1/3, 5/3]; r = 3 / (sqrt(2) * sqrt(42/9))
    assert q["heldout_pearson_r"] == pytest.approx(3 / (math.sqrt(2) * math.sqrt(42 / 9)))  # 0.981981


def test_padding_does_not_change_the_value():
    torch.manual_seed(0)
    head = ValueHead(16, 0.0, 4.0, heads=4).eval()
    states = torch.randn(5, 16)
    alone = predict(head, [states])
    with_longer_neighbour = predict(head, [states, torch.randn(11, 16)])
    assert alone[0] == pytest.approx(with_longer_neighbour[0], abs=1e-6)
    assert 0.0 <= alone[0] <= 4.0


def test_value_head_learns_a_signal_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    states = [torch.tensor(rng.normal(size=(rng.integers(3, 9), 16)), dtype=torch.float32) for _ in range(200)]
    targets = np.array([1.0 + 2.0 / (1 + np.exp(-2 * s[:, 0].mean().item())) for s in states])
    groups = [f"g{i // 2}" for i in range(200)]  # 100 conversations of 2 rows: 20 held out, 10 + 10
    head, quality, curve = fit_value_head(states, targets, groups, ValueConfig(learning_rate=3e-3, epochs=40, heads=4,
                                                                               dropout=0.0), 0.0, 4.0, seed=0)
    assert quality["heldout_r2"] > 0.8 and (quality["select_rows"], quality["heldout_rows"]) == (20, 20)
    assert curve[0]["select_mse"] > quality["select_mse"]
    head.save(tmp_path / "v", {"note": "test"})
    again, config = ValueHead.load(tmp_path / "v")
    np.testing.assert_allclose(predict(again, states[:5]), predict(head, states[:5]), atol=1e-6)
    assert config["note"] == "test" and config["low"] == 0.0 and config["high"] == 4.0


def test_value_rows_split_by_conversation_three_ways():
    """8 rows of 5 conversations; heldout_fraction 0.4 -> round(0.4 x 5) = 2 held-out conversations:
    1 selects the epoch, 1 reports, 3 fit. No conversation is on two sides."""
    from alol.models.value import group_split

    groups = ["a", "a", "b", "b", "c", "d", "d", "e"]
    fit, select, report = group_split(groups, 0.4, seed=0)
    assert sorted(np.concatenate([fit, select, report]).tolist()) == list(range(8))
    sides = [{groups[i] for i in part} for part in (fit, select, report)]
    assert [len(s) for s in sides] == [3, 1, 1]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert group_split(groups, 0.4, seed=0)[2].tolist() == report.tolist()  # seeded
    with pytest.raises(AlolError, match="at least 3"):
        group_split(["a", "b"], 0.5, seed=0)


def test_uniform_plan_is_shuffled_epochs():
    plan = uniform_plan(6, steps=3, batch_size=4, seed=0)  # 12 draws = 2 epochs of 6 rows
    assert plan.shape == (3, 4)
    flat = plan.reshape(-1)
    assert sorted(flat[:6]) == list(range(6)) and sorted(flat[6:]) == list(range(6))
    assert np.array_equal(plan, uniform_plan(6, 3, 4, seed=0))


def test_priority_plan_follows_the_weights():
    plan = priority_plan(np.array([0.0, 1.0, 3.0, -2.0]), steps=2000, batch_size=10, seed=0)
    counts = np.bincount(plan.reshape(-1), minlength=4) / plan.size
    assert counts[0] == 0 and counts[3] == 0  # zero and negative weights are never drawn
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.05)


def test_make_plans_scales_steps_by_positive_fraction():
    frame = pl.DataFrame({"advantage": [1.0, -0.5, 2.0, -1.0], "reward": [1.0, 0.5, 2.0, 0.0]})
    plans, stats = make_plans(frame, PlanConfig(steps=10), batch_size=2, seed=0, pairs=3)
    assert stats["positive_fraction"] == 0.5
    # rft: rewards >= their median 0.75 (1.0 and 2.0) are kept: 10 x 2 / 4 = 5 steps
    assert stats["steps"] == {"uniform": 10, "good_priority": 5, "all_priority": 5, "pairs": 10, "reward_priority": 10,
                              "reward_filtered": 5}
    good = select_plan(plans, "good_priority")
    assert good.shape == (5, 2) and set(good.reshape(-1)) <= {0, 2}
    assert set(select_plan(plans, "pairs").reshape(-1)) == {0, 1, 2}


def test_all_priority_takes_steps_times_the_summed_positive_fractions():
    """HH-like: 4 prompts x 2 candidates. Preferred (candidate 0) advantages [+, +, +, -] -> p_good
    = 3/4; candidate 1 [+, -, -, -] -> p_bad = 1/4. The all_priority pool is every positive
    candidate, 4 rows = (3/4 + 1/4) x 4 prompts, so 20 x (0.75 + 0.25) = 20 steps (not their mean:
    20 x 0.5 = 10); good_priority 20 x 0.75 = 15."""
    frame = pl.DataFrame({"candidate": [0, 0, 0, 0, 1, 1, 1, 1],
                          "advantage": [0.5, 0.2, 0.1, -0.3, 0.4, -0.1, -0.2, -0.6],
                          "reward": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]})
    assert step_scales(frame) == {"good_priority": 0.75, "all_priority": 1.0}
    plans, stats = make_plans(frame, PlanConfig(steps=20), batch_size=2, seed=0)
    assert stats["positive_fraction"] == 0.75
    assert stats["steps"]["good_priority"] == 15 and stats["steps"]["all_priority"] == 20
    assert set(select_plan(plans, "all_priority").reshape(-1)) == {0, 1, 2, 4}  # every positive candidate


def test_validation_interval_scales_like_the_steps():
    """The authors' HH A-LoL run: 9000 x p steps, validation every 900 x p (~10 validations).
    p = 0.64: 900 x 0.64 = 576; uniform (scale 1): 900; off stays off; never below 1 step."""
    from alol.algorithms.run import validation_interval

    assert validation_interval(900, 0.64) == 576
    assert validation_interval(900, 1.0) == 900
    assert validation_interval(0, 0.64) == 0
    assert validation_interval(3, 0.1) == 1


def test_hh_grad_clip_and_weight_decay_are_the_authors_under_a_mean_loss():
    """The authors (spec section 5): micro-batch 4 x accumulation 4, clip 0.3 on the norm of the SUM
    of the 4 micro-batch mean gradients (never divided by the accumulation) = 4 x our mean-over-
    batch gradient, so the same clip here is 0.3 / 4 = 0.075; paged AdamW's weight decay 0.01."""
    from pathlib import Path

    import yaml

    authors_clip, authors_accumulation, authors_micro_batch, authors_weight_decay = 0.3, 4, 4, 0.01
    hh = yaml.safe_load((Path(__file__).resolve().parents[1] / "pipelines" / "hh" / "params.yaml").read_text())
    train = hh["finetune"]["train"]
    assert train["micro_batch_size"] == authors_micro_batch
    assert train["batch_size"] == authors_micro_batch * authors_accumulation
    assert train["max_grad_norm"] == pytest.approx(authors_clip / authors_accumulation)  # 0.075
    assert train["weight_decay"] == authors_weight_decay


def test_no_positive_advantage_is_a_clear_error():
    frame = pl.DataFrame({"advantage": [-1.0, -0.5], "reward": [1.0, 0.5]})
    plans, _ = make_plans(frame, PlanConfig(steps=4), batch_size=2, seed=0)
    with pytest.raises(AlolError, match="no row has a positive advantage: check the value fit"):
        select_plan(plans, "good_priority")


def test_pairs_are_ordered_by_reward():
    frame = pl.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["p"] * 3, "completion": ["d1", "d2", "same"],
                          "reward": [2.0, 1.0, 1.0]})
    pairs = order_pairs(frame, ["g1", "g2", "same"], np.array([1.0, 3.0, 0.0]), [-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0])
    assert pairs["chosen"].to_list() == ["d1", "g2"]  # identical replies ("same") are no preference
    assert pairs["rejected"].to_list() == ["g1", "d2"]
    assert pairs["ref_chosen_logp"].to_list() == [-1.0, -5.0] and pairs["chosen_reward"].to_list() == [2.0, 3.0]


def test_cut_at_stop():
    assert cut_at_stop(" I am fine ### Human: hi", ["###"]) == "I am fine"
    assert cut_at_stop("no stop here ", ["###", "\nHuman:"]) == "no stop here"
