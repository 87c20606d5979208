"""Evaluation statistics of a set of replies, and the paired comparison of two policies.

Everything here is a pure function of arrays and strings, so each number in
`results/evaluate*/{metrics,details}.json` has a hand-worked test.
"""

from __future__ import annotations

import numpy as np

from alol.evaluation.stats import bootstrap_ci


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over every reply (lowercased whitespace tokens), as the paper."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def text_stats(texts: list[str], token_counts: list[int] | np.ndarray) -> dict[str, float]:
    """Diversity and length of a set of replies."""
    return {**{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)},
            "length_words": float(np.mean([len(t.split()) for t in texts])) if texts else 0.0,
            "length_tokens": float(np.mean(token_counts)) if len(token_counts) else 0.0,
            "empty_fraction": float(np.mean([not t.strip() for t in texts])) if texts else 0.0}


def win_rate(policy: np.ndarray, reference: np.ndarray) -> float:
    """P(policy > reference) on the same prompts, a tie counting half."""
    policy, reference = np.asarray(policy), np.asarray(reference)
    return float(np.mean((policy > reference) + 0.5 * (policy == reference)))


def paired_comparison(policy: dict[str, np.ndarray], reference: dict[str, np.ndarray], seed: int = 0,
                      resamples: int = 4000) -> dict:
    """For each reward column: mean gain of policy over reference on the same prompts, its 95%
    bootstrap CI and the win rate."""
    out = {}
    for name in policy:
        gain = np.asarray(policy[name]) - np.asarray(reference[name])
        low, high = bootstrap_ci(gain, resamples=resamples, seed=seed)
        out[name] = {"gain": float(gain.mean()), "ci_low": low, "ci_high": high,
                     "win_rate": win_rate(policy[name], reference[name])}
    return out


def kl_estimate(policy_token_logps: list[np.ndarray], reference_token_logps: list[np.ndarray]) -> dict[str, float]:
    """Monte-Carlo KL(policy || reference) from replies SAMPLED from the policy: the mean over
    replies of sum_t [log pi(y_t) - log pi_ref(y_t)] (unbiased; one reply can be negative, the
    mean is >= 0 in expectation), its standard error, and per token."""
    diffs = np.array([float(np.sum(p) - np.sum(r)) for p, r in zip(policy_token_logps, reference_token_logps)])
    tokens = sum(len(p) for p in policy_token_logps)
    stderr = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
    return {"kl": float(diffs.mean()) if len(diffs) else 0.0, "kl_stderr": stderr,
            "kl_per_token": float(diffs.sum()) / tokens if tokens else 0.0}


TRAINING_PREFIX = "train_"
"""Where evaluate.rewards is set: the training reward's columns beside it, `train_reward` and `train_reward_<name>`."""


def is_reward_column(name: str) -> bool:
    """`reward`, `reward_<component>`, and the training reward's `train_reward` / `train_reward_<component>`."""
    name = name.removeprefix(TRAINING_PREFIX)
    return name == "reward" or name.startswith("reward_")


def reward_columns(frame) -> list[str]:
    return [c for c in frame.columns if is_reward_column(c)]


def reward_means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(values)) for name, values in scores.items()}


def extractive_fragments(reply: list[str], source: list[str]) -> list[list[str]]:
    """Grusky et al. (2018, Newsroom) greedy extractive fragments of `reply` in `source` (token lists):
    from each reply position, the longest run of tokens that also occurs contiguously in the source is
    a fragment, and the scan jumps past it; a token found nowhere is skipped."""
    fragments, i = [], 0
    while i < len(reply):
        best: list[str] = []
        j = 0
        while j < len(source):
            if reply[i] == source[j]:
                a, b = i, j
                while a < len(reply) and b < len(source) and reply[a] == source[b]:
                    a, b = a + 1, b + 1
                if a - i > len(best):
                    best = reply[i:a]
                j = b
            else:
                j += 1
        i += max(len(best), 1)
        if best:
            fragments.append(best)
    return fragments


def coverage_density(reply: str, knowledge: str) -> tuple[float, float]:
    """(coverage, density) of a reply against its knowledge, on whitespace tokens: coverage = sum |f| /
    |reply| (the share of reply tokens inside copied fragments), density = sum |f|^2 / |reply| (the
    mean length of the fragment a token sits in). An empty reply is (0, 0)."""
    tokens = reply.split()
    if not tokens:
        return 0.0, 0.0
    lengths = [len(f) for f in extractive_fragments(tokens, knowledge.split())]
    return sum(lengths) / len(tokens), sum(n * n for n in lengths) / len(tokens)


def grounding_stats(replies: list[str], knowledge: list[str]) -> dict[str, float]:
    """Mean coverage and density of replies against their knowledge (the paper's WoW metrics)."""
    pairs = [coverage_density(r, k) for r, k in zip(replies, knowledge)]
    return {"coverage": float(np.mean([c for c, _ in pairs])) if pairs else 0.0,
            "density": float(np.mean([d for _, d in pairs])) if pairs else 0.0}
