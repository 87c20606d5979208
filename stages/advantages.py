"""advantages: one frozen-reference pass over the train rows gives ref_token_logps, ref_logp and
(through the value head on the same pass's prompt states) value; advantage = reward - value.

    python stages/advantages.py data/annotated models/reference models/value data/advantages results/advantages
"""

from pathlib import Path

import numpy as np
import typer

from alol.tasks import TASKS
from alol.training.advantages import candidate_rows, with_advantages
from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.core.io import read_parquet, write_json, write_parquet
from alol.models.load import ModelConfig, load_tokenizer, tokenizer_fingerprint
from alol.core.params import BaseConfig, load_params, section
from alol.training.reference import load_frozen, table_examples
from alol.models.logprobs import forward_rows
from alol.models.value import ValueHead


@stage
def main(annotated: Path = typer.Argument(..., help="Folder with the annotated train.parquet."),
         reference: Path = typer.Argument(..., help="The reference policy folder."),
         value: Path = typer.Argument(..., help="The value head folder."),
         out: Path = typer.Argument(..., help="Folder for train.parquet with the reference columns."),
         results: Path = typer.Argument(..., help="Folder for metrics.json (positive fraction), details.json and the advantage histogram."),
         batch_size: int = typer.Option(16, help="Rows per reference forward pass."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base and model.")):
    import time

    p = load_params(params)
    base = section(p, "base", BaseConfig)
    frame = candidate_rows(read_parquet(annotated / "train.parquet", ["prompt", "completion", "reward"]),
                           TASKS[p["task"]])
    tokenizer = load_tokenizer(reference)
    model = load_frozen(reference, section(p, "model", ModelConfig))
    examples = table_examples(frame, tokenizer, base.max_prompt_tokens, base.max_completion_tokens)
    head, _ = ValueHead.load(value)
    tic = time.perf_counter()
    token_logps, values = forward_rows(model, examples, tokenizer.pad_token_id, batch_size, value_head=head)
    seconds = time.perf_counter() - tic
    table = with_advantages(frame, token_logps, np.asarray(values))
    if not is_main_process():
        return
    advantage = table["advantage"].to_numpy()
    counts, edges = np.histogram(advantage, bins=20)
    write_parquet(table, out / "train.parquet")
    write_json({"tokenizer": tokenizer_fingerprint(tokenizer)}, out / "meta.json")
    write_json([{"advantage": float((a + b) / 2), "rows": int(c)} for a, b, c in zip(edges, edges[1:], counts)],
               results / "histogram.json")
    metrics = {"positive_fraction": float((advantage > 0).mean()), "advantage_mean": float(advantage.mean()),
               "advantage_std": float(advantage.std()), "value_mean": float(table["value"].mean()),
               "reward_mean": float(table["reward"].mean()), "rows": table.height,
               "reference_tokens_per_second": sum(e.length for e in examples) / seconds}
    if "noise" in table.columns:  # the noisy task: how much of each kind of reply A-LoL would train on
        metrics["by_noise"] = {kind: {"rows": part.height, "positive_fraction": float((part["advantage"] > 0).mean()),
                                      "reward_mean": float(part["reward"].mean())}
                               for (kind,), part in table.group_by("noise", maintain_order=True)}
    write_json(metrics, results / "details.json")
    write_json({"positive_fraction": metrics["positive_fraction"]}, results / "metrics.json")  # rows A-LoL trains on
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    typer.run(main)
