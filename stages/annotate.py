"""annotate: score every row with the task's reward components and their weighted sum.

    python stages/annotate.py data/clean data/assets data/annotated results/annotate/reward_stats.json
"""

from pathlib import Path

import typer

from alol.rewards.annotate import annotate_splits, fit_evaluation_reward, load_reward
from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.tasks import SPLITS, TASKS
from alol.core.io import read_parquet, write_all
from alol.core.params import load_params


@stage
def main(clean: Path = typer.Argument(..., help="Folder with the clean {train,validation,test}.parquet."),
         assets: Path = typer.Argument(..., help="Output folder of the download stage."),
         out: Path = typer.Argument(..., help="Folder for the annotated tables and the fitted reward state."),
         stats_path: Path = typer.Argument(..., help="JSON of each component's distribution per split."),
         params: Path = typer.Option(Path("params.yaml"), help="Params file (reads `rewards:`).")):
    p = load_params(params)
    reward = load_reward(p, assets)
    sources = {name: str(clean / f"{name}.parquet") for name in SPLITS}
    splits = {name: read_parquet(path, ["prompt_id", "prompt", "completion", "context"]) for name, path in sources.items()}
    tables, stats, files = annotate_splits(splits, reward, sources, TASKS[p["task"]])
    evaluation_files, evaluation_reports = fit_evaluation_reward(p, assets, tables)
    if evaluation_reports:
        stats["evaluation_stand_in"] = evaluation_reports
    if not is_main_process():
        return
    # everything is computed first, then written together: a failure leaves no partial output
    write_all({**{out / f"{name}.parquet": frame for name, frame in tables.items()},
               **{out / file: data for file, data in {**files, **evaluation_files}.items()}, stats_path: stats})
    print({name: {col: round(s["mean"], 3) for col, s in stats[name].items()} for name in SPLITS})
    for name, fit in {**stats.get("stand_in", {}), **evaluation_reports}.items():  # how well a stand-in held out
        print(f"stand-in of {name}: {fit['loss']}, l2 {fit['l2']:g}, held-out {fit['report']}")
    if "dropped_missing_score" in stats:
        print("dropped (no score):", stats["dropped_missing_score"])


if __name__ == "__main__":
    typer.run(main)
