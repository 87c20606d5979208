"""Value head, fit-quality metrics, sampling plans, preference pairs, stop strings."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from alol.advantages import PlanConfig, make_plans, select_plan
from alol.errors import AlolError
from alol.generate import cut_at_stop
from alol.pairs import order_pairs
from alol.plan import priority_plan, uniform_plan
from alol.value import ValueConfig, ValueHead, fit_quality, fit_value_head, predict


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
    head, quality, curve = fit_value_head(states, targets, ValueConfig(learning_rate=3e-3, epochs=40, heads=4,
                                                                       dropout=0.0), 0.0, 4.0, seed=0)
    assert quality["heldout_r2"] > 0.8 and quality["heldout_rows"] == 40
    assert curve[0]["heldout_mse"] > quality["heldout_mse"]
    head.save(tmp_path / "v", {"note": "test"})
    again, config = ValueHead.load(tmp_path / "v")
    np.testing.assert_allclose(predict(again, states[:5]), predict(head, states[:5]), atol=1e-6)
    assert config["note"] == "test" and config["low"] == 0.0 and config["high"] == 4.0


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
    assert stats["steps"] == {"uniform": 10, "good_priority": 5, "all_priority": 5, "pairs": 10, "reward_priority": 10}
    good = select_plan(plans, "good_priority")
    assert good.shape == (5, 2) and set(good.reshape(-1)) <= {0, 2}
    assert set(select_plan(plans, "pairs").reshape(-1)) == {0, 1, 2}


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
