"""Reward annotation of the clean splits, and the per-split reward distributions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.params import params_file
from alol.rewards import RewardFunction, evaluation_reward_configs, raw_reward, reward_configs
from alol.rewards.components import FrameColumns, RewardInputs

STATE_FILE = "reward_state.json"
TENSORS_FILE = "reward_state.safetensors"
"""The fitted components' arrays (a learned reward's head), when they have any. Its sha256 is in the
JSON state, so the stages that depend on reward_state.json see a change of either."""
EVALUATION_FILES = ("evaluation_reward_state.json", "evaluation_reward_state.safetensors")
"""The same two for evaluate.rewards, when it is set (annotate fits it beside the training reward)."""


def reward_inputs(frame: pl.DataFrame, split: str | None = None, stored_logits: list[float] | None = None,
                  completions: list[str] | None = None, candidate: int | None = None) -> RewardInputs:
    """The rows of a table to score: its replies (or `completions`, generated for its prompts) and
    every other column of each row (read only when a component asks for it). `stored_logits` and
    `stored_scores` (the `stored_score` column) only for the data's own replies (completions=None).
    `candidate`: k when `completions` are the data's own candidate k (else they are new text)."""
    own = completions is None
    return RewardInputs(frame["prompt"].to_list(), frame["completion"].to_list() if own else completions,
                        split=split, stored_logits=stored_logits,
                        stored_scores=frame["stored_score"].to_list() if own and "stored_score" in frame.columns
                        else None, candidate=0 if own else candidate,
                        columns=FrameColumns(frame.drop([c for c in ("prompt", "completion") if c in frame.columns])))


def load_reward(params: dict, assets: str | Path, annotated_dir: str | Path | None = None,
                evaluation: bool = False) -> RewardFunction:
    """The task's reward function (`evaluation`: evaluate's, evaluate.rewards where set); with
    `annotated_dir`, restored to the state annotate fitted."""
    reward, files = _unfitted(params, assets, evaluation)
    if annotated_dir is not None:
        path = Path(annotated_dir) / files[0]
        if not path.exists():
            raise AlolError(f"{path}: missing; run the annotate stage first.")
        state = json.loads(path.read_text())
        reward.load_state(state, _read_tensors(Path(annotated_dir), state, files))
    return reward


def _unfitted(params: dict, assets: str | Path, evaluation: bool) -> tuple[RewardFunction, tuple[str, str]]:
    """The reward as params state it, and the two files its fitted state lives in. (Not named load_reward:
    alol.pipeline gives a stage the reward's assets where its code calls that.)"""
    configs = evaluation_reward_configs(params) if evaluation else None
    files = (STATE_FILE, TENSORS_FILE) if configs is None else EVALUATION_FILES
    where = f"{params_file(params)}: {'rewards' if configs is None else 'evaluate.rewards'}"
    return RewardFunction(reward_configs(params) if configs is None else configs, assets, where), files


def _read_tensors(folder: Path, state: dict, files: tuple[str, str] = (STATE_FILE, TENSORS_FILE)) -> dict:
    import hashlib

    expected = state.get("tensors_sha256") if isinstance(state, dict) else None
    if expected is None:
        return {}
    path = folder / files[1]
    data = path.read_bytes() if path.exists() else b""
    if hashlib.sha256(data).hexdigest() != expected:
        raise AlolError(f"{path}: missing or not the file {folder / files[0]} was written with; rerun annotate "
                        "(`dvc repro -f annotate`).")
    from safetensors.torch import load

    return load(data)


def state_files(state: dict, tensors: dict, files: tuple[str, str] = (STATE_FILE, TENSORS_FILE)) -> dict:
    """{file name: JSON state or bytes} to write: the state, and the tensors as one safetensors file whose
    sha256 the state records."""
    if not tensors:
        return {files[0]: state}
    import hashlib

    from safetensors.torch import save

    data = save({key: value.contiguous() for key, value in sorted(tensors.items())})
    return {files[0]: {**state, "tensors_sha256": hashlib.sha256(data).hexdigest()}, files[1]: data}


def fit_evaluation_reward(params: dict, assets: str | Path, splits: dict[str, pl.DataFrame]) -> tuple[dict, dict]:
    """evaluate.rewards fitted as the training reward is (on train, selecting on validation), on the rows it can
    score: ({file name: state or bytes}, its stand-ins' reports); ({}, {}) when evaluation uses `rewards:`."""
    if evaluation_reward_configs(params) is None:
        return {}, {}
    reward, _ = _unfitted(params, assets, evaluation=True)
    state = _fit(reward, {name: frame.filter(pl.Series(~reward.unscorable(frame))) for name, frame in splits.items()})
    return state_files(state, reward.tensors(), EVALUATION_FILES), _reports(state)


def _fit(reward: RewardFunction, splits: dict[str, pl.DataFrame]) -> dict:
    """The reward fitted on train, selecting on validation where a component selects: its state."""
    heldout = reward_inputs(splits["validation"], "validation") if "validation" in splits else None
    return reward.fit(reward_inputs(splits["train"], "train"), heldout)


def _reports(state: dict) -> dict:
    """A learned stand-in's fit, selection and held-out quality (alol/rewards/learned.py), per component."""
    return {name: {k: v for k, v in part.items() if k != "transform"} for name, part in state.items()
            if isinstance(part, dict) and "report" in part}


def distribution(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.1, 0.5, 0.9]) if len(values) else [float("nan")] * 3
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(np.min(values)),
            "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "max": float(np.max(values))}


def annotate_splits(splits: dict[str, pl.DataFrame], reward: RewardFunction, sources: dict[str, str],
                    task) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """Drop the rows a component cannot score (a missing score), fit the reward on train (selecting on
    validation where a component selects), score every split of `task` (its record: alol.tasks.TASKS).
    Returns (tables, stats, {file name: the fitted state, or the bytes of its arrays})."""
    dropped = {}
    for name, frame in splits.items():
        missing = reward.unscorable(frame)
        if missing.any():
            dropped[name] = int(missing.sum())
            splits = {**splits, name: frame.filter(pl.Series(~missing))}
            if splits[name].is_empty():
                raise AlolError(f"{sources[name]}: no row of the {name} split has the reward's score column; "
                                f"check clean.keep and rewards ({reward.where}).")
    state = _fit(reward, splits)
    files = state_files(state, reward.tensors())
    out, stats = {}, {}
    if dropped:
        stats["dropped_missing_score"] = dropped
    if learned := _reports(state):
        stats["stand_in"] = learned
    for name, frame in splits.items():
        ids = frame["prompt_id"].to_list()
        logits = _stored(frame, 0, task)
        scores = reward(reward_inputs(frame, name, logits), source=sources[name], row_ids=ids)
        out[name] = frame.with_columns(*(pl.Series(col, values, dtype=pl.Float64) for col, values in scores.items()))
        stats[name] = {col: distribution(values) for col, values in scores.items()}
        if task.provides("candidates", frame):  # every candidate's reward (pairs, all_priority) and raw reward (PRO)
            n = frame["candidates"].list.len().min()
            per = [scores] + [
                reward(reward_inputs(frame, name, _stored(frame, k, task), [c[k] for c in frame["candidates"].to_list()],
                                     candidate=k), source=f"{sources[name]} (candidate {k})", row_ids=ids)
                for k in range(1, n)]
            out[name] = out[name].with_columns(
                pl.Series("candidate_rewards", np.stack([s["reward"] for s in per], axis=1).tolist(),
                          dtype=pl.List(pl.Float64)),
                pl.Series("candidate_raw_rewards", np.stack([raw_reward(s) for s in per], axis=1).tolist(),
                          dtype=pl.List(pl.Float64)))
    return out, stats, files


def _stored(frame: pl.DataFrame, k: int, task) -> list[float] | None:
    if not task.provides("candidate_logits"):
        return None
    return [logits[k] for logits in frame["candidate_logits"].to_list()]
