"""`comet_critic`: the COMET critic's P(valid) of an ATOMIC (head, relation, reply) triple, in [0, 1]
(the model and its conversion from the authors' Keras weights: comet.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from alol.core.device import place, reward_dtype
from alol.core.errors import AlolError
from alol.rewards.comet import CometCritic, NameSampler, critic_pair, parse_prompt
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType

MAX_POSITIONS = 512  # RoBERTa's: a longer pair has no position embedding


@dataclasses.dataclass
class CometCriticConfig(RewardConfig):
    model: str | None = None
    """A critic folder (`python -m alol.rewards.comet convert`)."""
    use_stored_scores: bool = True
    """Train and validation data replies keep the score stored with them (ATOMIC-10x's p_valid_model,
    the authors' train reward); test rows and generated replies are scored by the critic."""
    seed: int = 0
    """Seed of the first names that replace PersonX / PersonY (drawn per head)."""
    max_tokens: int = MAX_POSITIONS
    """(head, phrase + tail) pairs are truncated to this many tokens (at most RoBERTa's 512)."""
    batch_size: int = 64
    """Pairs per forward pass."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: bf16 on a GPU, float32 on the CPU (alol/core/device.py)."""

    def __post_init__(self):
        if self.max_tokens > MAX_POSITIONS:
            raise ValueError(f"max_tokens {self.max_tokens} is more than RoBERTa's {MAX_POSITIONS} positions; "
                             f"set it to {MAX_POSITIONS} or less.")


class CometCriticReward(Component):
    """Component: P(valid) of (head, relation, reply), head and relation read from the comet prompt.
    With `use_stored_scores`, train and validation DATA replies keep their stored score (ATOMIC-10x's
    p_valid_model, the authors' train reward); test rows and generated replies are always scored."""

    def __init__(self, model: str, where: str, seed: int = 0, use_stored_scores: bool = True, batch_size: int = 32,
                 max_tokens: int = 512, dtype: str = "auto"):
        from transformers import AutoTokenizer

        if not model:
            raise AlolError(f"{where}.model: comet_critic needs a converted critic folder.")
        self.where, self.use_stored, self.batch_size, self.max_tokens = where, use_stored_scores, batch_size, max_tokens
        self.sampler = NameSampler(seed)
        self.dtype, self.source = reward_dtype(dtype), model
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = place(CometCritic.from_folder(model), f"COMET critic {model}", self.dtype)

    def pairs(self, prompts: list[str], tails: list[str]) -> list[tuple[str, str]]:
        out = []
        for prompt, tail in zip(prompts, tails):
            head, relation = parse_prompt(prompt)
            out.append(critic_pair(head, relation, tail.strip(), self.sampler.names(head)))
        return out

    @torch.inference_mode()
    def probabilities(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        out = np.zeros(len(pairs))
        for start in range(0, len(pairs), self.batch_size):
            part = pairs[start:start + self.batch_size]
            enc = self.tokenizer([a for a, _ in part], [b for _, b in part], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.model.roberta.device)
            out[start:start + len(part)] = torch.sigmoid(self.model(**enc).float()).cpu().numpy()
        return out

    def score(self, rows: RewardInputs) -> np.ndarray:
        stored = rows.stored_scores
        if self.use_stored and rows.split in ("train", "validation") and stored is not None \
                and np.all(np.isfinite(stored)):
            return np.asarray(stored, dtype=np.float64)
        return self.probabilities(self.pairs(rows.prompts, rows.completions))


REWARD_TYPE = RewardType(
    name="comet_critic", config=CometCriticConfig, bounds=(0.0, 1.0), needs=lambda cfg: ("prompt", "completion"),
    build=lambda cfg, assets, where: CometCriticReward(cfg.model, where, cfg.seed, cfg.use_stored_scores,
                                                       cfg.batch_size, cfg.max_tokens, cfg.dtype))
