"""finetune: train the policy with `algorithm` from the reference, on the precomputed columns (offline),
or on its own replies to the train prompts scored with the task reward (online: ppo, grpo, rloo).

Offline, the frozen reference is never loaded: its log-probs and the value are Parquet columns.
The algorithm's family (alol.algorithms) does the training; this stage parses, calls it, writes.

    python stages/finetune.py data/advantages data/plans.parquet models/reference models/policy results/finetune
    accelerate launch --num_processes 2 stages/finetune.py ...     # DDP on 2 GPUs, same arguments
"""

import json
from pathlib import Path

import typer

from alol.algorithms import ALGORITHMS, check_algorithm
from alol.algorithms.finetune import FinetuneConfig
from alol.algorithms.run import Run
from alol.core.device import is_main_process
from alol.core.errors import AlolError
from alol.core.io import atomic_path, write_json
from alol.core.params import BaseConfig, load_params, section
from alol.core.stage import stage
from alol.rewards.annotate import load_reward
from alol.models.card import policy_card
from alol.models.load import ModelConfig, load_tokenizer, save_policy, tokenizer_fingerprint


@stage
def main(advantages: Path = typer.Argument(..., help="The advantages stage's folder (train.parquet, meta.json)."),
         plans: Path = typer.Argument(..., help="The plan stage's Parquet."),
         reference: Path = typer.Argument(..., help="The reference policy folder (training starts from it)."),
         out: Path = typer.Argument(..., help="Folder for the fine-tuned policy (model or adapter)."),
         results: Path = typer.Argument(..., help="Folder for summary.json and the DVCLive curves."),
         pairs: Path = typer.Option(None, help="The sample stage's preference pairs (dpo, dpo_ref_free, pro)."),
         annotated: Path = typer.Option(None, help="Folder with validation.parquet (periodic validation) and "
                                        "train.parquet (the online algorithms' prompts)."),
         assets: Path = typer.Option(None, help="The download stage's folder (reward models: validation, online)."),
         checkpoint_dir: Path = typer.Option(None, help="Resumable checkpoints (kept outside DVC outputs)."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, model, algorithm, finetune.")):
    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "finetune", FinetuneConfig)
    strategy = check_algorithm(p["algorithm"], cfg)
    tokenizer = load_tokenizer(reference)
    meta = json.loads((advantages / "meta.json").read_text())
    if meta["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise AlolError(f"the policy tokenizer ({reference}) differs from the one {advantages} was computed with; "
                        "rerun the advantages stage with this policy (dvc repro).")
    run = Run(p, ALGORITHMS[p["algorithm"]], strategy, base, cfg, section(p, "model", ModelConfig), tokenizer,
              reference, advantages, plans, results, pairs, annotated, assets, checkpoint_dir,
              reward_loader=(lambda: load_reward(p, assets, annotated)) if annotated and assets else None)
    model, summary = run.algorithm.family.train(run)
    if is_main_process():
        with atomic_path(out) as tmp:
            base = model.peft_config[model.active_adapter].base_model_name_or_path if hasattr(model, "peft_config") else None
            save_policy(model, tokenizer, tmp, policy_card(p, strategy, base))  # base None: a full model
        run.finish()  # the checkpoint goes only once the policy is saved
        write_json({"algorithm": run.algorithm.name, "sampling_strategy": strategy, **summary}, results / "summary.json")


if __name__ == "__main__":
    typer.run(main)
