"""`positivity`: (VADER compound + 1) / 2 of the reply, in [0, 1]."""

from __future__ import annotations

import dataclasses

import numpy as np

from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class PositivityConfig(RewardConfig):
    """No settings of its own: VADER is a lexicon, nothing to choose."""


class Positivity(Component):
    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, rows: RewardInputs) -> np.ndarray:
        return np.array([(self.analyzer.polarity_scores(t)["compound"] + 1) / 2 for t in rows.completions])


REWARD_TYPE = RewardType(name="positivity", config=PositivityConfig, bounds=(0.0, 1.0),
                         build=lambda cfg, assets, where: Positivity())
