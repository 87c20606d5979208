"""Advantages A = R - V(x) of every training row, and the sampling plans (spec section 4)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.training.plans import plan_frame, priority_plan, uniform_plan


@dataclasses.dataclass
class PlanConfig:
    """`plan:` how many optimizer steps, and which rows each step trains on."""

    steps: int = 20
    """Optimizer steps of a full run. good_priority runs take steps x positive fraction, all_priority
    steps x (positive fraction summed over the candidates); see advantages.step_scales."""
    seed_offset: int = 0
    """Added to base.seed for the draw (to get another plan with the same data)."""


def candidate_rows(frame: pl.DataFrame, task) -> pl.DataFrame:
    """Data with several candidates per prompt (a task providing `candidates`, HH): one row per (prompt,
    candidate), `candidate` 0 being the preferred one that good_priority trains on; all_priority may use any."""
    if not task.provides("candidates"):
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


def step_scales(frame: pl.DataFrame) -> dict[str, float]:
    """Each strategy's optimizer steps as a fraction of plan.steps (spec section 4): good_priority
    trains on the preferred replies with A > 0 (x positive fraction p_good); all_priority on every
    candidate with A > 0, a pool of (p_good + p_bad + ...) x prompts rows (HH: x (p_good + p_bad));
    the others take the full budget."""
    positive = frame["advantage"].to_numpy() > 0
    best = frame["candidate"].to_numpy() == 0 if "candidate" in frame.columns else np.ones(len(frame), bool)
    return {"good_priority": float(positive[best].mean()), "all_priority": float(positive.sum() / best.sum())}


def make_plans(frame: pl.DataFrame, cfg: PlanConfig, batch_size: int, seed: int,
               pairs: int = 0) -> tuple[pl.DataFrame, dict]:
    """Every strategy's plan in one table (column `strategy`), so that changing the algorithm
    never reruns this stage; `pairs` preference pairs get uniform passes. Also the step counts."""
    advantage = frame["advantage"].to_numpy()
    reward = frame["reward"].to_numpy()
    best = frame["candidate"].to_numpy() == 0 if "candidate" in frame.columns else np.ones(len(frame), bool)
    scales = step_scales(frame)
    scaled = {name: max(1, int(round(cfg.steps * scale))) for name, scale in scales.items()}
    plans = {"uniform": uniform_plan(int(best.sum()), cfg.steps, batch_size, seed)}
    plans["uniform"] = np.flatnonzero(best)[plans["uniform"]]
    if scales["good_priority"] > 0:  # the paper's setting: only the best candidate, proportional to A+
        plans["good_priority"] = priority_plan(np.where(best, advantage, 0), scaled["good_priority"], batch_size, seed)
        plans["all_priority"] = priority_plan(advantage, scaled["all_priority"], batch_size, seed)
    if pairs:
        plans["pairs"] = uniform_plan(pairs, cfg.steps, batch_size, seed)
    if (reward[best] > 0).any():
        plans["reward_priority"] = priority_plan(np.where(best, reward, 0), cfg.steps, batch_size, seed)
    table = pl.concat([plan_frame(p).with_columns(pl.lit(name).alias("strategy")) for name, p in plans.items()])
    steps = {name: int(p.shape[0]) for name, p in plans.items()}
    return table, {"positive_fraction": scales["good_priority"], "steps": steps}


def select_plan(plans: pl.DataFrame, strategy: str) -> np.ndarray:
    from alol.training.plans import plan_from_frame

    chosen = plans.filter(pl.col("strategy") == strategy)
    if chosen.is_empty():
        reason = ("no row has a positive advantage: check the value fit (results/estimate_value/details.json) "
                  "and the reward scale" if "priority" in strategy and strategy != "reward_priority"
                  else "no row has a positive reward")
        raise AlolError(f"sampling_strategy {strategy!r} has no plan: {reason}; or use sampling_strategy: uniform.")
    return plan_from_frame(chosen.drop("strategy"))
