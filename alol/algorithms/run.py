"""One finetune run as every family reads it (the stage's parsed settings and input paths), the
plan-driven training that the offline and preference families share, and the validator (replies to
the validation prompts scored with the task reward) that they and PPO validate with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from alol.algorithms.record import Algorithm
from alol.core.errors import AlolError

PROMPT_COLUMNS = ["prompt_id", "prompt", "context"]
"""What validation and rollouts read of the annotated tables."""


@dataclasses.dataclass
class Run:
    """The finetune stage's inputs: stages/finetune.py fills it, `algorithm.family.train(run)` reads it."""

    params: dict
    """The loaded params.yaml (for the task's reward)."""
    algorithm: Algorithm
    strategy: str
    """The sampling strategy (alol.algorithms.check_algorithm): the plan it trains on, or "online"."""
    base: Any
    cfg: Any
    """`finetune:` (alol.algorithms.finetune.FinetuneConfig): each family reads its own part."""
    model_cfg: Any
    tokenizer: Any
    reference: Path
    advantages: Path
    plans: Path
    results: Path
    pairs: Path | None = None
    annotated: Path | None = None
    assets: Path | None = None
    checkpoint_dir: Path | None = None
    reward_loader: Any = None
    """() -> the task's reward (alol.rewards.annotate.load_reward on these params and folders), given by the
    stage when --annotated and --assets are: the stage, not the families, builds the reward, so only the
    stages that score depend on the reward's assets."""
    checkpoint: Any = None
    """The plan's resumable checkpoint (set by train_on_plan): removed by `finish` once the policy is saved."""

    def live(self, resume: bool = False):
        """The DVCLive log in results/live on the main process, None elsewhere."""
        from alol.core.device import is_main_process
        from alol.core.live import LiveLog

        return LiveLog(self.results / "live", resume=resume) if is_main_process() else None

    def reward(self, missing: str):
        """The task's reward; `missing`: the error when --annotated / --assets were not given."""
        if self.reward_loader is None:
            raise AlolError(missing)
        return self.reward_loader()

    def prompts(self, split: str):
        from alol.core.io import read_parquet

        return read_parquet(self.annotated / f"{split}.parquet", PROMPT_COLUMNS)

    def validator(self, reward):
        return make_validator(reward, self.tokenizer, self.prompts("validation"), self.cfg,
                              self.base.max_prompt_tokens, self.base.seed)

    def finish(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.remove()


def train_on_plan(run: Run, rows, extras: dict, loss_fn, step_scale: float = 1.0):
    """Train from the reference on the plan of `run.strategy` (rows, extras: the family's encoded rows).
    `step_scale`: the plan's steps / plan.steps (validation keeps its pace per run). Returns (model, summary)."""
    import torch

    from alol.core.io import read_parquet
    from alol.training.plans import select_plan
    from alol.training.loop import Checkpoint, folder_digest, run_fingerprint, train
    from alol.training.reference import load_trainable
    from alol.training.summary import summarize_loop

    cfg = run.cfg
    plan = select_plan(read_parquet(run.plans, ["strategy", "step", "row"]), run.strategy)
    torch.manual_seed(run.base.seed)
    model = load_trainable(run.reference, run.model_cfg)
    # validate as often per run as the authors (their A-LoL runs scale the interval with the steps)
    train_cfg = dataclasses.replace(cfg.train, eval_every=validation_interval(cfg.train.eval_every, step_scale))
    run.checkpoint = Checkpoint(run.checkpoint_dir, run_fingerprint(
        {"algorithm": run.algorithm.name, "finetune": cfg, "model": run.model_cfg,
         "reference": folder_digest(run.reference)}, train_cfg, plan, rows, extras))
    validate = None
    if train_cfg.eval_every:
        validate = run.validator(run.reward(
            "finetune.train.eval_every > 0 validates with the task reward: pass --annotated and --assets (as "
            "dvc.yaml does), or set eval_every: 0."))
    live = run.live(resume=run.checkpoint.resumable)
    model = train(model, rows, extras, plan, loss_fn, train_cfg, run.tokenizer.pad_token_id, run.checkpoint, live,
                  validate)
    if live is None:
        return model, {}
    live.close()
    return model, summarize_loop(live.history)


def rollout_start(run: Run):
    """What the online families start from: the train prompts, the task's reward, the trainable reference."""
    import torch

    from alol.training.reference import load_trainable

    missing = (f"{run.algorithm.name} samples replies to the train prompts and scores them with the task reward: "
               "pass --annotated and --assets (as dvc.yaml does).")
    if run.annotated is None or run.assets is None:
        raise AlolError(missing)
    frame = run.prompts("train")
    reward = run.reward(missing)
    torch.manual_seed(run.base.seed)
    return frame, reward, load_trainable(run.reference, run.model_cfg)


def validation_interval(eval_every: int, step_scale: float) -> int:
    """Steps between validations: finetune.train.eval_every scaled like the run's step count (the
    authors' A-LoL runs: 9000 x positive fraction steps, validation every 900 x positive fraction),
    so every strategy validates about as often per run. 0 stays 0 (off)."""
    return max(1, round(eval_every * step_scale)) if eval_every > 0 else 0


def make_validator(reward, tokenizer, validation, cfg, max_prompt_tokens: int, seed: int):
    """validate(model) -> mean `cfg.validation_metric` (finetune's settings) of its replies to the first
    `cfg.validation_rows` prompts of the `validation` table."""
    import numpy as np

    from alol.evaluation.replies import generate_and_score

    frame = validation.head(cfg.validation_rows)
    if cfg.validation_metric not in reward.columns:
        raise AlolError(f"finetune.validation_metric {cfg.validation_metric!r} is not a reward column; valid: "
                        f"{', '.join(reward.columns)}.")

    def validate(model) -> float:
        replies = generate_and_score(model, tokenizer, frame, reward, cfg.validation_generation, max_prompt_tokens,
                                     seed, "validation", "validation replies")
        return float(np.mean(replies.scores[cfg.validation_metric]))

    return validate
