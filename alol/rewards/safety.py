"""`safety`: 1 - P(toxic) of the reply, the Jigsaw toxic-comment BiLSTM (toxicity.py), in [0, 1]."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from alol.core.device import reward_dtype
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class SafetyConfig(RewardConfig):
    batch_size: int = 256
    """Replies per forward pass of the BiLSTM."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: float32 (a small model: alol/core/device.py says why)."""


class Safety(Component):
    def __init__(self, assets: Path, batch_size: int = 256, dtype: str = "auto"):
        from alol.rewards.toxicity import LABELS, ToxicityClassifier

        self.classifier = ToxicityClassifier(assets / "toxicity", reward_dtype(dtype, small=True))
        self.toxic = LABELS.index("toxic")
        self.batch_size = batch_size

    def score(self, rows: RewardInputs) -> np.ndarray:
        return 1.0 - self.classifier.probabilities(rows.completions, self.batch_size)[:, self.toxic]


REWARD_TYPE = RewardType(
    name="safety", config=SafetyConfig, bounds=(0.0, 1.0), assets=("toxicity",),
    build=lambda cfg, assets, where: Safety(assets, batch_size=cfg.batch_size, dtype=cfg.dtype))
