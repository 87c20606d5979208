"""sample: preference pairs (data reply vs a reference reply, ordered by the task reward).

Needed only by dpo, dpo_ref_free and pro.

    python stages/sample.py data/annotated data/assets models/reference data/pairs.parquet results/sample.json
"""

from pathlib import Path

import numpy as np
import typer

from alol.rewards.annotate import load_reward
from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.evaluation.replies import generate_and_score
from alol.core.io import read_parquet, write_json, write_parquet
from alol.models.load import ModelConfig, load_tokenizer
from alol.training.pairs import SampleConfig, order_pairs
from alol.core.params import BaseConfig, load_params, section
from alol.training.reference import load_frozen
from alol.models.logprobs import forward_rows
from alol.rewards import raw_reward
from alol.tasks import TASKS
from alol.models.logprobs import encode


@stage
def main(annotated: Path = typer.Argument(..., help="Folder with the annotated train.parquet."),
         assets: Path = typer.Argument(..., help="Output folder of the download stage."),
         reference: Path = typer.Argument(..., help="The reference policy folder."),
         out: Path = typer.Argument(..., help="Parquet of preference pairs."),
         metrics_path: Path = typer.Argument(..., help="JSON: pair count, how often the data reply won."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, model, rewards, sample.")):
    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "sample", SampleConfig)
    frame = read_parquet(annotated / "train.parquet", ["prompt_id", "prompt", "completion", "context", "reward"])
    if cfg.rows and frame.height > cfg.rows:
        frame = frame[np.sort(np.random.default_rng(base.seed).choice(frame.height, cfg.rows, replace=False))]
    tokenizer = load_tokenizer(reference)
    model = load_frozen(reference, section(p, "model", ModelConfig))
    task = TASKS[p["task"]]
    if task.provides("candidates", frame):  # the data has its own second reply (HH): candidate 1, nothing generated
        generated = [c[1] for c in frame["candidates"].to_list()]
        generated_reward = np.array([r[1] for r in frame["candidate_rewards"].to_list()])
        generated_raw = np.array([r[1] for r in frame["candidate_raw_rewards"].to_list()])
    else:
        replies = generate_and_score(model, tokenizer, frame, load_reward(p, assets, annotated), cfg.generation,
                                     base.max_prompt_tokens, base.seed, "train", "reference samples")
        generated, generated_reward, generated_raw = (replies.replies, replies.scores["reward"],
                                                      raw_reward(replies.scores))
    prompts = frame["prompt"].to_list()
    logps = {}
    for name, replies in (("data", frame["completion"].to_list()), ("generated", generated)):
        examples = encode(tokenizer, prompts, replies, base.max_prompt_tokens, base.max_completion_tokens)
        token_logps, _ = forward_rows(model, examples, tokenizer.pad_token_id, want_states=False)
        logps[name] = [float(np.sum(t)) for t in token_logps]
    pairs = order_pairs(frame, generated, generated_reward, logps["data"], logps["generated"], generated_raw,
                        keep_order=task.candidates_ranked and task.provides("candidates", frame))
    if not is_main_process():
        return
    write_parquet(pairs, out)
    stats = {"pairs": pairs.height, "data_reply_chosen": float((frame["reward"].to_numpy() >= generated_reward).mean()),
             "generated_reward_mean": float(np.mean(generated_reward)), "margin_mean":
             float((pairs["chosen_reward"] - pairs["rejected_reward"]).mean()) if pairs.height else 0.0}
    write_json(stats, metrics_path)
    print(stats)


if __name__ == "__main__":
    typer.run(main)
