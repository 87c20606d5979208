"""plan: the seeded training plans of every sampling strategy (which rows each step trains on).

Every strategy is drawn here, so `dvc exp run -S algorithm=...` reruns only finetune onwards.

    python stages/plan.py data/advantages/train.parquet data/plans.parquet results/plan.json --pairs data/pairs.parquet
"""

from pathlib import Path

import typer

from alol.training.plans import PlanConfig, make_plans
from alol.core.stage import stage
from alol.algorithms.finetune import FinetuneConfig
from alol.core.io import read_parquet, write_json, write_parquet
from alol.core.params import BaseConfig, load_params, section


@stage
def main(table: Path = typer.Argument(..., help="The advantages stage's train.parquet."),
         out: Path = typer.Argument(..., help="Parquet of (strategy, step, row)."),
         metrics_path: Path = typer.Argument(..., help="JSON: positive fraction and steps per strategy."),
         pairs: Path = typer.Option(None, help="The sample stage's pairs: adds their plan (dpo, pro)."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, plan, finetune.train.batch_size.")):
    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "plan", PlanConfig)
    batch_size = section(p, "finetune", FinetuneConfig).train.batch_size
    n_pairs = read_parquet(pairs).height if pairs is not None else 0
    plans, stats = make_plans(read_parquet(table, ["advantage", "reward"]), cfg, batch_size, base.seed + cfg.seed_offset,
                              n_pairs)
    write_parquet(plans, out)
    write_json(stats, metrics_path)
    print(stats)


if __name__ == "__main__":
    typer.run(main)
