"""Preference pairs for dpo / dpo_ref_free / pro on data with one reply per prompt.

For each sampled train prompt the reference generates a reply, the task reward scores it, and
the two replies (data and generated) become (chosen, rejected) by reward. Data that already has
candidates (HH) builds the same table from them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from alol.models.generate import GenerationConfig

PAIR_COLUMNS = ["prompt_id", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward",
                "chosen_raw_reward", "rejected_raw_reward", "ref_chosen_logp", "ref_rejected_logp"]


@dataclasses.dataclass
class SampleConfig:
    """`sample:` reference replies that pair with the data replies (preference algorithms only)."""

    rows: int = 64
    """Train prompts to sample (a seeded subset; 0: all). Generation is the slow part on a CPU."""
    generation: GenerationConfig = dataclasses.field(
        default_factory=lambda: GenerationConfig(max_new_tokens=32, do_sample=True, top_p=0.95))
    """How the second reply is generated (sampled by default, for variety)."""


def order_pairs(frame: pl.DataFrame, generated: list[str], generated_reward: np.ndarray,
                ref_data_logp: list[float], ref_generated_logp: list[float],
                generated_raw_reward: np.ndarray | None = None, keep_order: bool = False) -> pl.DataFrame:
    """(chosen, rejected) by reward; ties keep the data reply as chosen. Equal texts are dropped.
    The raw rewards (PRO's temperature, alol.rewards.raw_reward) travel with them; None: the reward.
    keep_order: the data reply is always chosen (the data's own preference pairs, whatever the reward says)."""
    from alol.rewards import raw_reward

    data_reward = frame["reward"].to_numpy()
    data_raw = raw_reward(frame)
    generated_raw = generated_reward if generated_raw_reward is None else generated_raw_reward
    data_wins = np.ones(len(data_reward), dtype=bool) if keep_order else data_reward >= generated_reward
    out = pl.DataFrame({
        "prompt_id": frame["prompt_id"], "prompt": frame["prompt"],
        "chosen": np.where(data_wins, frame["completion"].to_numpy(), np.array(generated, dtype=object)),
        "rejected": np.where(data_wins, np.array(generated, dtype=object), frame["completion"].to_numpy()),
        "chosen_reward": np.where(data_wins, data_reward, generated_reward),
        "rejected_reward": np.where(data_wins, generated_reward, data_reward),
        "chosen_raw_reward": np.where(data_wins, data_raw, generated_raw),
        "rejected_raw_reward": np.where(data_wins, generated_raw, data_raw),
        "ref_chosen_logp": np.where(data_wins, ref_data_logp, ref_generated_logp),
        "ref_rejected_logp": np.where(data_wins, ref_generated_logp, ref_data_logp),
    }, schema_overrides={"chosen": pl.String, "rejected": pl.String})
    return out.filter(pl.col("chosen") != pl.col("rejected")).select(PAIR_COLUMNS)
