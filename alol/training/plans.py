"""The training plans: which rows each optimizer step trains on, drawn once with a seed for every
sampling strategy (uniform, reward_priority, good_priority ~ A+, all_priority, pairs).

Stored as Parquet by the stage that makes it, so training is deterministic, resumable and the
same under any number of processes (each takes its slice of a step's rows).
"""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass
class PlanConfig:
    """`plan:` how many optimizer steps, and which rows each step trains on."""

    steps: int = 20
    """Optimizer steps of a full run. good_priority runs take steps x positive fraction, all_priority
    steps x (positive fraction summed over the candidates); see step_scales."""
    seed_offset: int = 0
    """Added to base.seed for the draw (to get another plan with the same data)."""
    rft_quantile: float = 0.5
    """rft (reward-filtered fine-tuning) trains on the train replies whose reward is at or above this
    quantile of the train rewards, for plan.steps x the kept fraction steps (as good_priority scales)."""

    def __post_init__(self):
        if not 0 <= self.rft_quantile < 1:
            raise ValueError(f"rft_quantile must be in [0, 1), got {self.rft_quantile}")


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
    kept, threshold = reward_filter(reward, best, cfg.rft_quantile)
    plans["reward_filtered"] = kept[uniform_plan(len(kept), max(1, int(round(cfg.steps * len(kept) / best.sum()))),
                                                 batch_size, seed)]
    table = pl.concat([plan_frame(p).with_columns(pl.lit(name).alias("strategy")) for name, p in plans.items()])
    steps = {name: int(p.shape[0]) for name, p in plans.items()}
    return table, {"positive_fraction": scales["good_priority"], "steps": steps,
                   "reward_filtered": {"quantile": cfg.rft_quantile, "threshold": threshold,
                                       "kept_fraction": len(kept) / int(best.sum())}}


def reward_filter(reward: np.ndarray, best: np.ndarray, quantile: float) -> tuple[np.ndarray, float]:
    """rft's rows: the data replies (`best`) whose reward is at or above the `quantile` of theirs (numpy's
    linear quantile), and that threshold."""
    threshold = float(np.quantile(reward[best], quantile))
    return np.flatnonzero(best & (reward >= threshold)), threshold


def select_plan(plans: pl.DataFrame, strategy: str) -> np.ndarray:
    chosen = plans.filter(pl.col("strategy") == strategy)
    if chosen.is_empty():
        reason = ("no row has a positive advantage: check the value fit (results/estimate_value/details.json) "
                  "and the reward scale" if "priority" in strategy and strategy != "reward_priority"
                  else "no row has a positive reward")
        raise AlolError(f"sampling_strategy {strategy!r} has no plan: {reason}; or use sampling_strategy: uniform.")
    return plan_from_frame(chosen.drop("strategy"))
