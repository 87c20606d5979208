"""What every stage command shares: user errors printed plainly, with a non-zero exit.

Training curves (DVCLive) are alol/core/live.py's."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, NoReturn

from rich.console import Console
from rich.markup import escape

from alol.core.errors import AlolError

console = Console(stderr=True, soft_wrap=True)  # never break a path across lines
COMMAND: str | None = None
"""The command as the user typed it, for error messages: the `alol` command sets it (`alol clean`);
None: the script's name (`clean` for `python stages/clean.py`)."""


def exit_with_error(err: AlolError, where: str = "") -> NoReturn:
    """The one way a command reports a user error: `error (<command>)<where>: <message>` in red on
    stderr, no traceback, exit status 1. Every stage (through `stage`), alol.compare and alol/cli.py use it."""
    command = COMMAND or Path(sys.argv[0]).stem
    console.print(f"[bold red]error[/] ({command}){where}: {escape(str(err))}", highlight=False)
    sys.exit(1)


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
            if "DVC_STAGE" in os.environ:  # run by DVC, from the dvc.yaml in the current folder
                # imported by name, so not a code dep of every stage (alol/pipeline.py's closure follows
                # static imports): the check can stop a stage but never changes what it writes
                importlib.import_module("alol.pipeline").check_rendered(Path.cwd())
            result = fn(*args, **kwargs)
        except AlolError as err:
            exit_with_error(err, f" [process {proc.process_index}]" if proc.num_processes > 1 else "")
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
