"""Generate a policy's replies to a table's prompts and score them with the task reward: the one
generate-then-score, behind estimate_value, evaluate, the preference pairs, finetune's validation
and PPO's rollouts."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl

from alol.models.generate import GenerationConfig, Rollout, generate_ids


@dataclasses.dataclass
class ScoredReplies:
    replies: list[str]
    """One reply per row of the table, in its order (cut at a stop string)."""
    scores: dict[str, np.ndarray]
    """The reward's columns (`reward`, `reward_<component>`, ...) for those replies."""
    generated_tokens: int
    """Tokens generated, EOS not counted (what `generate` counts)."""
    seconds: float
    """Wall time of the generation alone (scoring not included)."""
    rollouts: list[Rollout]
    """The replies with their token ids (online RL trains on exactly the sampled tokens)."""


def generate_and_score(model, tokenizer, frame: pl.DataFrame, reward, cfg: GenerationConfig, max_prompt_tokens: int,
                       seed: int, split: str, source: str, description: str | None = "generating") -> ScoredReplies:
    """Replies of `model` to `frame`'s prompts (alol.models.generate, seeded by `seed`), scored by `reward`
    (a RewardFunction) with the rows' other columns as `split` rows; `source` names them in reward errors.
    description=None: no progress bars (neither generating nor scoring)."""
    from alol.rewards.annotate import reward_inputs

    tic = time.perf_counter()
    rollouts = generate_ids(model, tokenizer, frame["prompt"].to_list(), cfg, max_prompt_tokens, seed, description)
    seconds = time.perf_counter() - tic
    replies = [r.text for r in rollouts]
    scores = reward(reward_inputs(frame, split, completions=replies), source=source,
                    row_ids=frame["prompt_id"].to_list(), description="scoring" if description else None)
    return ScoredReplies(replies, scores, sum(r.tokens for r in rollouts), seconds, rollouts)
