"""What every stage command shares: user errors printed plainly, with a non-zero exit."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from alol.core.errors import AlolError

console = Console(stderr=True, soft_wrap=True)  # never break a path across lines


def stage(fn: Callable) -> Callable:
    """Wrap a stage's main function: AlolError -> red message and exit 1, timing on success."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        # peft still calls a transformers property deprecated for v6; nothing for a user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        from alol.core.device import check_processes, state

        start = time.perf_counter()
        proc = state()  # joins the other processes under accelerate launch / torchrun
        try:
            check_processes()
            result = fn(*args, **kwargs)
        except AlolError as err:
            rank = f" [process {proc.process_index}]" if proc.num_processes > 1 else ""
            console.print(f"[bold red]error[/] ({Path(sys.argv[0]).stem}){rank}: {escape(str(err))}", highlight=False)
            sys.exit(1)
        if proc.is_main_process:
            processes = f" on {proc.num_processes} processes" if proc.num_processes > 1 else ""
            memory = ""
            if proc.device.type == "cuda":
                import torch

                memory = f", peak GPU memory {torch.cuda.max_memory_allocated(proc.device) / 2**20:.0f} MiB"
            console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s{processes}{memory}")
        proc.destroy_process_group()
        return result

    if not fn.__doc__:  # `--help` shows the stage module's first paragraph
        module_doc = sys.modules[fn.__module__].__doc__ or ""
        wrapper.__doc__ = " ".join(module_doc.strip().split("\n\n")[0].split())
    return wrapper


def repair_after_kill(folder: Path) -> None:
    """Mend what a SIGKILL during a DVCLive write leaves: DVCLive rewrites metrics.json in place (a
    truncated one stops its resume) and appends curve rows (the last may be cut)."""
    summary = folder / "metrics.json"
    if summary.exists():
        try:
            json.loads(summary.read_text())
        except ValueError:  # the summary is rewritten in full at the next step
            summary.unlink()
    for curve in folder.glob("plots/metrics/**/*.tsv"):
        data = curve.read_bytes()
        if not data.endswith(b"\n"):
            whole = data[:data.rfind(b"\n") + 1]
            if whole:
                curve.write_bytes(whole)
            else:  # not even the header: DVCLive writes a new one
                curve.unlink()


class LiveLog:
    """Training curves through DVCLive inside the stage's own output folder (no dvc.yaml edits)."""

    def __init__(self, folder: Path, resume: bool = False):
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        if resume:
            repair_after_kill(Path(folder))
        try:
            self.live = Live(str(folder), dvcyaml=False, save_dvc_exp=False, resume=resume)
        except SCMError as err:  # DVCLive reads HEAD, which a fresh `git init` does not have yet
            raise AlolError(f"DVCLive cannot log to {folder}: {err}. Commit once (`git add -A && git commit`) "
                            "and rerun.") from err
        self.history: list[dict] = []

    def __call__(self, step: int, metrics: dict) -> None:
        self.live.step = step
        for key, value in metrics.items():
            self.live.log_metric(key, value)
        self.live.next_step()
        self.history.append({"step": step, **metrics})
        shown = {k: round(v, 4) for k, v in metrics.items() if k in ("loss", "grad_norm", "tokens_per_second")}
        console.print(f"step {step}: {shown}", highlight=False)

    def close(self) -> None:
        self.live.end()
