"""The Task record and the check every canonical table passes after its task's reader.

A canonical table is one split of a task: one row per (prompt, reply) with the REQUIRED columns,
plus the optional columns the task declares (its record's `optional_columns`, with their dtypes).
Later stages ask the record which optional columns a task provides (`Task.provides`) instead of
testing a table's column names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import polars as pl

from alol.core.errors import AlolError

SPLITS = ("train", "validation", "test")
"""The canonical splits every task's build returns."""
# Every task's tables have these, never null (the order is the one the readers write).
REQUIRED = {"prompt_id": pl.String, "group_id": pl.String, "prompt": pl.String, "completion": pl.String,
            "context": pl.String}
MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
"""A chat (the dataset task's `messages`): what the chat template renders into the prompt."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One `task:` value: where its data comes from and how it becomes the canonical tables."""

    name: str
    """The `task:` value in params.yaml."""
    config: type
    """The dataclass of its `clean:` section."""
    fetch: Callable[..., dict]
    """fetch(cfg: DownloadConfig, out: Path, work: Path) -> manifest: the download stage. Writes the
    task's assets under `out` (an existing, empty folder), `work` is scratch space."""
    build: Callable[..., tuple[dict[str, pl.DataFrame], dict, dict[str, pl.DataFrame]]]
    """build(assets: Path, cfg: <config>, base: BaseConfig) -> (splits, stats, extra_tables): the clean
    stage. `splits` maps train / validation / test to canonical tables, `stats` is
    results/clean/stats.json, `extra_tables` are written next to the splits as <name>.parquet."""
    optional_columns: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The columns its tables carry besides REQUIRED, name -> polars dtype. A column not declared here
    (or of another dtype) fails the clean stage."""
    asset_deps: tuple[str, ...] = ()
    """The folders under data/assets its clean stage reads (the stage's DVC deps)."""
    config_asset_deps: Callable[[Any], tuple[str, ...]] | None = None
    """More asset folders read only with some clean settings: f(clean config) -> folder names."""
    sometimes: tuple[str, ...] = ()
    """Optional columns present only with some clean settings or in some splits (the dataset task's `noise`:
    the train split with clean.noise on); every other declared column is in every split."""
    config_columns: Callable[[Any], dict[str, Any]] | None = None
    """More optional columns with some clean settings: f(clean config) -> name -> dtype (None: any dtype,
    the data's own, e.g. the dataset task's `keep` columns). Always present when declared."""
    data_deps: Callable[[Any], tuple[str, ...]] | None = None
    """Paths outside data/assets its clean stage reads (the dataset task's local `source`): f(clean config)
    -> paths relative to the pipeline's folder (DVC deps)."""
    candidates_ranked: bool = False
    """Candidate 0 is the data's own preferred reply: preference pairs keep the data's order (the dataset
    task's chosen / rejected) instead of being ordered by the reward (hh's)."""
    extra_tables: tuple[str, ...] = ()
    """The names of the extra tables its build returns (data/clean/<name>.parquet, DVC outs of clean)."""
    reads_base: bool = True
    """Whether its build reads `base:` (seed, token limits): a DVC param of its clean stage. hh and reddit
    read no base setting, so a new base.seed does not rerun their clean."""
    disjoint_groups: bool = True
    """The task splits by group_id, so a group in two splits is a bug the check reports. False for tasks
    that keep their dataset's published splits, which are not made by group (the paper's setup)."""

    def provides(self, column: str, frame: pl.DataFrame | None = None) -> bool:
        """Whether this task's tables carry optional `column` (e.g. hh's `candidates`): declared in its record,
        and, for a column only some data or settings bring (`sometimes`: the dataset task's `candidates` with
        preference data), present in `frame`, the table at hand."""
        if column not in self.optional_columns:
            return False
        return column not in self.sometimes or (frame is not None and column in frame.columns)

    def assets(self, cfg: Any) -> tuple[str, ...]:
        """The asset folders the clean stage reads with clean config `cfg`, sorted."""
        more = self.config_asset_deps(cfg) if self.config_asset_deps else ()
        return tuple(sorted({*self.asset_deps, *more}))

    def columns(self, cfg: Any = None) -> dict[str, Any]:
        """The optional columns its tables may carry with clean config `cfg`, name -> dtype (None: any)."""
        more = self.config_columns(cfg) if self.config_columns and cfg is not None else {}
        return {**self.optional_columns, **more}

    def data(self, cfg: Any) -> tuple[str, ...]:
        """The paths outside data/assets the clean stage reads with clean config `cfg`."""
        return tuple(self.data_deps(cfg)) if self.data_deps else ()

    def tables(self, assets: Path, cfg: Any, base) -> tuple[dict[str, pl.DataFrame], dict, dict[str, pl.DataFrame]]:
        """build(), then check_splits() on what it returned; refused before any work if an asset folder it
        reads is missing (the clean stage run by hand before the download stage)."""
        missing = [name for name in self.assets(cfg) if not (Path(assets) / name).exists()]
        if missing:
            raise AlolError(f"clean (task {self.name}): {', '.join(str(Path(assets) / n) for n in missing)}: no such "
                            "folder; the download stage writes it. Run `dvc repro` (or `dvc repro download` first).")
        splits, stats, extra = self.build(Path(assets), cfg, base)
        check_splits(self, splits, cfg)
        if set(splits) != set(SPLITS) or set(extra) != set(self.extra_tables):
            raise AlolError(f"clean (task {self.name}): build() returned splits {sorted(splits)} and extra tables "
                            f"{sorted(extra)}; expected {list(SPLITS)} and {list(self.extra_tables)} (the Task "
                            f"record in alol/tasks/{self.name}.py).")
        return splits, stats, extra


def _fail(task: Task, split: str, message: str) -> AlolError:
    return AlolError(f"clean (task {task.name}): the {split} table {message}")


def check_table(task: Task, split: str, frame: pl.DataFrame, cfg: Any = None) -> None:
    """The canonical-table contract: the REQUIRED columns with their dtypes and no nulls, every other
    column declared in the task's optional columns (for clean config `cfg`) with its dtype, at least one row."""
    where = f"alol/tasks/{task.name}.py"
    for column, dtype in REQUIRED.items():
        if column not in frame.columns:
            raise _fail(task, split, f"has no column {column!r}; every task's reader must write "
                        f"{', '.join(REQUIRED)} (fix build() in {where}).")
    if frame.height == 0:
        raise _fail(task, split, "is empty; check the task's data source and its clean settings (rows per split, limits).")
    optional = task.columns(cfg)
    declared = {**REQUIRED, **optional}
    for column, dtype in frame.schema.items():
        if column not in declared:
            raise _fail(task, split, f"has column {column!r}, which the task does not declare; add it to "
                        f"optional_columns of the Task record in {where}.")
        if declared[column] is not None and dtype != declared[column]:
            raise _fail(task, split, f"column {column!r} is {dtype}, expected {declared[column]} (the Task record "
                        f"in {where}).")
    for column in REQUIRED:
        nulls = frame[column].null_count()
        if nulls:
            raise _fail(task, split, f"column {column!r} has {nulls} null value(s); the reader must fill it.")
    missing = [c for c in optional if c not in frame.columns and c not in task.sometimes]
    if missing:
        raise _fail(task, split, f"has no column(s) {missing}, which the task declares in {where}.")


def check_splits(task: Task, splits: dict[str, pl.DataFrame], cfg: Any = None) -> None:
    """check_table on every split; then, for a task that splits by group, no group_id in two splits."""
    for split, frame in splits.items():
        check_table(task, split, frame, cfg)
    if not task.disjoint_groups:
        return
    seen: dict[str, str] = {}
    for split, frame in splits.items():
        for group in frame["group_id"].unique(maintain_order=True).to_list():
            if seen.setdefault(group, split) != split:
                raise _fail(task, split, f"column 'group_id' has group {group!r}, which the {seen[group]} split "
                            "has too; a group (conversation) must stay in one split.")
