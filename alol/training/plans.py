"""The training plan: which rows each optimizer step trains on, drawn once with a seed.

Stored as Parquet by the stage that makes it, so training is deterministic, resumable and the
same under any number of processes (each takes its slice of a step's rows).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from alol.core.errors import AlolError


def uniform_plan(n_rows: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """(steps, batch_size) row indices: shuffled passes over all rows (epochs), no replacement within a pass."""
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(n_rows) for _ in range(-(-need // n_rows))])
    return order[:need].reshape(steps, batch_size)


def priority_plan(weights: np.ndarray, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """(steps, batch_size) rows drawn with replacement, with probability proportional to `weights` (>= 0)."""
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0, None)
    if weights.sum() <= 0:
        raise AlolError("priority sampling: no row has a positive weight (advantage or reward). Check the value "
                        "fit (results/estimate_value) and the reward scale, or use sampling_strategy: uniform.")
    rng = np.random.default_rng(seed)
    return rng.choice(len(weights), size=steps * batch_size, replace=True, p=weights / weights.sum()).reshape(
        steps, batch_size)


def plan_frame(plan: np.ndarray) -> pl.DataFrame:
    steps, batch = plan.shape
    return pl.DataFrame({"step": np.repeat(np.arange(steps), batch), "row": plan.reshape(-1)})


def plan_from_frame(frame: pl.DataFrame) -> np.ndarray:
    steps = frame["step"].max() + 1
    return frame.sort("step", maintain_order=True)["row"].to_numpy().reshape(steps, -1)
