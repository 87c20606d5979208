"""Run-level metrics from a training log's rows (LiveLog.history), for every family: one function,
each family naming its fields (so summary.json keeps its keys and their order)."""

from __future__ import annotations

from typing import Any, Callable

Field = Callable[[list[dict]], Any]


def summarize(history: list[dict], step_key: str, **fields: Field) -> dict:
    """{"steps": the last training row's step, each of `fields` computed from the training rows (the rows
    that have `step_key`), the best validation (if any)}; no training row: {"steps": 0}."""
    validations = [h for h in history if "validation/reward" in h]
    rows = [h for h in history if step_key in h]
    if not rows:
        return {"steps": 0}
    out = {"steps": rows[-1]["step"], **{name: field(rows) for name, field in fields.items()}}
    if validations:
        out["best_validation_step"] = max(validations, key=lambda h: h["validation/reward"])["step"]
        out["best_validation_reward"] = max(h["validation/reward"] for h in validations)
    return out


def first(key: str) -> Field:
    return lambda rows: rows[0].get(key)


def last(key: str) -> Field:
    return lambda rows: rows[-1].get(key)


def total(key: str) -> Field:
    return lambda rows: sum(h[key] for h in rows)


def weighted_mean(key: str, weight: str) -> Field:
    """The mean of `key` weighted by `weight` (a rate over its seconds: the run's overall rate)."""
    return lambda rows: sum(h[key] * h[weight] for h in rows) / sum(h[weight] for h in rows)


def summarize_loop(history: list[dict]) -> dict:
    """The training loop's run (alol.training.loop.train): steps, first/final loss, tokens/s, seconds."""
    return summarize(history, "loss", first_loss=first("loss"), final_loss=last("loss"),
                     tokens_per_second=weighted_mean("tokens_per_second", "step_seconds"),
                     train_seconds=total("step_seconds"))
