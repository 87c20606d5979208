"""The training loop shared by every algorithm: Accelerate, a fixed plan, accumulation-invariant.

    accelerate launch --num_processes 2 stages/finetune.py ...   # DDP / ZeRO / FSDP from its config

Each optimizer step trains on `batch_size` rows of the plan. A process takes its contiguous
share, groups it by length into micro-batches, and back-propagates sum(per-example loss) /
(rows per process); DDP averages across processes. So the update is the mean over the step's
rows however it is split (micro-batch x accumulation x processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from alol.errors import AlolError
from alol.sequences import Example, collate, length_grouped


@dataclasses.dataclass
class TrainConfig:
    """Optimiser, schedule and batching of a training stage."""

    learning_rate: float = 2.0e-5
    """Peak AdamW learning rate."""
    lr_schedule: Literal["linear", "constant", "cosine"] = "linear"
    """Decay after warmup (the reference: linear for small models, constant for QLoRA)."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_eps: float = 1.0e-8
    """AdamW epsilon (the reference uses 1e-6 for QLoRA)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0: off)."""
    batch_size: int = 16
    """Rows per optimizer step, over all processes (the reference: 8 x accumulation 2)."""
    micro_batch_size: int = 8
    """Rows per forward/backward; accumulation = batch_size / (micro_batch_size x processes)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: never)."""
    eval_every: int = 0
    """Validate (generate + reward) every this many steps and keep the best weights, the starting
    point's score included (0: off; generation is slow on CPU)."""


def grad_accumulation(cfg: TrainConfig, processes: int) -> int:
    per_process, rest = divmod(cfg.batch_size, processes)
    accum, rest2 = divmod(per_process, cfg.micro_batch_size)
    if rest or rest2 or accum == 0:
        raise AlolError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size "
                        f"{cfg.micro_batch_size} x {processes} process(es); change one of them in params.yaml.")
    return accum


def make_optimizer(model, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AlolError("the model has no trainable parameters; check model.mode.")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=total_steps)
    return optimizer, scheduler


LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
Validator = Callable[[torch.nn.Module], float]


class BestWeights:
    """The trainable weights with the highest validation score so far (kept on the CPU)."""

    def __init__(self):
        self.score, self.step, self.state = -math.inf, None, None

    def offer(self, model, score: float, step: int) -> bool:
        if score <= self.score:
            return False
        self.score, self.step = score, step
        self.state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        return True

    def restore(self, model) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.state:
                    param.copy_(self.state[name])


def train(model, rows: list[list[Example]], extras: dict[str, list], plan: np.ndarray, loss_fn: LossFn,
          cfg: TrainConfig, pad_id: int, checkpoint_dir: Path | None = None,
          log: Callable[[int, dict], None] | None = None, validate: Validator | None = None):
    """Run `plan` (steps x batch_size row indices). Each row is a list of sequences (1 for offline
    algorithms, 2+ for preference ones); `extras` holds per-row values the loss needs. With
    `validate` and `cfg.eval_every`, the best-scoring weights (the start's included) are kept.
    Returns the unwrapped model."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    steps, batch_size = plan.shape
    if batch_size != cfg.batch_size:
        raise AlolError(f"the plan has {batch_size} rows per step but batch_size is {cfg.batch_size}; "
                        "rerun the stage that makes the plan (dvc repro).")
    grad_accumulation(cfg, accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = 0
    if checkpoint_dir is not None and (checkpoint_dir / "step.json").exists():
        accelerator.load_state(str(checkpoint_dir))
        start = json.loads((checkpoint_dir / "step.json").read_text())["step"]
        accelerator.print(f"resumed from {checkpoint_dir} at step {start}")
    lengths = [sum(e.length for e in row) for row in rows]
    per_process = cfg.batch_size // accelerator.num_processes
    rank = accelerator.process_index
    best = BestWeights() if validate is not None and cfg.eval_every else None

    def validation(step: int) -> None:  # every process scores the same prompts: no broadcast needed
        score = validate(accelerator.unwrap_model(model))
        model.train()
        kept = best.offer(model, score, step)
        if log is not None and accelerator.is_main_process:
            log(step, {"validation/reward": score, "validation/best": best.score})
            accelerator.print(f"validation at step {step}: {score:.4f}" + (" (best so far)" if kept else ""))

    if best is not None and start == 0:  # after a resume the best is tracked from the resume point
        validation(0)
    model.train()
    for step in range(start, steps):
        tic = time.perf_counter()
        mine = [int(i) for i in plan[step, rank * per_process:(rank + 1) * per_process]]
        groups = length_grouped(mine, lengths, cfg.micro_batch_size)
        totals, tokens, loss_sum = {}, 0, 0.0
        for i, group in enumerate(groups):
            sequences = [e for r in group for e in rows[r]]
            batch = collate(sequences, pad_id, {k: [v[r] for r in group] for k, v in extras.items()})
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            last = i == len(groups) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                per_example, stats = loss_fn(model, batch)
                loss = per_example.sum() / per_process
                accelerator.backward(loss)
            loss_sum += loss.item()
            tokens += int(batch["attention_mask"].sum())
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value * len(group) / per_process
        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - tic
        if log is not None and accelerator.is_main_process:
            log(step + 1, {"loss": loss_sum, "grad_norm": float(grad_norm), "learning_rate": scheduler.get_last_lr()[0],
                           "tokens_per_second": tokens * accelerator.num_processes / seconds,
                           "step_seconds": seconds, **totals})
        if best is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == steps):
            validation(step + 1)
        if checkpoint_dir is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(accelerator, checkpoint_dir, step + 1)
    accelerator.wait_for_everyone()
    if best is not None and best.state is not None and best.step != steps:
        best.restore(model)
        accelerator.print(f"kept the weights of step {best.step} (validation reward {best.score:.4f})")
    return accelerator.unwrap_model(model)


def save_checkpoint(accelerator, checkpoint_dir: Path, step: int) -> None:
    """Write the full training state to a temporary folder, then swap it in (a kill never leaves half)."""
    tmp = checkpoint_dir.with_name(checkpoint_dir.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        old = checkpoint_dir.with_name(checkpoint_dir.name + ".old")
        if checkpoint_dir.exists():
            checkpoint_dir.rename(old)
        tmp.rename(checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def summarize(history: list[dict]) -> dict:
    """Run-level metrics from the per-step log: steps, first/final loss, tokens/s, seconds."""
    validations = [h for h in history if "validation/reward" in h]
    history = [h for h in history if "loss" in h]
    if not history:
        return {"steps": 0}
    seconds = sum(h["step_seconds"] for h in history)
    tokens = sum(h["tokens_per_second"] * h["step_seconds"] for h in history)
    return {"steps": history[-1]["step"], "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
            "tokens_per_second": tokens / seconds, "train_seconds": seconds,
            **({"best_validation_step": max(validations, key=lambda h: h["validation/reward"])["step"],
                "best_validation_reward": max(h["validation/reward"] for h in validations)} if validations else {})}
