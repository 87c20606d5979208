"""Compare algorithms on the cached upstream: one DVC experiment per algorithm, then one table.

    python -m alol.compare                          # every algorithm: offline, preference and online
    python -m alol.compare --algorithms a_lol,nll   # a subset
    python -m alol.compare --algorithms a_lol,ppo,grpo,rloo   # offline against online, with their cost

Each algorithm is `dvc exp run -S algorithm=<name>`: only finetune and evaluate rerun (the
reference, value, advantages, plans and the reference's own evaluation are cached), and every
run stays in `dvc exp show`. The table (CSV + Markdown) and a bar chart go to results/compare/.
The algorithm in params.yaml runs last, so the workspace ends as it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import typer

from alol.errors import AlolError
from alol.losses import ALGORITHMS
from alol.params import load_params

COMPONENT_PREFIX = "reward_"


def run_experiment(algorithm: str, root: Path) -> float:
    """`dvc exp run -S algorithm=...` in `root`; returns its wall time in seconds."""
    tic = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", f"algorithm={algorithm}"], cwd=root,
                          env=env)
    if proc.returncode != 0:
        raise AlolError(f"dvc exp run -S algorithm={algorithm} failed (exit {proc.returncode}); its output is above.")
    return time.perf_counter() - tic


def git_branch(root: Path) -> str | None:
    """The branch HEAD is on, or None when HEAD is detached."""
    proc = subprocess.run(["git", "symbolic-ref", "-q", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() or None


def git_commit(root: Path, ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def reattach(root: Path, branch: str) -> None:
    """Put HEAD back on `branch` if an interrupted `dvc exp run` left it detached at the branch's tip.

    `dvc exp run` detaches HEAD while it runs and normally restores it; killed midway it leaves HEAD
    detached, and every commit made after that belongs to no branch."""
    if git_branch(root) is None and git_commit(root, "HEAD") == git_commit(root, branch):
        subprocess.run(["git", "symbolic-ref", "HEAD", f"refs/heads/{branch}"], cwd=root, check=True)


def read(path: Path) -> dict:
    if not path.exists():
        raise AlolError(f"{path}: missing; run `dvc repro` first.")
    return json.loads(path.read_text())


def table_row(name: str, evaluation: dict, finetune: dict | None, plans: dict | None, seconds: float | None) -> dict:
    """One row: test reward (gain vs the reference with its 95% CI), components, diversity, length,
    and what training used."""
    gen = evaluation["generations"]
    row = {"algorithm": name, "reward": gen["reward"]}
    vs = evaluation.get("vs_baseline", {}).get("reward")
    row.update({"gain": vs["gain"], "gain_ci_low": vs["ci_low"], "gain_ci_high": vs["ci_high"],
                "win_rate": vs["win_rate"]} if vs else {"gain": None, "gain_ci_low": None, "gain_ci_high": None,
                                                         "win_rate": None})
    row.update({k: v for k, v in gen.items() if k.startswith(COMPONENT_PREFIX)})
    row.update({k: gen[k] for k in ("distinct_1", "distinct_2", "distinct_3", "length_words")})
    row["kl"] = gen.get("kl")
    strategy = (finetune or {}).get("sampling_strategy")
    row["positive_fraction"] = (plans or {}).get("positive_fraction") if strategy in ("good_priority",) else None
    row["steps"] = (finetune or {}).get("steps")
    row["train_seconds"] = (finetune or {}).get("train_seconds")
    row["experiment_seconds"] = seconds
    # the cost of online RL: tokens generated while training (offline methods generate none: the
    # replies they need upstream, the value's and the pairs', are generated once and cached for all)
    row["generated_tokens"] = (finetune.get("generated_tokens", 0) if finetune else None)
    row["rollout_tokens_per_second"] = (finetune or {}).get("rollout_tokens_per_second")
    row["train_tokens_per_second"] = (finetune or {}).get("tokens_per_second")
    return row


def markdown(frame: pl.DataFrame) -> str:
    def cell(value, column):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.0f}" if column.endswith(("seconds", "per_second")) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, frame.columns)) + " |" for row in frame.iter_rows()]
    return "\n".join(lines) + "\n"


def compare(algorithms: list[str], root: Path, out: Path) -> pl.DataFrame:
    from alol.io import write_json
    from alol.plots import bar_chart

    params_text = (root / "params.yaml").read_text()
    current = load_params(root / "params.yaml")["algorithm"]  # checked, with the default filled in
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise AlolError(f"unknown algorithm(s) {', '.join(unknown)}; valid: {', '.join(ALGORITHMS)}.")
    order = [a for a in algorithms if a != current] + ([current] if current in algorithms else [])
    branch = git_branch(root)
    if branch is None:
        raise AlolError(f"{root.resolve()}: git HEAD is detached (an interrupted `dvc exp run` leaves it so), and "
                        "commits made now would belong to no branch; run `git checkout <your branch>` first.")
    rows = []
    results = root / "results"
    try:
        for algorithm in order:
            seconds = run_experiment(algorithm, root)
            rows.append(table_row(algorithm, read(results / "evaluate" / "details.json"),
                                  read(results / "finetune" / "summary.json"), read(results / "plan.json"), seconds))
    finally:  # `dvc exp run -S` rewrites params.yaml (comments, nulls, line wrapping): give the user's file back
        (root / "params.yaml").write_text(params_text)
        reattach(root, branch)
    reference = read(results / "evaluate_reference" / "details.json")
    rows.sort(key=lambda r: algorithms.index(r["algorithm"]))
    rows.insert(0, table_row("reference", reference, None, None, None))
    gold = {"algorithm": "gold (test replies)", "reward": reference["gold"]["reward"],
            **{k: v for k, v in reference["gold"].items() if k.startswith(COMPONENT_PREFIX) or k.startswith("distinct")
               or k == "length_words"}}
    frame = pl.DataFrame(rows + [gold], infer_schema_length=None)
    out.mkdir(parents=True, exist_ok=True)
    frame.write_csv(out / "table.csv")
    (out / "table.md").write_text(markdown(frame))
    write_json(rows, out / "table.json")
    trained = frame.filter(pl.col("gain").is_not_null())
    bar_chart(out / "reward.png", trained["algorithm"].to_list(), trained["gain"].to_list(),
              trained["gain_ci_low"].to_list(), trained["gain_ci_high"].to_list(),
              "test reward gain over the reference (95% CI)", baseline=0.0)
    return frame


def main(algorithms: str = typer.Option("all", help="Comma-separated algorithms, or 'all' (online ones included)."),
         out: Path = typer.Option(Path("results/compare"), help="Folder for table.csv, table.md, reward.png."),
         root: Path = typer.Option(Path("."), help="The DVC project (with params.yaml and dvc.yaml).")):
    """Run every algorithm as a DVC experiment on the cached upstream and tabulate the results."""
    names = list(ALGORITHMS) if algorithms == "all" else [a.strip() for a in algorithms.split(",") if a.strip()]
    try:
        frame = compare(names, root, out)
    except AlolError as err:
        typer.secho(f"error (compare): {err}", fg="red", err=True)
        raise typer.Exit(1)
    print((out / "table.md").read_text())
    print(f"wrote {out / 'table.csv'}, {out / 'table.md'}, {out / 'reward.png'} ({frame.height} rows)")


if __name__ == "__main__":
    typer.run(main)
