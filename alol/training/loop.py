"""The training loop shared by every algorithm: Accelerate, a fixed plan, accumulation-invariant.

    accelerate launch --num_processes 2 stages/finetune.py ...   # DDP / ZeRO / FSDP from its config

Each optimizer step trains on `batch_size` rows of the plan. A process takes its contiguous
share and groups it by length into equal micro-batches; Accelerate's gradient accumulation
averages them and DDP averages across processes. So the update is the mean over the step's rows
however it is split (micro-batch x accumulation x processes), and the LR schedule advances once
per optimizer step. Only the main process logs; checkpoints are written collectively.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from alol.core.errors import AlolError
from alol.models.logprobs import Example, collate, length_grouped
from alol.training.validation import BestWeights, Validation, Validator


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    """Optimiser, schedule and batching of a training stage. learning_rate, batch_size and
    micro_batch_size have no class default: each section that trains sets its own (its dataclass's
    default, which a params file changes key by key)."""

    learning_rate: float
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
    batch_size: int
    """Rows per optimizer step, over all processes (the reference: 8 x accumulation 2)."""
    micro_batch_size: int
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


def make_accelerator(cfg: TrainConfig):
    """(Accelerator, accumulation steps) for data-parallel training with `cfg`'s global batch.

    split_batches: a step's rows are the global batch, so the schedule advances once per optimizer step
    whatever the number of processes; accumulation is Accelerate's (no_sync, loss scaling, when to step)."""
    from accelerate import Accelerator, DataLoaderConfiguration

    from alol.core.device import check_data_parallel, state

    check_data_parallel()
    accumulation = grad_accumulation(cfg, state().num_processes)
    accelerator = Accelerator(gradient_accumulation_steps=accumulation,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    check_data_parallel(accelerator.distributed_type)
    return accelerator, accumulation


LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


def run_fingerprint(settings: dict, cfg: TrainConfig, plan: np.ndarray, rows: list[list[Example]],
                    extras: dict[str, list]) -> str:
    """A hash of everything that decides the trained weights: the stage's settings (algorithm, loss,
    model), the optimiser, the plan and the rows with their columns. A checkpoint resumes only the
    run with the same hash."""
    import hashlib

    digest = hashlib.sha256()
    optimiser = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"}
    digest.update(json.dumps([settings, optimiser], sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(plan, dtype=np.int64).tobytes())
    digest.update(json.dumps([[(e.prompt_ids, e.completion_ids) for e in row] for row in rows]).encode())
    digest.update(json.dumps({k: np.asarray(v, dtype=object).tolist() for k, v in sorted(extras.items())},
                             default=float).encode())
    return digest.hexdigest()[:16]


def folder_digest(folder: str | Path) -> str:
    """A hash of a model folder's weights and configs: the starting weights belong to a run's identity."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*")):
        if path.suffix in (".safetensors", ".json") and path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


class Checkpoint:
    """The resumable state of one training run in `folder`. A checkpoint left by another run (other
    algorithm, params, data or plan) is discarded with a message, never resumed."""

    def __init__(self, folder: Path | None, fingerprint: str):
        from alol.core.device import state

        self.folder, self.fingerprint, self.saved = folder, fingerprint, None
        if folder is None:
            return
        marker = folder / "step.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.saved = saved
            elif state().is_main_process:
                state().print(f"discarding the checkpoint in {folder}: it is from another run (fingerprint "
                              f"{saved.get('fingerprint')}, this run {fingerprint}); starting from step 0.")
                shutil.rmtree(folder)
        state().wait_for_everyone()  # nobody reads the folder while the main process may delete it

    @property
    def resumable(self) -> bool:
        return self.saved is not None

    @property
    def history(self) -> list[dict]:
        """The rows logged up to the saved step: a resumed run's summary covers the whole run (its DVCLive
        folder is a non-persisted output that DVC deletes before a rerun)."""
        return self.saved.get("history", []) if self.saved is not None else []

    def save(self, accelerator, step: int, best: BestWeights | None, history: list[dict] | None = None) -> None:
        """Write the full training state to a temporary folder, then swap it in (a kill never leaves half).
        Collective: every process writes its own RNG state; the main process writes the rest (with
        `history`, the rows logged so far)."""
        folder = self.folder
        tmp = folder.with_name(folder.name + ".tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            meta = {"step": step, "fingerprint": self.fingerprint, **(best.save(tmp) if best is not None else {}),
                    **({"history": history} if history is not None else {})}
            (tmp / "step.json").write_text(json.dumps(meta))
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        kill_at = os.environ.get("ALOL_KILL_AFTER_CHECKPOINT")  # tests: a SIGKILL at a chosen step
        if kill_at and int(kill_at) == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def remove(self) -> None:
        from alol.core.device import state

        if self.folder is not None and state().is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)


def train(model, rows: list[list[Example]], extras: dict[str, list], plan: np.ndarray, loss_fn: LossFn,
          cfg: TrainConfig, pad_id: int, checkpoint: Checkpoint | None = None,
          log: Callable[[int, dict], None] | None = None, validate: Validator | None = None):
    """Run `plan` (steps x batch_size row indices). Each row is a list of sequences (1 for offline
    algorithms, 2+ for preference ones); `extras` holds per-row values the loss needs. With
    `validate` and `cfg.eval_every`, the best-scoring weights (the start's included) are kept.
    `log` is called on the main process only; with a checkpoint, its `history` (a LiveLog's rows)
    travels in the checkpoint and is restored on resume. Returns the unwrapped model."""
    steps, batch_size = plan.shape
    if batch_size != cfg.batch_size:
        raise AlolError(f"the plan has {batch_size} rows per step but batch_size is {cfg.batch_size}; "
                        "rerun the stage that makes the plan (dvc repro).")
    accelerator, accumulation = make_accelerator(cfg)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    trainable = [p for p in model.parameters() if p.requires_grad]
    validation = Validation(validate, cfg.eval_every, steps, accelerator, log) if validate is not None \
        and cfg.eval_every else None
    main = log is not None and accelerator.is_main_process
    history = getattr(log, "history", None) if main else None  # what a checkpoint keeps of the log
    start = 0
    if checkpoint is not None and checkpoint.resumable:
        accelerator.load_state(str(checkpoint.folder))
        start = checkpoint.saved["step"]
        if validation is not None:
            validation.best.load(checkpoint.folder, checkpoint.saved)
        if history is not None:
            history[:0] = checkpoint.history  # the steps before the kill, ahead of those to come
        accelerator.print(f"resumed from {checkpoint.folder} at step {start}")
    lengths = [sum(e.length for e in row) for row in rows]
    per_process = cfg.batch_size // accelerator.num_processes
    rank = accelerator.process_index

    def validate_now(step: int) -> None:
        validation(step, accelerator.unwrap_model(model), accelerator.unwrap_model(model))
        model.train()

    if validation is not None and start == 0:  # the starting point competes too
        validate_now(0)
    model.train()
    for step in range(start, steps):
        tic = time.perf_counter()
        mine = [int(i) for i in plan[step, rank * per_process:(rank + 1) * per_process]]
        totals, tokens, grad_norm = {}, 0, None
        for group in length_grouped(mine, lengths, cfg.micro_batch_size):  # `accumulation` equal groups
            sequences = [e for r in group for e in rows[r]]
            batch = collate(sequences, pad_id, {k: [v[r] for r in group] for k, v in extras.items()})
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                per_example, stats = loss_fn(model, batch)
                # the backward divides by `accumulation`: the gradient is the mean over this process's
                # rows, and DDP's all-reduce makes it the mean over the step's rows
                accelerator.backward(per_example.mean())
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in {"loss": per_example.mean().item(), **stats}.items():
                totals[key] = totals.get(key, 0.0) + value / accumulation
            tokens += int(batch["attention_mask"].sum())
        names = sorted(totals)  # every process has the same keys: mean over processes = mean over rows
        means = accelerator.reduce(torch.tensor([totals[k] for k in names], device=accelerator.device), "mean")
        tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum"))
        seconds = time.perf_counter() - tic
        if main:
            log(step + 1, {**dict(zip(names, means.tolist())), "grad_norm": float(grad_norm),
                           "learning_rate": scheduler.get_last_lr()[0], "tokens_per_second": tokens / seconds,
                           "step_seconds": seconds})
        if validation is not None and validation.due(step + 1):
            validate_now(step + 1)
        if checkpoint is not None and checkpoint.folder is not None and cfg.checkpoint_every \
                and (step + 1) % cfg.checkpoint_every == 0:
            checkpoint.save(accelerator, step + 1, validation.best if validation is not None else None, history)
    accelerator.wait_for_everyone()
    if validation is not None:
        validation.finish(accelerator.unwrap_model(model))
    return accelerator.unwrap_model(model)
