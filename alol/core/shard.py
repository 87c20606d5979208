"""Data-parallel inference: rows cut into fixed blocks, blocks dealt to processes, results gathered.

Generation, the reference pass and reward scoring all go through `map_blocks`. The blocks are the
same whatever the number of processes (block b runs on process b mod N), so every row is computed
in exactly the batch it would be in with one process: the tables a stage writes do not depend on
how many processes wrote them.
"""

from __future__ import annotations

from typing import Callable, Sequence

from alol.core.device import state
from alol.core.errors import AlolError


def map_blocks(fn: Callable[[int, list[int]], Sequence], order: Sequence[int], block_size: int,
               description: str | None = None, local: bool = False) -> list:
    """Results of `fn(block_number, row_indices)` (one per index) for every row, in row-index order.

    `order` lists the row indices 0..n-1 in the order they are cut into blocks (e.g. sorted by
    length). Every process returns the full list. An AlolError in any process is raised in all.
    local=True: this process computes every block of its own rows (rows that differ per process,
    like a TRL trainer's local completions); no exchange with the others."""
    from accelerate.utils import gather_object

    proc = state()
    n, order = len(order), list(order)
    blocks = [order[i:i + block_size] for i in range(0, n, max(block_size, 1))]
    if local:
        return _local(fn, blocks, n)
    mine = list(range(proc.process_index, len(blocks), proc.num_processes))
    done, failure = [], None
    with progress(description, sum(len(blocks[b]) for b in mine)) as advance:
        for b in mine:
            try:
                values = list(fn(b, blocks[b]))
            except AlolError as err:  # the other processes must not wait forever in the gather
                failure = str(err)
                break
            if len(values) != len(blocks[b]):
                raise RuntimeError(f"{fn.__name__} returned {len(values)} results for {len(blocks[b])} rows")
            done.append((blocks[b], values))
            advance(len(blocks[b]))
    if proc.num_processes > 1:
        failures = [f for f in gather_object([failure]) if f is not None]
        if failures:
            raise AlolError(failures[0])
        done = gather_object(done)
    elif failure is not None:
        raise AlolError(failure)
    out: list = [None] * n
    for rows, values in done:
        for i, value in zip(rows, values):
            out[i] = value
    return out


def _local(fn, blocks: list[list[int]], n: int) -> list:
    out: list = [None] * n
    for b, rows in enumerate(blocks):
        for i, value in zip(rows, fn(b, rows)):
            out[i] = value
    return out


class progress:
    """A rich progress bar (rows done, rate, ETA) on the main process; nothing elsewhere."""

    def __init__(self, description: str | None, total: int):
        self.description, self.total, self.bar = description, total, None

    def __enter__(self):
        if self.description and state().is_main_process and self.total:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.text import Text

            from alol.core.stage import console

            class Rate(ProgressColumn):
                def render(self, task):
                    return Text(f"{task.completed / task.elapsed if task.elapsed else 0:.1f} rows/s")  # the mean

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        return self.advance

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, rows)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
