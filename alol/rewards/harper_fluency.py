"""`harper_fluency`: exp(-scale * grammar/spelling lints per word) of the reply, from Harper's
rule-based checker (offline, deterministic), in [0, 1]."""

from __future__ import annotations

import dataclasses

import numpy as np

from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class HarperFluencyConfig(RewardConfig):
    scale: float = 5.0
    """The score is exp(-scale * lints / words)."""
    ignore_kinds: list[str] = dataclasses.field(default_factory=lambda: ["Formatting", "Readability", "Style"])
    """Harper lint kinds not counted (spacing and style advice, not errors)."""


class HarperFluency(Component):
    """exp(-scale * lints / words) of the completion, lints from Harper (harper-py), a rule-based
    English grammar, spelling and style checker with a built-in dictionary: offline and deterministic.

    A lint is one problem Harper reports (Spelling, Capitalization, Agreement, Repetition, Grammar,
    WordChoice, ...); the kinds in `ignore_kinds` (spacing and style advice) are not counted. Words are
    whitespace tokens; an empty reply scores 0. With scale 5: one lint in 10 words -> exp(-0.5) = 0.61.
    It catches misspellings, wrong capitalisation, agreement slips and doubled words; it does not judge
    meaning, coherence, relevance or non-English text beyond flagging its words as misspelled, and it
    passes many ungrammatical sentences ("Me want cookie now please." gets no lint)."""

    def __init__(self, scale: float = 5.0, ignore_kinds: tuple[str, ...] = ("Formatting", "Readability", "Style")):
        from harper import Linter

        self.linter, self.scale, self.ignore = Linter(), scale, set(ignore_kinds)

    def lints(self, text: str) -> int:
        return sum(lint.lint_kind not in self.ignore for lint in self.linter.lint(text))

    def score(self, rows: RewardInputs) -> np.ndarray:
        out = np.zeros(len(rows))
        for i, text in enumerate(rows.completions):
            words = len(text.split())
            if words:
                out[i] = np.exp(-self.scale * self.lints(text) / words)
        return out


REWARD_TYPE = RewardType(name="harper_fluency", config=HarperFluencyConfig, bounds=(0.0, 1.0),
                         build=lambda cfg, assets, where: HarperFluency(cfg.scale, tuple(cfg.ignore_kinds)))
