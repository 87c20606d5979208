"""The record of one algorithm and of the family that trains it (alol.algorithms.ALGORITHMS holds them)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Family:
    """A way of training: it owns its train function and reads its own part of `finetune:`."""

    name: str
    """offline, preference, ppo or trl."""
    train: Callable[[Any], tuple[Any, dict]]
    """train(run) -> (trained policy, run summary): `run` is an alol.algorithms.run.Run (the stage's inputs)."""
    chooses_plan: bool = False
    """Its rows come from the offline plans, under any sampling strategy that fits its signal
    (finetune.sampling_strategy); else its one strategy is fixed (the pairs' plan, or online rollouts)."""


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Everything the pipeline needs to know about one algorithm; the rest is derived from it."""

    name: str
    family: Family
    loss: Callable | None
    """Offline: the per-example loss of alol.algorithms.offline; preference: an objective of
    alol.algorithms.preference (rows of candidates, best first); online: None (the loss lives in
    its trainer: alol.algorithms.ppo's clipped objective, or TRL's)."""
    reads: tuple[str, ...]
    """The precomputed columns its loss reads: offline from the advantages table, preference from
    the pairs table (in the order its objective takes them)."""
    strategy: str
    """Its default sampling strategy (finetune.sampling_strategy: auto); "online" for rollouts (no plan)."""
    clipped: bool = False
    """Clamps importance ratios to [1 - ppo_clip, 1 + ppo_clip] (so ppo_clip must be > 0)."""
    check: Callable[[Any], None] | None = None
    """check(finetune settings): raises AlolError for settings it cannot run with."""

    @property
    def needs_advantage(self) -> bool:
        return "advantage" in self.reads

    @property
    def strategies(self) -> tuple[str, ...]:
        """The sampling strategies that fit its loss: uniform passes, or priority by the signal it weights by
        (the advantage may also draw from every candidate: all_priority); a fixed one for other families."""
        if not self.family.chooses_plan:
            return (self.strategy,)
        return ("uniform",) + ((self.strategy,) if self.strategy != "uniform" else ()) + (
            ("all_priority",) if self.needs_advantage else ())
