"""`relevance`: (cosine(MiniLM(context), MiniLM(reply)) + 1) / 2, clipped to [0, 1]."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from alol.core.device import place, reward_dtype
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class RelevanceConfig(RewardConfig):
    batch_size: int = 64
    """Texts per forward pass of the sentence encoder."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: float32 (a small model: alol/core/device.py says why)."""


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (reproduces sentence-transformers' MiniLM)."""

    def __init__(self, folder: str | Path, max_length: int = 256, batch_size: int = 64, dtype: str = "auto"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = place(AutoModel.from_pretrained(folder).eval(), "sentence encoder", reward_dtype(dtype, small=True))
        self.max_length, self.batch_size = max_length, batch_size
        self._recent: dict[tuple[str, ...], torch.Tensor] = {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        """One row per text (read-only: the last few calls' results are kept and returned again, so the
        relevance reward and a column's stand-in, which encode the same contexts and replies, encode them once)."""
        key = tuple(texts)
        if key not in self._recent:
            if len(self._recent) >= 4:
                self._recent.pop(next(iter(self._recent)))
            self._recent[key] = self._encode(texts)
        return self._recent[key]

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        order = np.argsort([len(t) for t in texts])  # length-sorted batches: little padding
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.model.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[torch.as_tensor(idx)] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out


def sentence_encoder(folder: str | Path, batch_size: int = 64, dtype: str = "auto") -> SentenceEncoder:
    """One encoder per folder (however it is spelled) and settings in a process: the components that read it
    share its weights and its recent embeddings."""
    return _shared_encoder(Path(folder).resolve(), batch_size, dtype)


@functools.cache
def _shared_encoder(folder: Path, batch_size: int, dtype: str) -> SentenceEncoder:
    return SentenceEncoder(folder, batch_size=batch_size, dtype=dtype)


class Relevance(Component):
    def __init__(self, assets: Path, batch_size: int = 64, dtype: str = "auto"):
        self.encoder = sentence_encoder(Path(assets) / "minilm", batch_size, dtype)

    def score(self, rows: RewardInputs) -> np.ndarray:
        cos = (self.encoder.encode(rows.contexts) * self.encoder.encode(rows.completions)).sum(-1)
        return ((cos.numpy() + 1) / 2).clip(0.0, 1.0)


REWARD_TYPE = RewardType(
    name="relevance", config=RelevanceConfig, bounds=(0.0, 1.0), assets=("minilm",),
    needs=lambda cfg: ("context", "completion"),
    build=lambda cfg, assets, where: Relevance(assets, batch_size=cfg.batch_size, dtype=cfg.dtype))
