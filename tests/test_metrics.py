"""Evaluation metrics, each against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from alol.evaluation.stats import bootstrap_ci
from alol.evaluation.metrics import distinct_n, kl_estimate, paired_comparison, text_stats, win_rate


def test_distinct_n_by_hand():
    texts = ["I like it", "i like THIS a lot"]
    # lowercased words: [i, like, it] + [i, like, this, a, lot]
    # unigrams: 8 in all; unique {i, like, it, this, a, lot} = 6      -> 6/8
    assert distinct_n(texts, 1) == pytest.approx(6 / 8)
    # bigrams: (i like)(like it) + (i like)(like this)(this a)(a lot) = 6; unique 5 -> 5/6
    assert distinct_n(texts, 2) == pytest.approx(5 / 6)
    # trigrams: (i like it) + (i like this)(like this a)(this a lot) = 4, all unique -> 1
    assert distinct_n(texts, 3) == 1.0
    # n-grams never span two replies; no n-grams at all -> 0 (not a division by zero)
    assert distinct_n(["a", "b"], 2) == 0.0


def test_text_stats_by_hand():
    stats = text_stats(["hi there", "", "one two three four"], [3, 1, 5])
    assert stats["length_words"] == pytest.approx((2 + 0 + 4) / 3)
    assert stats["length_tokens"] == pytest.approx(3.0)
    assert stats["empty_fraction"] == pytest.approx(1 / 3)
    assert stats["distinct_1"] == 1.0  # 6 words, all different


def test_win_rate_counts_ties_half():
    # wins: 2 > 1 (yes), 1 vs 1 (tie: 0.5), 0 vs 3 (no), 5 > 4 (yes) -> (1 + 0.5 + 0 + 1) / 4
    assert win_rate(np.array([2, 1, 0, 5]), np.array([1, 1, 3, 4])) == pytest.approx(2.5 / 4)


def test_bootstrap_ci_by_hand():
    # constant differences: every resample has mean 0.3, so the interval is [0.3, 0.3]
    low, high = bootstrap_ci(np.full(7, 0.3))
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)
    # values {0, 1}: a resample of 2 has mean 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4); the 2.5% and
    # 97.5% quantiles of that distribution are 0 and 1
    low, high = bootstrap_ci(np.array([0.0, 1.0]), resamples=4000, seed=3)
    assert (low, high) == (0.0, 1.0)
    # a wide sample: the 95% interval holds the mean and is about 2 x 1.96 x sd / sqrt(n) wide
    values = np.random.default_rng(0).normal(1.0, 2.0, 400)
    low, high = bootstrap_ci(values, seed=1)
    assert low < values.mean() < high
    assert (high - low) == pytest.approx(2 * 1.96 * values.std() / np.sqrt(400), rel=0.1)
    assert bootstrap_ci(values, seed=1) == (low, high)  # seeded: reproducible


def test_paired_comparison_pairs_by_position():
    policy = {"reward": np.array([1.0, 2.0, 3.0])}
    reference = {"reward": np.array([1.0, 1.0, 1.0])}
    out = paired_comparison(policy, reference)["reward"]
    assert out["gain"] == pytest.approx((0 + 1 + 2) / 3)
    assert out["win_rate"] == pytest.approx((0.5 + 1 + 1) / 3)
    # the CI is the bootstrap of the per-prompt differences (0, 1, 2), not of each side apart
    assert (out["ci_low"], out["ci_high"]) == bootstrap_ci(np.array([0.0, 1.0, 2.0]), resamples=4000, seed=0)


def test_kl_estimate_by_hand():
    policy = [np.array([-0.5, -1.0]), np.array([-2.0])]
    reference = [np.array([-1.0, -1.5]), np.array([-1.0])]
    # reply 1: (-1.5) - (-2.5) = 1.0; reply 2: (-2.0) - (-1.0) = -1.0
    out = kl_estimate(policy, reference)
    assert out["kl"] == pytest.approx((1.0 - 1.0) / 2)
    assert out["kl_per_token"] == pytest.approx(0.0 / 3)
    assert out["kl_stderr"] == pytest.approx(np.sqrt(((1 - 0) ** 2 + (-1 - 0) ** 2) / (2 - 1)) / np.sqrt(2))  # = 1
    out = kl_estimate(policy[:1], reference[:1])
    assert out["kl"] == pytest.approx(1.0) and out["kl_per_token"] == pytest.approx(0.5)


def test_extractive_fragments_and_coverage_density_by_hand():
    from alol.evaluation.metrics import coverage_density, extractive_fragments, grounding_stats

    # reply "the cat sat on the mat today", knowledge "a cat sat on a mat the mat today":
    # at "the" (pos 0) the longest run in the knowledge is "the" (then "cat" != "mat") -> [the];
    # at "cat": "cat sat on" (then "the" != "a") -> 3; at "the" (pos 4): "the mat today" -> 3.
    reply, knowledge = "the cat sat on the mat today", "a cat sat on a mat the mat today"
    assert extractive_fragments(reply.split(), knowledge.split()) == [["the"], ["cat", "sat", "on"],
                                                                      ["the", "mat", "today"]]
    coverage, density = coverage_density(reply, knowledge)
    assert coverage == pytest.approx(7 / 7) and density == pytest.approx((1 + 9 + 9) / 7)
    # a token found nowhere is skipped; copied words count once each: "i love blue skies" vs "blue skies are
    # nice" -> one fragment [blue, skies]: coverage 2/4, density 4/4
    assert coverage_density("i love blue skies", "blue skies are nice") == (pytest.approx(0.5), pytest.approx(1.0))
    assert coverage_density("", "anything") == (0.0, 0.0)
    assert coverage_density("no overlap", "at all") == (0.0, 0.0)
    assert grounding_stats(["i love blue skies", reply], ["blue skies are nice", knowledge]) == {
        "coverage": pytest.approx((0.5 + 1.0) / 2), "density": pytest.approx((1.0 + 19 / 7) / 2)}
