"""Periodic validation while training, and the best weights it keeps: shared by the offline loop
(alol.training.loop) and the PPO trainer (alol.algorithms.ppo_trainer). The validator itself (replies
scored with the task reward) is the finetune stage's: alol.algorithms.run.make_validator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

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

    def save(self, folder: Path) -> dict:
        if self.state is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.state.items()}, str(folder / "best.safetensors"))
        return {"best_score": self.score if self.state is not None else None, "best_step": self.step}

    def load(self, folder: Path, saved: dict) -> None:
        if saved.get("best_score") is not None:
            from safetensors.torch import load_file

            self.score, self.step = saved["best_score"], saved["best_step"]
            self.state = load_file(str(folder / "best.safetensors"))


class Validation:
    """Validate at step 0, every `every` steps and at the last (`steps`), log the score, keep the best
    weights; at the end, restore them unless the last step's won. Every call is collective: the
    validation prompts are shared out, every process gets the score."""

    def __init__(self, validate: Validator, every: int, steps: int, accelerator, log=None):
        self.validate, self.every, self.steps, self.accelerator, self.log = validate, every, steps, accelerator, log
        self.best = BestWeights()
        self.main = log is not None and accelerator.is_main_process

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps

    def __call__(self, step: int, policy, weights) -> None:
        """Score `policy`'s replies; `weights` (the policy, or the module around it) are what is kept."""
        score = self.validate(policy)
        kept = self.best.offer(weights, score, step)
        if self.main:
            self.log(step, {"validation/reward": score, "validation/best": self.best.score})
            self.accelerator.print(f"validation at step {step}: {score:.4f}" + (" (best so far)" if kept else ""))

    def finish(self, weights) -> None:
        if self.best.state is not None and self.best.step != self.steps:
            self.best.restore(weights)
            self.accelerator.print(f"kept the weights of step {self.best.step} (validation reward {self.best.score:.4f})")
