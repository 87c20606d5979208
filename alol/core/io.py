"""Atomic output writing: a failed stage never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import polars as pl


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories. The temporary lives in the same directory so the final
    rename is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written to {path}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(frame: pl.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def write_json(data: object, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_all(outputs: dict[str | Path, object]) -> None:
    """Write a stage's outputs together: each to a temporary sibling first (a DataFrame as Parquet,
    bytes as they are, anything else as JSON), then all renamed into place. A failure in any write leaves
    none of them."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in outputs.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staged.append((tmp, path))
            if isinstance(data, pl.DataFrame):
                data.write_parquet(tmp)
            elif isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(json.dumps(data, indent=2) + "\n")
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def read_parquet(path: str | Path, required: list[str] = ()) -> pl.DataFrame:
    """Read a stage's input table, checking that the columns it needs are there."""
    from alol.core.errors import AlolError

    path = Path(path)
    if not path.exists():
        raise AlolError(f"{path}: no such file. Run the stage that writes it first (`dvc repro`).")
    frame = pl.read_parquet(path)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise AlolError(f"{path}: missing column(s) {missing}; it has {frame.columns}.")
    return frame
