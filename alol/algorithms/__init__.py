"""Algorithms: the one place where params.yaml's `algorithm:` becomes code.

`ALGORITHMS[name]` is an `Algorithm` record (alol/algorithms/record.py): its loss, the precomputed
columns it reads, its default sampling strategy, and its family, which owns the train function
(`family.train(run) -> (policy, summary)`) and reads its own part of `finetune:`:

    offline     alol/algorithms/offline.py      the plan's rows of the advantages table (nll, wbc, ..., a_lol_kl)
    preference  alol/algorithms/preference.py   the sample stage's pairs (dpo, dpo_ref_free, pro)
    kto         alol/algorithms/kto.py          each train reply desirable or not, with a mismatched-pair KL
    ppo         alol/algorithms/ppo_trainer.py  rollouts in alol's PPO loop (maths: alol/algorithms/ppo.py)
    trl         alol/algorithms/trl.py          rollouts through TRL's GRPOTrainer / RLOOTrainer

stages/finetune.py only parses, calls `ALGORITHMS[name].family.train(run)` and writes.

Adding an offline loss is one edit of alol/algorithms/offline.py (+ its test in tests/test_losses.py):

    def losses_my_loss(logps, mask, advantage, **_):     # the per-example loss (B,)
        return advantage.clamp(min=0) * nll(logps, mask)

    ALGORITHMS = (..., Algorithm("my_loss", OFFLINE, losses_my_loss, (ADV,), "good_priority"))  # its record

`reads` names the advantages table's columns the loss takes (reward, advantage, ref_token_logps
arrive as `reward`, `advantage`, `ref_logps`; any other column under its own name), `strategy` its
default plan (the plan stage draws every strategy, so no other stage changes); `clipped=True` makes
finetune.ppo_clip > 0 required, `check=` adds a check of other settings. `-S algorithm=my_loss`
then works: params.yaml's `algorithm` is checked against this registry.
"""

from __future__ import annotations

from alol.algorithms import kto, offline, ppo_trainer, preference, trl
from alol.algorithms.record import Algorithm, Family
from alol.core.errors import AlolError

__all__ = ["ALGORITHMS", "Algorithm", "Family", "check_algorithm"]

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    *offline.ALGORITHMS, *preference.ALGORITHMS, *kto.ALGORITHMS, *ppo_trainer.ALGORITHMS, *trl.ALGORITHMS)}
"""Every algorithm by name, in the order tables and sweeps list them."""


def check_algorithm(algorithm: str, cfg) -> str:
    """Validate the algorithm with finetune's settings `cfg`; return the sampling strategy to use."""
    if algorithm not in ALGORITHMS:
        raise AlolError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}.")
    spec = ALGORITHMS[algorithm]
    if spec.check is not None:
        spec.check(cfg)
    if spec.clipped and cfg.ppo_clip <= 0:
        raise AlolError(f"{algorithm} needs finetune.ppo_clip > 0 (got {cfg.ppo_clip}): with 0 every ratio is "
                        "clamped to exactly 1. Use a_lol_ref_free for a ratio-free run.")
    strategy = spec.strategy if cfg.sampling_strategy == "auto" else cfg.sampling_strategy
    if strategy not in spec.strategies:
        # a plan drawn for another signal (or the pairs' rows for an offline loss) trains on the wrong rows
        raise AlolError(f"finetune.sampling_strategy {strategy!r} does not fit {algorithm}; valid: auto "
                        f"({spec.strategy}), {', '.join(spec.strategies)}.")
    return strategy
