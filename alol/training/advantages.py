"""Advantages A = R - V(x) of every training row (spec section 4); the plans drawn from them are in plans.py."""

from __future__ import annotations

import numpy as np
import polars as pl

from alol.core.errors import AlolError


def candidate_rows(frame: pl.DataFrame, task) -> pl.DataFrame:
    """Data with several candidates per prompt (a task providing `candidates`, HH): one row per (prompt,
    candidate), `candidate` 0 being the preferred one that good_priority trains on; all_priority may use any."""
    if not task.provides("candidates", frame):
        return frame
    if "candidate_rewards" not in frame.columns or "candidate_raw_rewards" not in frame.columns:
        raise AlolError("train rows have `candidates` but no `candidate_rewards` / `candidate_raw_rewards`; "
                        "rerun annotate.")
    return (frame.with_columns(pl.int_ranges(pl.col("candidates").list.len()).alias("candidate"))
            .explode("candidates", "candidate_rewards", "candidate_raw_rewards", "candidate")
            .with_columns(pl.col("candidates").alias("completion"), pl.col("candidate_rewards").alias("reward"),
                          pl.col("candidate_raw_rewards").alias("raw_reward"))
            .drop("candidates", "candidate_rewards", "candidate_raw_rewards", "candidate_logits", strict=False))


def with_advantages(frame: pl.DataFrame, token_logps: list[list[float]], values: np.ndarray) -> pl.DataFrame:
    if not np.isfinite(frame["reward"].to_numpy()).all():
        raise AlolError("the reward column has NaN or inf values; fix the reward function and rerun annotate.")
    return frame.with_columns(
        pl.Series("ref_token_logps", token_logps, dtype=pl.List(pl.Float32)),
        pl.Series("ref_logp", [float(np.sum(t)) for t in token_logps], dtype=pl.Float64),
        pl.Series("value", values, dtype=pl.Float64),
    ).with_columns((pl.col("reward") - pl.col("value")).alias("advantage"))
