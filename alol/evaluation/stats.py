"""The bootstrap, written once: the paired prompt bootstrap of one evaluation (`bootstrap_ci`,
behind evaluate's gain CI) and the seed-and-prompt bootstrap of several training seeds
(`seed_prompt_bootstrap`, behind alol.compare's tables) share one prompt draw and one interval.

Two sources of noise matter when a policy's test reward is compared with another's: which test
prompts happened to be drawn, and which training seed produced the policy. A bootstrap over prompts
alone ignores the second and gives intervals that are too narrow as soon as seeds disagree, so
`seed_prompt_bootstrap` resamples both. `holm` corrects p-values when several comparisons are
reported together.
"""

from __future__ import annotations

import numpy as np


def _as_scores(x, name: str) -> np.ndarray:
    """`x` as a float (seeds, prompts) array, or a ValueError saying what is wrong with it."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (seeds, prompts); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must have at least one seed and one prompt; got shape {arr.shape}")
    return arr


def draw(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n) indices of 0..n-1 drawn with replacement: n prompts (the first draw of both
    bootstraps, so that with one seed they resample the same prompts) or n seeds."""
    return rng.integers(0, n, size=(resamples, n))


def percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval at `level` of the resampled statistics."""
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values` (one per prompt).

    The same draw as `seed_prompt_bootstrap` with one seed; each resample's mean is taken over the
    gathered values (not through counts as there), the sum order the committed CIs were made with."""
    values = np.asarray(values, dtype=np.float64)
    means = values[draw(np.random.default_rng(seed), len(values), resamples)].mean(axis=1)
    return percentile_interval(means, level)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 occurs in each row of `idx` (resamples, draws) -> (resamples, n).

    One flat bincount with a per-row offset: memory stays O(resamples * n), unlike a one-hot."""
    rows = idx.shape[0]
    flat = idx + n * np.arange(rows)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _resampled_means(x: np.ndarray, seed_idx: np.ndarray, prompt_counts: np.ndarray) -> np.ndarray:
    """mean(x[seed_draw][:, prompt_draw]) for every resample, without materialising the gathers.

    That mean is (seed counts @ x @ prompt counts) / (seeds * prompts), computed row by row."""
    seeds, prompts = x.shape
    seed_counts = _counts(seed_idx, seeds)
    return ((seed_counts @ x) * prompt_counts).sum(axis=1) / (seeds * prompts)


def _seed_sd(x: np.ndarray) -> float:
    """Standard deviation over seeds (ddof=1) of each seed's mean over prompts; 0.0 for one seed."""
    if x.shape[0] < 2:
        return 0.0
    return float(np.std(x.mean(axis=1), ddof=1))


def seed_prompt_bootstrap(a: np.ndarray, b: np.ndarray | None, resamples: int = 4000, seed: int = 0,
                          level: float = 0.95) -> dict:
    """Mean reward of A minus that of B, with a seed-and-prompt (hierarchical) bootstrap CI.

    `a` is (seeds_a, prompts): A's per-prompt test reward for each of its training seeds. `b` is the
    same for B, on the same prompts in the same column order (seeds_b may differ), or None to compare
    A with zero (e.g. when `a` already holds policy-minus-reference rewards).

    Each resample draws prompt indices with replacement, shared by A and B because both were scored on
    the same prompts (paired), and, independently for A and for B, seed indices with replacement from
    their own seeds. The statistic is mean(A[seeds_a][:, prompts]) - mean(B[seeds_b][:, prompts]).
    The CI is the percentile interval at `level`; p_value is the two-sided bootstrap p,
    min(1, 2 * (1 + #(stat on the far side of 0)) / (1 + resamples)): never 0, as R resamples cannot
    show a p below 1 / (R + 1).

    With one seed per algorithm the seed draw is a no-op and this is a paired prompt bootstrap.

    Returns diff, ci_low, ci_high, p_value, seeds_a, seeds_b, prompts, seed_sd_a and seed_sd_b (the
    standard deviation over seeds of each seed's mean; seed_sd_b is None when b is None).
    """
    a = _as_scores(a, "a")
    b = None if b is None else _as_scores(b, "b")
    if b is not None and b.shape[1] != a.shape[1]:
        raise ValueError(f"a and b must cover the same prompts; a has {a.shape[1]} prompts, b has {b.shape[1]}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1; got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")

    prompts = a.shape[1]
    rng = np.random.default_rng(seed)
    # Prompts first, then seeds: with one seed the draws below are constant, so the prompt draw is
    # the same as a plain prompt bootstrap with this seed would make.
    prompt_counts = _counts(draw(rng, prompts, resamples), prompts)
    stats = _resampled_means(a, draw(rng, a.shape[0], resamples), prompt_counts)
    diff = a.mean()
    if b is not None:
        stats = stats - _resampled_means(b, draw(rng, b.shape[0], resamples), prompt_counts)
        diff = diff - b.mean()

    ci_low, ci_high = percentile_interval(stats, level)
    # (1 + count) / (1 + resamples): a bootstrap of R resamples cannot show p below 1 / (R + 1)
    far_side = min(np.sum(stats <= 0), np.sum(stats >= 0))
    p_value = min(1.0, 2 * (1 + far_side) / (1 + resamples))
    return {"diff": float(diff), "ci_low": float(ci_low), "ci_high": float(ci_high), "p_value": float(p_value),
            "seeds_a": int(a.shape[0]), "seeds_b": None if b is None else int(b.shape[0]), "prompts": int(prompts),
            "seed_sd_a": _seed_sd(a), "seed_sd_b": None if b is None else _seed_sd(b)}


def holm(p_values: dict[str, float], alpha: float = 0.05) -> dict[str, dict]:
    """Holm-Bonferroni step-down correction of several p-values tested together.

    With the p-values sorted ascending, the adjusted p_(i) is max over j <= i of min(1, (m - j + 1) p_(j))
    (1-based): the running max keeps the adjusted values in the same order as the raw ones, so a
    comparison is never significant while a smaller raw p is not. significant = adjusted <= alpha.
    Returns name -> {"p", "p_holm", "significant"} in the input's key order.
    """
    m = len(p_values)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(sorted(p_values, key=p_values.get)):  # rank is j - 1
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        adjusted[name] = running
    return {name: {"p": float(p), "p_holm": adjusted[name], "significant": adjusted[name] <= alpha}
            for name, p in p_values.items()}
