"""clean: the task's data -> canonical (prompt, completion) tables, filtered and split.

    python stages/clean.py data/assets data/clean results/clean/stats.json

The reader is the `task:` param's record (alol/tasks: dataset by default, hh, reddit, wow, comet);
every table it returns is checked (alol/tasks/base.py: check_table). A task's extra tables (reddit:
train_replies.parquet, the train replies the tf-idf diversity is fit on) are written next to the splits.
"""

from pathlib import Path

import typer

from alol.core.io import write_all
from alol.core.params import BaseConfig, load_params, section
from alol.core.stage import stage
from alol.tasks import TASKS


@stage
def main(assets: Path = typer.Argument(..., help="Output folder of the download stage."),
         out: Path = typer.Argument(..., help="Folder for {train,validation,test}.parquet."),
         stats_path: Path = typer.Argument(..., help="JSON of drop counts and split sizes (a DVC metric)."),
         params: Path = typer.Option(Path("params.yaml"), help="Params file (reads `task:`, `base:` and `clean:`).")):
    p = load_params(params)
    task = TASKS[p["task"]]
    splits, stats, extra = task.tables(assets, section(p, "clean", task.config), section(p, "base", BaseConfig))
    # all or nothing: a failure leaves no split of this run beside another run's
    write_all({**{out / f"{name}.parquet": frame for name, frame in {**extra, **splits}.items()}, stats_path: stats})
    print(f"rows: {stats['rows']}  dropped: {stats['dropped']}")


if __name__ == "__main__":
    typer.run(main)
