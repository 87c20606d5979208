"""Seed-and-prompt bootstrap and Holm correction, against numbers worked out by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from alol.evaluation.stats import holm, seed_prompt_bootstrap


def test_holm_step_down_is_monotone():
    # m = 3, sorted ascending: x .01, z .03, y .04
    #   x: 3 * .01 = .03
    #   z: 2 * .03 = .06
    #   y: 1 * .04 = .04 -> running max with .06 -> .06
    out = holm({"x": 0.01, "y": 0.04, "z": 0.03})
    assert list(out) == ["x", "y", "z"]  # input order, not sorted order
    assert out["x"]["p_holm"] == pytest.approx(0.03)
    assert out["z"]["p_holm"] == pytest.approx(0.06)
    assert out["y"]["p_holm"] == pytest.approx(0.06)
    assert [out[k]["significant"] for k in "xyz"] == [True, False, False]
    assert [out[k]["p"] for k in "xyz"] == [0.01, 0.04, 0.03]


def test_holm_clips_at_one():
    # m = 2, sorted: b .2, a .7
    #   b: 2 * .2 = .4
    #   a: 1 * .7 = .7 -> max(.4, .7) = .7
    # and c alone: 1 * .6 = .6; with m = 3: sorted d .001, c .6, e .9
    #   d: 3 * .001 = .003, c: 2 * .6 = 1.2 -> clipped to 1, e: 1 * .9 = .9 -> max(1, .9) = 1
    out = holm({"a": 0.7, "b": 0.2})
    assert out["b"]["p_holm"] == pytest.approx(0.4)
    assert out["a"]["p_holm"] == pytest.approx(0.7)
    out = holm({"c": 0.6, "d": 0.001, "e": 0.9}, alpha=0.01)
    assert out["d"]["p_holm"] == pytest.approx(0.003) and out["d"]["significant"]
    assert out["c"]["p_holm"] == 1.0 and out["e"]["p_holm"] == 1.0
    assert not out["c"]["significant"] and not out["e"]["significant"]


def test_point_estimate_and_seed_sd_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0]])
    out = seed_prompt_bootstrap(a, b, resamples=200)
    # mean(a) = (1 + 2 + 3 + 4) / 4 = 2.5, mean(b) = (0 + 1) / 2 = 0.5 -> 2.0
    assert out["diff"] == pytest.approx(2.0)
    # per-seed means of a: 1.5 and 3.5; deviations from 2.5 are -1, +1 -> var = (1 + 1) / (2 - 1) = 2
    assert out["seed_sd_a"] == pytest.approx(math.sqrt(2))
    assert out["seed_sd_b"] == 0.0  # one seed
    assert (out["seeds_a"], out["seeds_b"], out["prompts"]) == (2, 1, 2)
    assert out["ci_low"] <= out["diff"] <= out["ci_high"]


def test_against_zero_reports_no_b():
    out = seed_prompt_bootstrap(np.array([[1.0, 3.0]]), None, resamples=100)
    assert out["diff"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert out["seeds_b"] is None and out["seed_sd_b"] is None


def test_identical_algorithms_give_a_zero_interval():
    # One seed each: the same prompt draw hits both, so every resampled difference is exactly 0;
    # P(stat <= 0) = P(stat >= 0) = 1 -> p = min(1, 2 * 1) = 1.
    a = np.random.default_rng(1).normal(size=(1, 32))
    out = seed_prompt_bootstrap(a, a.copy(), resamples=500)
    assert (out["diff"], out["ci_low"], out["ci_high"], out["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_large_difference_is_significant():
    rng = np.random.default_rng(2)
    a = 1.0 + rng.normal(scale=0.3, size=(3, 40))
    b = rng.normal(scale=0.3, size=(4, 40))
    out = seed_prompt_bootstrap(a, b)
    assert out["ci_low"] > 0 and out["p_value"] < 0.05
    assert out["ci_low"] < out["diff"] < out["ci_high"]


def test_one_seed_is_a_plain_prompt_bootstrap():
    # With one seed and b None the CI must be the percentile bootstrap of prompt means, drawn with
    # the same recipe: default_rng(seed), then (resamples, prompts) prompt indices.
    x = np.random.default_rng(3).normal(size=50)
    resamples, seed = 1000, 7
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    low, high = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
    out = seed_prompt_bootstrap(x[None, :], None, resamples=resamples, seed=seed)
    assert out["ci_low"] == pytest.approx(low) and out["ci_high"] == pytest.approx(high)


def test_prompt_draw_is_paired():
    # B = A + 1 on every prompt, one seed each: a shared prompt draw makes every resampled
    # difference exactly -1, so the CI collapses onto the point estimate although prompts vary a lot.
    a = np.random.default_rng(4).normal(scale=5.0, size=(1, 30))
    out = seed_prompt_bootstrap(a, a + 1.0, resamples=500)
    assert out["diff"] == pytest.approx(-1.0)
    assert out["ci_low"] == pytest.approx(-1.0) and out["ci_high"] == pytest.approx(-1.0)


def test_seed_variation_widens_the_interval():
    # Seeds offset by -1, 0, +1 on top of the same small prompt noise: the seed means are -1, 0, 1
    # (plus the shared noise mean), so a resample of 3 seeds has a mean anywhere in [-1, 1].
    # Averaging the seeds first removes that variation and leaves only prompt noise (sd 0.1 / sqrt(64)).
    noise = np.random.default_rng(5).normal(scale=0.1, size=64)
    a = np.array([-1.0, 0.0, 1.0])[:, None] + noise[None, :]
    hier = seed_prompt_bootstrap(a, None)
    flat = seed_prompt_bootstrap(a.mean(axis=0, keepdims=True), None)
    assert hier["seed_sd_a"] == pytest.approx(1.0)  # deviations -1, 0, 1 -> var = 2 / 2
    assert hier["ci_high"] - hier["ci_low"] > 10 * (flat["ci_high"] - flat["ci_low"])
    assert hier["ci_high"] - hier["ci_low"] > 1.0


def test_same_seed_same_result_other_seed_differs():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(3, 20)), rng.normal(size=(2, 20))
    assert seed_prompt_bootstrap(a, b, seed=11) == seed_prompt_bootstrap(a, b, seed=11)
    assert seed_prompt_bootstrap(a, b, seed=11) != seed_prompt_bootstrap(a, b, seed=12)


def test_fast_enough():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(3, 128)), rng.normal(size=(3, 128))
    tic = time.perf_counter()
    seed_prompt_bootstrap(a, b, resamples=4000)
    assert time.perf_counter() - tic < 1.0


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((2, 3)), np.zeros((2, 4)), "same prompts"),
    (np.zeros(3), None, "2-D"),
    (np.zeros((2, 3)), np.zeros((1, 2, 3)), "2-D"),
    (np.zeros((0, 3)), None, "at least one"),
    (np.zeros((2, 3)), np.zeros((2, 0)), "at least one"),
])
def test_bad_shapes_raise(a, b, message):
    with pytest.raises(ValueError, match=message):
        seed_prompt_bootstrap(a, b, resamples=10)


def test_p_value_is_never_zero():
    # every resampled difference is about +10: no resample reaches 0, so the count is 0 and
    # p = 2 * (1 + 0) / (1 + 999) = 0.002, not 0
    a = np.full((1, 5), 10.0) + np.arange(5) * 0.01
    out = seed_prompt_bootstrap(a, None, resamples=999)
    assert out["p_value"] == pytest.approx(0.002)


def test_the_merged_bootstrap_gives_the_numbers_of_the_two_it_replaced():
    # Computed with alol/evaluation/metrics.py's and stats.py's own bootstraps at 80f7514, before
    # they shared one draw: equal to the last bit, so the committed CIs (results/evaluate*/metrics.json,
    # results/compare*/table.*) do not move.
    from alol.evaluation.metrics import paired_comparison
    from alol.evaluation.stats import bootstrap_ci

    x = np.random.default_rng(21).normal(size=37)
    assert bootstrap_ci(x, seed=901) == (-0.1700171594548076, 0.4924701209318452)
    assert bootstrap_ci(x, level=0.9, resamples=500, seed=3) == (-0.1307821842955447, 0.46369659059382823)
    assert paired_comparison({"reward": x}, {"reward": x[::-1]}, seed=901, resamples=1000)["reward"] == {
        "gain": 7.50150692314295e-18, "ci_low": -0.3895804003607428, "ci_high": 0.38556162866122096, "win_rate": 0.5}
    a = np.random.default_rng(22).normal(size=(3, 37))
    b = np.random.default_rng(23).normal(size=(2, 37))
    assert seed_prompt_bootstrap(a, b, resamples=300, seed=5) == {
        "diff": 0.24393682994997118, "ci_low": -0.21052122103579274, "ci_high": 0.6384037525978704,
        "p_value": 0.32558139534883723, "seeds_a": 3, "seeds_b": 2, "prompts": 37,
        "seed_sd_a": 0.14350757829906266, "seed_sd_b": 0.1432127222912942}
    assert seed_prompt_bootstrap(a, None, resamples=300, seed=5) == {
        "diff": 0.13558707905170703, "ci_low": -0.166668319257382, "ci_high": 0.3737046464673763,
        "p_value": 0.33222591362126247, "seeds_a": 3, "seeds_b": None, "prompts": 37,
        "seed_sd_a": 0.14350757829906266, "seed_sd_b": None}
