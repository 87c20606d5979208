"""How well can V(x) estimate the reference's expected reward at x? Cross-validated R^2 of the value
head for several training targets, on one set of validation prompts.

    python -m alol.value_study data/annotated models/reference \
        greedy=results/estimate_value/generations.parquet sampled4=/tmp/v/generations.parquet

The estimate_value stage reports R^2 on the few conversations it holds out (12 rows of the default's
128), too few to rank settings. Here every row is predicted once by a head fit without its
conversation (K folds by group_id, the stage's own fit in each fold), so R^2 is over all rows. Each
target is a generations table of estimate_value (one greedy reply, or the mean of several sampled
replies per prompt); each head is scored against its own target and against `--truth` (by default
the target with the most replies per prompt: the closest to the expected reward). A ridge regression
on mean-pooled prompt states is scored alongside, as a different head input. On the noisy task,
`--advantages name=train.parquet` adds how well each advantage column ranks clean train rows above
each kind of bad reply (AUC), against the reward alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import typer

from alol.core.errors import AlolError
from alol.core.io import read_parquet, write_json
from alol.core.stage import stage
from alol.models.value import r2


def auc(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(a random row of `higher` scores above a random row of `lower`), ties counting half."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(higher)), np.zeros(len(lower))], np.r_[higher, lower]))


def noise_separation(table: pl.DataFrame) -> dict:
    """For a noisy task's advantages table: how well the advantage (and the reward alone) rank the clean
    rows above each kind of bad reply (AUC), and the positive fraction per kind."""
    if "noise" not in table.columns:
        raise AlolError("the advantages table has no `noise` column: only a task with clean.noise has one.")
    clean = table.filter(pl.col("noise") == "clean")
    out = {}
    for kind in sorted(set(table["noise"].to_list()) - {"clean"}):
        bad = table.filter(pl.col("noise") == kind)
        out[kind] = {"advantage_auc": auc(clean["advantage"].to_numpy(), bad["advantage"].to_numpy()),
                     "reward_auc": auc(clean["reward"].to_numpy(), bad["reward"].to_numpy()),
                     "positive_fraction": float((bad["advantage"] > 0).mean())}
    out["clean"] = {"positive_fraction": float((clean["advantage"] > 0).mean())}
    return out


def group_folds(groups: list[str], folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of `folds` folds, whole groups each, dealt from a seeded shuffle of the groups."""
    names = sorted(set(groups))
    if len(names) < folds:
        raise AlolError(f"{len(names)} conversations cannot make {folds} folds; lower --folds.")
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[g]: rank % folds for rank, g in enumerate(order)}
    of_row = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(of_row == k) for k in range(folds)]


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression with standardised features and an unpenalised intercept."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean()))
    return b @ w + train_y.mean()


def cross_validated(rows: int, folds: list[np.ndarray], fit) -> np.ndarray:
    """Every row's prediction by a model fit on the other folds: fit(train_rows, test_rows) -> predictions."""
    pred = np.zeros(rows)
    for test in folds:
        train = np.setdiff1d(np.arange(rows), test)
        pred[test] = fit(train, test)
    return pred


@stage
def main(annotated: Path = typer.Argument(..., help="Folder with the annotated validation.parquet."),
         reference: Path = typer.Argument(..., help="The reference policy folder."),
         targets: list[str] = typer.Argument(..., help="name=generations.parquet of estimate_value, one per target."),
         truth: str = typer.Option(None, help="The target every head is also scored against (default: most replies)."),
         folds: int = typer.Option(5, help="Cross-validation folds (by conversation)."),
         ridge_alpha: float = typer.Option(1000.0, help="Ridge penalty of the mean-pooled baseline."),
         advantages: list[str] = typer.Option([], help="name=train.parquet of the advantages stage (repeatable): "
                                                        "on a noisy task, how well each ranks clean rows above bad."),
         out: Path = typer.Option(None, help="Write the results as JSON here."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, model, estimate_value.")):
    from alol.models.load import ModelConfig, load_tokenizer
    from alol.core.params import BaseConfig, load_params, section
    from alol.training.reference import load_frozen
    from alol.models.logprobs import Example, encode_prompts, forward_rows
    from alol.models.value import ValueConfig, fit_value_head, predict, reward_range

    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "estimate_value", ValueConfig)
    frame = read_parquet(annotated / "validation.parquet", ["prompt_id", "group_id", "prompt"]).select(
        "prompt_id", "group_id", "prompt")
    tables = {}
    for item in targets:
        name, _, path = item.partition("=")
        table = read_parquet(path, ["prompt_id", "reward"]).group_by("prompt_id").agg(pl.col("reward").mean(), pl.len().alias("replies"))
        joined = frame.join(table, on="prompt_id", how="left")
        if joined["reward"].null_count():
            raise AlolError(f"{path}: no replies for {joined['reward'].null_count()} of the validation prompts in "
                            f"{annotated / 'validation.parquet'}; give generations of the same validation set.")
        tables[name] = joined
    truth = truth or max(tables, key=lambda n: tables[n]["replies"].min())
    tokenizer = load_tokenizer(reference)
    model = load_frozen(reference, section(p, "model", ModelConfig))
    examples = [Example(ids, []) for ids in encode_prompts(tokenizer, frame["prompt"].to_list(), base.max_prompt_tokens)]
    _, states = forward_rows(model, examples, tokenizer.pad_token_id)
    pooled = np.stack([s.mean(0).numpy() for s in states])
    groups = frame["group_id"].to_list()
    split = group_folds(groups, folds, base.seed)
    low, high = reward_range(cfg, p)
    truth_y = tables[truth]["reward"].to_numpy()
    results = {"rows": frame.height, "folds": folds, "truth": truth, "targets": {}}
    for name, table in tables.items():
        y = table["reward"].to_numpy()

        def head_fit(train, test):
            head, _, _ = fit_value_head([states[i] for i in train], y[train], [groups[i] for i in train], cfg, low,
                                        high, base.seed)
            return predict(head, [states[i] for i in test])

        head_pred = cross_validated(len(y), split, head_fit)
        ridge_pred = cross_validated(len(y), split,
                                     lambda train, test: ridge_predict(pooled[train], y[train], pooled[test], ridge_alpha))
        results["targets"][name] = {
            "replies_per_prompt": int(table["replies"].min()), "target_mean": float(y.mean()),
            "target_sd": float(y.std()),
            "head_r2": r2(head_pred, y), f"head_r2_vs_{truth}": r2(head_pred, truth_y),
            "ridge_r2": r2(ridge_pred, y), f"ridge_r2_vs_{truth}": r2(ridge_pred, truth_y),
            "target_r2_vs_truth": r2(y, truth_y)}
    for item in advantages:
        name, _, path = item.partition("=")
        results.setdefault("noise_separation", {})[name] = noise_separation(read_parquet(path, ["advantage", "reward"]))
    print(json.dumps(results, indent=2))
    if out:
        write_json(results, out)


if __name__ == "__main__":
    typer.run(main)
