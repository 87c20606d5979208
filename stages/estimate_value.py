"""estimate_value: V(x) of the reference: its greedy replies to validation prompts, scored with
the task reward, fit by an attention value head on its prompt states.

    python stages/estimate_value.py data/annotated data/assets models/reference models/value results/estimate_value
"""

from pathlib import Path

import numpy as np
import polars as pl
import typer

from alol.rewards.annotate import load_reward
from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.evaluation.replies import generate_and_score
from alol.core.io import atomic_path, read_parquet, write_json, write_parquet
from alol.models.load import ModelConfig, load_tokenizer
from alol.core.params import BaseConfig, load_params, section
from alol.training.reference import load_frozen
from alol.models.logprobs import Example, encode_prompts, forward_rows
from alol.models.value import ValueConfig, fit_value_head, reward_range


@stage
def main(annotated: Path = typer.Argument(..., help="Folder with the annotated validation.parquet."),
         assets: Path = typer.Argument(..., help="Output folder of the download stage."),
         reference: Path = typer.Argument(..., help="The reference policy folder."),
         out: Path = typer.Argument(..., help="Folder for the value head (safetensors + config.json)."),
         results: Path = typer.Argument(..., help="Folder for metrics.json (held-out R^2), details.json, the fit curve and the generations."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, model, rewards, estimate_value.")):
    import torch

    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "estimate_value", ValueConfig)
    frame = read_parquet(annotated / "validation.parquet", ["prompt_id", "group_id", "prompt", "context"])
    tokenizer = load_tokenizer(reference)
    model = load_frozen(reference, section(p, "model", ModelConfig))
    k = cfg.replies_per_prompt  # every prompt k times (sampled replies); the target is their mean reward
    repeated = pl.concat([frame.with_columns(pl.lit(i).alias("reply")) for i in range(k)])
    scored = generate_and_score(model, tokenizer, repeated, load_reward(p, assets, annotated), cfg.generation,
                                base.max_prompt_tokens, base.seed, "validation", "reference generations")
    replies, scores = scored.replies, scored.scores
    generations = repeated.select("prompt_id", "reply", "prompt").with_columns(
        pl.Series("completion", replies), *(pl.Series(name, v) for name, v in scores.items()))
    scores = {name: np.asarray(v).reshape(k, frame.height).mean(axis=0) for name, v in scores.items()}
    examples = [Example(ids, []) for ids in encode_prompts(tokenizer, frame["prompt"].to_list(), base.max_prompt_tokens)]
    _, states = forward_rows(model, examples, tokenizer.pad_token_id)
    if not is_main_process():  # the head is small: fit once, on the main process
        return
    low, high = reward_range(cfg, p)
    head, quality, curve = fit_value_head(states, scores["reward"], frame["group_id"].to_list(), cfg, low, high,
                                          base.seed)
    with atomic_path(out) as tmp:
        head.save(tmp, {"reward_range": [low, high], **quality})
    write_parquet(generations, results / "generations.parquet")
    write_json(curve, results / "fit_curve.json")
    write_json({**quality, "mean_generated_reward": float(np.mean(scores["reward"])),
                "generated_tokens_per_second": scored.generated_tokens / scored.seconds,
                "mean_generated_tokens": scored.generated_tokens / len(replies)}, results / "details.json")
    write_json({"heldout_r2": quality["heldout_r2"]}, results / "metrics.json")  # the headline: how much V explains
    print({k: round(v, 4) for k, v in quality.items()}, "mean reward", round(float(np.mean(scores["reward"])), 4))


if __name__ == "__main__":
    typer.run(main)
