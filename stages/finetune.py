"""finetune: train the policy with `algorithm` from the reference, on the precomputed columns (offline),
or on its own replies to the train prompts scored with the task reward (online: ppo, grpo, rloo).

Offline, the frozen reference is never loaded: its log-probs and the value are Parquet columns.

    python stages/finetune.py data/advantages data/plans.parquet models/reference models/policy results/finetune
    accelerate launch --num_processes 2 stages/finetune.py ...     # DDP on 2 GPUs, same arguments
"""

import dataclasses
import json
from pathlib import Path

import typer

from alol.core.live import LiveLog
from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.core.errors import AlolError
from alol.rewards.annotate import load_reward
from alol.algorithms.finetune import (FinetuneConfig, check_algorithm, make_validator, offline_loss_fn, offline_rows,
                           preference_loss_fn, preference_rows, validation_interval)
from alol.training.advantages import select_plan, step_scales
from alol.core.io import atomic_path, read_parquet, write_json
from alol.algorithms.losses import ALGORITHMS
from alol.algorithms.pairs import PAIR_COLUMNS
from alol.algorithms.ppo_trainer import run_online
from alol.models.load import ModelConfig, load_tokenizer, save_policy, tokenizer_fingerprint
from alol.core.params import BaseConfig, load_params, section
from alol.training.reference import load_trainable
from alol.training.loop import Checkpoint, folder_digest, run_fingerprint, summarize, train


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
    import torch

    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "finetune", FinetuneConfig)
    algorithm = p["algorithm"]
    strategy = check_algorithm(algorithm, cfg)
    tokenizer = load_tokenizer(reference)
    meta = json.loads((advantages / "meta.json").read_text())
    if meta["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise AlolError(f"the policy tokenizer ({reference}) differs from the one {advantages} was computed with; "
                        "rerun the advantages stage with this policy (dvc repro).")
    if ALGORITHMS[algorithm].online:  # rollouts of the policy itself: no plan, no precomputed columns
        live = LiveLog(results / "live") if is_main_process() else None
        model, summary = run_online(algorithm, p, reference, tokenizer, annotated, assets, live)
        if is_main_process():
            live.close()
            with atomic_path(out) as tmp:
                save_policy(model, tokenizer, tmp)
            write_json({"algorithm": algorithm, "sampling_strategy": strategy, **summary}, results / "summary.json")
        return
    step_scale = 1.0  # the pairs, uniform and reward_priority plans take plan.steps
    if ALGORITHMS[algorithm].pairs:
        if pairs is None:
            raise AlolError(f"{algorithm} trains on preference pairs: pass --pairs (the sample stage's output).")
        rows, extras = preference_rows(read_parquet(pairs, PAIR_COLUMNS), tokenizer, base.max_prompt_tokens,
                                       base.max_completion_tokens)
        loss_fn = preference_loss_fn(algorithm, cfg, candidates=2)
    else:
        table = advantages / "train.parquet"
        frame = read_parquet(table, ["prompt", "completion", "reward", "advantage", "ref_token_logps"])
        rows, extras = offline_rows(frame, tokenizer, algorithm, base.max_prompt_tokens, base.max_completion_tokens,
                                    str(table))
        loss_fn = offline_loss_fn(algorithm, cfg)
        step_scale = step_scales(frame).get(strategy, 1.0)
    plan = select_plan(read_parquet(plans, ["strategy", "step", "row"]), strategy)
    torch.manual_seed(base.seed)
    model_cfg = section(p, "model", ModelConfig)
    model = load_trainable(reference, model_cfg)
    # validate as often per run as the authors (their A-LoL runs scale the interval with the steps)
    train_cfg = dataclasses.replace(cfg.train, eval_every=validation_interval(cfg.train.eval_every, step_scale))
    checkpoint = Checkpoint(checkpoint_dir, run_fingerprint(
        {"algorithm": algorithm, "finetune": cfg, "model": model_cfg, "reference": folder_digest(reference)},
        train_cfg, plan, rows, extras))
    validate = None
    if train_cfg.eval_every:
        if annotated is None or assets is None:
            raise AlolError("finetune.train.eval_every > 0 validates with the task reward: pass --annotated and "
                            "--assets (as dvc.yaml does), or set eval_every: 0.")
        validate = make_validator(load_reward(p, assets, annotated), tokenizer,
                                  read_parquet(annotated / "validation.parquet", ["prompt_id", "prompt", "context"]),
                                  cfg, base.max_prompt_tokens, base.seed)
    live = LiveLog(results / "live", resume=checkpoint.resumable) if is_main_process() else None
    model = train(model, rows, extras, plan, loss_fn, train_cfg, tokenizer.pad_token_id, checkpoint, live, validate)
    if is_main_process():
        live.close()
        with atomic_path(out) as tmp:
            save_policy(model, tokenizer, tmp)
        checkpoint.remove()
        write_json({"algorithm": algorithm, "sampling_strategy": strategy, **summarize(live.history)},
                   results / "summary.json")

if __name__ == "__main__":
    typer.run(main)
