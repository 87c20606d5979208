"""train_reference: the reference policy pi_ref, by NLL on the train completions (or taken as is).

    python stages/train_reference.py data/annotated data/assets models/reference results/train_reference
"""

import shutil
from pathlib import Path

import typer

from alol.core.live import LiveLog
from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.algorithms import ALGORITHMS, offline
from alol.algorithms.finetune import FinetuneConfig
from alol.core.io import atomic_path, read_parquet, write_json
from alol.models.load import ModelConfig, load_policy, load_tokenizer, save_policy
from alol.core.params import BaseConfig, load_params, section
from alol.training.plans import uniform_plan
from alol.training.reference import ReferenceConfig, table_examples
from alol.training.loop import Checkpoint, folder_digest, run_fingerprint, train
from alol.training.summary import summarize_loop


@stage
def main(annotated: Path = typer.Argument(..., help="Folder with the annotated train.parquet."),
         assets: Path = typer.Argument(..., help="Output folder of the download stage (the base policy)."),
         out: Path = typer.Argument(..., help="Folder for the reference policy (model or adapter)."),
         results: Path = typer.Argument(..., help="Folder for summary.json and the DVCLive curves."),
         checkpoint_dir: Path = typer.Option(None, help="Resumable checkpoints (kept outside DVC outputs)."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, model, train_reference.")):
    p = load_params(params)
    base, model_cfg, cfg = section(p, "base", BaseConfig), section(p, "model", ModelConfig), section(
        p, "train_reference", ReferenceConfig)
    if cfg.source != "train":  # an existing model or adapter, used as is
        from alol.training.reference import load_frozen

        from alol.models.load import hub_adapter

        source = Path(cfg.source) if Path(cfg.source).is_dir() else hub_adapter(cfg.source)
        if not is_main_process():
            return
        with atomic_path(out) as tmp:
            if source is not None:  # a folder or a hub adapter: copied as is (an adapter stays an adapter)
                shutil.copytree(source, tmp)
            else:
                save_policy(load_frozen(cfg.source, model_cfg), load_tokenizer(cfg.source), tmp)
        LiveLog(results / "live").close()  # no curves, but the stage's declared output exists
        write_json({"source": cfg.source, "steps": 0}, results / "summary.json")
        return
    import torch

    torch.manual_seed(base.seed)
    tokenizer = load_tokenizer(assets / "policy")
    frame = read_parquet(annotated / "train.parquet", ["prompt", "completion"])
    rows = [[e] for e in table_examples(frame, tokenizer, base.max_prompt_tokens, base.max_completion_tokens)]
    plan = uniform_plan(len(rows), cfg.steps, cfg.train.batch_size, base.seed)
    model = load_policy(assets / "policy", model_cfg)
    checkpoint = Checkpoint(checkpoint_dir, run_fingerprint(
        {"algorithm": "nll", "model": model_cfg, "base_policy": folder_digest(assets / "policy")}, cfg.train, plan, rows, {}))
    live = LiveLog(results / "live", resume=checkpoint.resumable) if is_main_process() else None
    model = train(model, rows, {}, plan, offline.loss_fn(ALGORITHMS["nll"], FinetuneConfig()), cfg.train, tokenizer.pad_token_id,
                  checkpoint, live)
    if is_main_process():
        live.close()
        with atomic_path(out) as tmp:
            save_policy(model, tokenizer, tmp)
        checkpoint.remove()
        write_json(summarize_loop(live.history), results / "summary.json")

if __name__ == "__main__":
    typer.run(main)
