"""Compare algorithms on the cached upstream: one DVC experiment per (algorithm, seed), then tables.

    python -m alol.compare                          # every algorithm: offline, preference and online
    python -m alol.compare --algorithms a_lol,nll   # a subset
    python -m alol.compare --algorithms nll,wbc,r_gold,a_lol --seeds 0,1,2   # 3 training seeds each
    python -m alol.compare --algorithms nll,a_lol --eval-every 10 --set plan.steps=60 --out results/curves

Each run is `dvc exp run -S algorithm=<name> -S plan.seed_offset=<seed>`: only plan, finetune and
evaluate rerun (the reference, value, advantages and the reference's own evaluation are cached), and
every run stays in `dvc exp show`. A seed redraws the training plan (which rows each step trains on,
and in which order); the test prompts are the same for every run, so all comparisons are paired on
prompts. That seed's spread is a lower bound: the split, the reference, the value and the advantages
stay shared. `--redraw` makes a seed redraw them too (`-S clean.splits.redraw=<seed>`, the dataset task:
which groups are validation and which train rows are kept, so the reference and every later stage
rerun), with the test rows exactly those of seed 0 (checked here); each run's gain is then over its own
seed's reference. Per algorithm the table gives the mean test reward over seeds and its gain over the reference;
`--versus a_lol:nll,a_lol:wbc` (the default, where both ran) adds head-to-head rows. Every interval
is a bootstrap over prompts and seeds (alol.evaluation.stats), and the p-values are Holm-corrected over all the
comparisons the table makes. Outputs in --out: table.{csv,md,json} (per algorithm), versus.{csv,md},
components.md (gain per reward component), runs/ (every run's test generations and validation curve),
reward.png, distribution.png and, with --eval-every, curves.png.
The algorithm and seed in params.yaml run last, so the workspace ends as it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import typer

from alol.core.errors import AlolError
from alol.algorithms import ALGORITHMS
from alol.core.params import load_params
from alol.evaluation.metrics import is_reward_column

COMPONENT_PREFIX = "reward_"


def is_component(column: str) -> bool:
    """A reward column besides the total: `reward_<name>`, and with evaluate.rewards `train_reward[_<name>]`."""
    return is_reward_column(column) and column != "reward"


def run_experiment(algorithm: str, root: Path, settings: list[str] = ()) -> float:
    """`dvc exp run -S algorithm=... [-S setting ...]` in `root`; returns its wall time in seconds."""
    tic = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [arg for setting in [f"algorithm={algorithm}", *settings] for arg in ("-S", setting)]
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", *args], cwd=root, env=env)
    if proc.returncode != 0:
        raise AlolError(f"dvc exp run {' '.join(args)} failed (exit {proc.returncode}); its output is above.")
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
    row.update({k: v for k, v in gen.items() if is_component(k)})
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


def runs_order(algorithms: list[str], seeds: list[int], current: tuple[str, int]) -> list[tuple[str, int]]:
    """Every (algorithm, seed), the workspace's own (params.yaml's algorithm and seed) last."""
    runs = [(a, s) for s in seeds for a in algorithms]
    return [r for r in runs if r != current] + [r for r in runs if r == current]


def curve(live: Path) -> list[dict]:
    """The validation reward a run logged (finetune.train.eval_every > 0) as [{step, reward}]."""
    path = live / "plots" / "metrics" / "validation" / "reward.tsv"
    if not path.exists():
        return []
    return pl.read_csv(path, separator="\t").select("step", pl.col("reward")).to_dicts()


def by_prompt(frame: pl.DataFrame, column: str, prompt_ids: list[str]) -> list[float]:
    """`column` of `frame` in the order of `prompt_ids`."""
    values = dict(zip(frame["prompt_id"].to_list(), frame[column].to_list()))
    return [values[i] for i in prompt_ids]


def score_matrix(runs: dict[tuple[str, int], pl.DataFrame], algorithm: str, column: str,
                 prompt_ids: list[str]) -> np.ndarray:
    """(seeds, prompts) of `column` for `algorithm`, prompts in the order of `prompt_ids`."""
    return np.array([by_prompt(frame, column, prompt_ids) for (name, _), frame in sorted(runs.items())
                     if name == algorithm], dtype=float)


def summarise(runs: dict[tuple[str, int], pl.DataFrame], per_run: list[dict],
              reference: pl.DataFrame | dict[int, pl.DataFrame], versus: list[tuple[str, str]],
              resamples: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Per algorithm (mean over seeds, gain over the reference), head to head, and per component;
    Holm over every test of the total reward the first two make. `reference`: one table of the reference's
    test replies, or one per seed (--redraw: each seed has its own reference), the seeds drawn as A's are."""
    from alol.evaluation.stats import holm, seed_prompt_bootstrap

    references = reference if isinstance(reference, dict) else {None: reference}
    first = next(iter(references.values()))
    prompt_ids = sorted(first["prompt_id"].to_list())
    for (name, seed), frame in [*runs.items(), *((("reference", s), f) for s, f in references.items())]:
        if sorted(frame["prompt_id"].to_list()) != prompt_ids:
            raise AlolError(f"{name} seed {seed}: its test prompts differ from the reference's; rerun evaluate.")
    components = ["reward", *sorted(filter(is_component, first.columns))]
    ref = {c: np.array([by_prompt(r, c, prompt_ids) for r in references.values()]) for c in components}
    algorithms = list(dict.fromkeys(a for a, _ in runs))
    per_seed = isinstance(reference, dict)

    def over_reference(name: str, column: str) -> dict:
        scores = score_matrix(runs, name, column, prompt_ids)
        if not per_seed:
            return seed_prompt_bootstrap(scores, ref[column], resamples=resamples)
        if scores.shape != ref[column].shape:
            raise AlolError(f"{name}: {scores.shape[0]} seed(s) ran, against {ref[column].shape[0]} references; with "
                            "--redraw every algorithm runs every seed.")
        # each seed's policy against its own seed's reference: paired on seeds as on prompts
        return seed_prompt_bootstrap(scores - ref[column], None, resamples=resamples)

    table, parts, tests = [], [], {}
    for name in algorithms:
        mine = [r for r in per_run if r["algorithm"] == name]
        scores = score_matrix(runs, name, "reward", prompt_ids)
        gain = over_reference(name, "reward")
        tests[f"{name} - reference"] = gain["p_value"]
        seed_sd = float(np.std(scores.mean(axis=1), ddof=1)) if len(scores) > 1 else 0.0
        row = {"algorithm": name, "seeds": len(mine), "reward": float(scores.mean()),
               "reward_seed_sd": seed_sd, "gain": gain["diff"], "gain_ci_low": gain["ci_low"],
               "gain_ci_high": gain["ci_high"], "p": gain["p_value"],
               "win_rate": float(np.mean([r["win_rate"] for r in mine]))}
        for key in (*components[1:], "distinct_2", "length_words", "kl", "positive_fraction", "steps",
                    "train_seconds", "experiment_seconds"):
            values = [r.get(key) for r in mine if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        table.append(row)
        for c in components:
            g = over_reference(name, c)
            parts.append({"algorithm": name, "component": c, "gain": g["diff"], "ci_low": g["ci_low"],
                          "ci_high": g["ci_high"]})
    heads = []
    for a, b in versus:
        row = {"comparison": f"{a} - {b}"}
        for c in components:
            g = seed_prompt_bootstrap(score_matrix(runs, a, c, prompt_ids), score_matrix(runs, b, c, prompt_ids),
                                      resamples=resamples)
            suffix = "" if c == "reward" else f"_{c.removeprefix(COMPONENT_PREFIX)}"
            row.update({f"diff{suffix}": g["diff"], f"ci_low{suffix}": g["ci_low"], f"ci_high{suffix}": g["ci_high"]})
            if c == "reward":
                row.update({"seeds": f"{g['seeds_a']} vs {g['seeds_b']}", "p": g["p_value"]})
                tests[row["comparison"]] = g["p_value"]
        heads.append(row)
    corrected = holm(tests)
    for row in table:
        row["p_holm"] = corrected[f"{row['algorithm']} - reference"]["p_holm"]
    for row in heads:
        row["p_holm"] = corrected[row["comparison"]]["p_holm"]
    return table, heads, parts


def compare(algorithms: list[str], root: Path, out: Path, seeds: list[int] | None = None,
            versus: list[tuple[str, str]] | None = None, eval_every: int | None = None,
            settings: list[str] = (), resume: bool = False, redraw: bool = False) -> pl.DataFrame:
    from alol.core.io import write_json
    from alol.evaluation.plots import bar_chart, curves_chart, save_figure

    params_text = (root / "params.yaml").read_text()
    params = load_params(root / "params.yaml")  # checked, with the defaults filled in
    current = (params["algorithm"], int((params.get("plan") or {}).get("seed_offset", 0)))
    seeds = seeds if seeds is not None else [current[1]]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise AlolError(f"unknown algorithm(s) {', '.join(unknown)}; valid: {', '.join(ALGORITHMS)}.")
    if versus is None:  # A-LoL against the baselines it claims to beat, where they ran
        versus = [("a_lol", b) for b in ("nll", "wbc") if "a_lol" in algorithms and b in algorithms]
    missing = [name for pair in versus for name in pair if name not in algorithms]
    if missing:
        raise AlolError(f"--versus names {', '.join(missing)}, which --algorithms does not run.")
    if redraw and params["task"] != "dataset":
        raise AlolError(f"--redraw redraws the dataset task's split (clean.splits.redraw); task {params['task']!r} "
                        "has no such setting.")
    branch = git_branch(root)
    if branch is None:
        raise AlolError(f"{root.resolve()}: git HEAD is detached (an interrupted `dvc exp run` leaves it so), and "
                        "commits made now would belong to no branch; run `git checkout <your branch>` first.")
    results = root / "results"
    extra = [*settings, *([f"finetune.train.eval_every={eval_every}"] if eval_every is not None else [])]
    per_run, runs, curves, references = [], {}, {}, {}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    try:
        for algorithm, seed in runs_order(algorithms, seeds, current):
            saved = out / "runs" / f"{algorithm}-seed{seed}"
            own_reference = out / "runs" / f"reference-seed{seed}.parquet"
            if resume and saved.with_suffix(".json").exists() and saved.with_suffix(".parquet").exists() and (
                    not redraw or own_reference.exists()):
                record = json.loads(saved.with_suffix(".json").read_text())  # an earlier, finished run
            else:
                drawn = [f"++clean.splits.redraw={seed}"] if redraw else []
                seconds = run_experiment(algorithm, root, [f"++plan.seed_offset={seed}", *drawn, *extra])  # ++: add if absent
                if redraw:  # this seed's reference (its own split, reference, value and advantages)
                    pl.read_parquet(results / "evaluate_reference" / "generations.parquet").write_parquet(own_reference)
                row = table_row(algorithm, read(results / "evaluate" / "details.json"),
                                read(results / "finetune" / "summary.json"), read(results / "plan.json"), seconds)
                record = {"row": {"seed": seed, **row}, "curve": curve(results / "finetune" / "live")}
                pl.read_parquet(results / "evaluate" / "generations.parquet").write_parquet(saved.with_suffix(".parquet"))
                write_json(record, saved.with_suffix(".json"))
            per_run.append(record["row"])
            runs[(algorithm, seed)] = pl.read_parquet(saved.with_suffix(".parquet"))
            curves[(algorithm, seed)] = record["curve"]
            if redraw:
                references[seed] = pl.read_parquet(own_reference)
    finally:  # `dvc exp run -S` rewrites params.yaml (comments, nulls, line wrapping): give the user's file back
        (root / "params.yaml").write_text(params_text)
        reattach(root, branch)
    reference = pl.read_parquet(results / "evaluate_reference" / "generations.parquet")
    per_run.sort(key=lambda r: (algorithms.index(r["algorithm"]), r["seed"]))
    resamples = (params.get("evaluate") or {}).get("bootstrap_resamples", 4000)
    table, heads, parts = summarise(runs, per_run, dict(sorted(references.items())) if redraw else reference,
                                    versus, resamples)
    table.sort(key=lambda r: algorithms.index(r["algorithm"]))
    details = read(results / "evaluate_reference" / "details.json")
    gold = {"algorithm": "gold (test replies)", "reward": details["gold"]["reward"],
            **{k: v for k, v in details["gold"].items() if is_component(k)
               or k in ("distinct_2", "length_words")}}
    reference_row = {"algorithm": "reference", "reward": details["generations"]["reward"],
                     **{k: v for k, v in details["generations"].items() if is_component(k)
                        or k in ("distinct_2", "length_words")}}
    frame = pl.DataFrame([reference_row, *table, gold], infer_schema_length=None)
    first = ["algorithm", "seeds", "reward", "reward_seed_sd", "gain", "gain_ci_low", "gain_ci_high", "p", "p_holm",
             "win_rate"]
    frame = frame.select(first + [c for c in frame.columns if c not in first])
    tests = len(table) + len(heads)
    note = (f"Mean over seeds; gain and head-to-head intervals: 95% bootstrap over {reference.height} test prompts "
            f"and the training seeds; p_holm: Holm-corrected over the {tests} comparisons of the total reward.\n\n")
    write_json({"algorithms": table, "versus": heads, "components": parts, "runs": per_run,
                "comparisons": tests}, out / "table.json")
    frame.write_csv(out / "table.csv")
    (out / "table.md").write_text(note + markdown(frame))
    pl.DataFrame(per_run, infer_schema_length=None).write_csv(out / "runs.csv")
    if heads:
        versus_frame = pl.DataFrame(heads)
        versus_frame.write_csv(out / "versus.csv")
        (out / "versus.md").write_text(note + markdown(versus_frame))
    (out / "components.md").write_text(components_markdown(parts))
    bar_chart(out / "reward.png", [r["algorithm"] for r in table], [r["gain"] for r in table],
              [r["gain_ci_low"] for r in table], [r["gain_ci_high"] for r in table],
              "test reward gain over the reference (95% CI, prompts x seeds)", baseline=0.0)
    columns = ["reward", *sorted(filter(is_component, reference.columns))]
    pooled = {name: {c: np.concatenate([f[c].to_numpy() for (a, _), f in runs.items() if a == name])
                     for c in columns} for name in dict.fromkeys(a for a, _ in runs)}
    save_figure(out / "distribution.png", columns,  # shares: the reference has a third of the replies
                {"reference": {c: reference[c].to_numpy() for c in columns}, **pooled}, shares=True)
    if any(curves.values()):
        write_json([{"algorithm": a, "seed": s, **point} for (a, s), points in curves.items() for point in points],
                   out / "curves.json")
        curves_chart(out / "curves.png", curves, "validation reward (greedy, finetune.validation_rows prompts)")
    return frame


def components_markdown(parts: list[dict]) -> str:
    """algorithm x component: gain over the reference [95% CI]."""
    components = list(dict.fromkeys(p["component"] for p in parts))
    lines = ["| algorithm | " + " | ".join(components) + " |", "|---|" + "---|" * len(components)]
    for name in dict.fromkeys(p["algorithm"] for p in parts):
        cells = [f"{p['gain']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" for c in components for p in parts
                 if p["algorithm"] == name and p["component"] == c]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "gain over the reference per reward component, mean over seeds [95% CI over prompts and seeds]\n\n" + \
        "\n".join(lines) + "\n"


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise AlolError(f"--seeds {text!r}: {err}; write plan.seed_offset values as integers, comma-separated "
                        "(e.g. 0,1,2).") from None


def parse_versus(text: str | None) -> list[tuple[str, str]] | None:
    if text is None:
        return None
    pairs = [tuple(p.strip().split(":")) for p in text.split(",") if p.strip()]
    bad = [":".join(p) for p in pairs if len(p) != 2]
    if bad:
        raise AlolError(f"--versus {text!r}: write pairs as a:b, comma-separated (e.g. a_lol:nll,a_lol:wbc).")
    return pairs


def main(algorithms: str = typer.Option("all", help="Comma-separated algorithms, or 'all' (online ones included)."),
         seeds: str = typer.Option(None, help="Comma-separated plan.seed_offset values (default: params.yaml's)."),
         versus: str = typer.Option(None, help="Head-to-head pairs a:b,... (default: a_lol:nll,a_lol:wbc where run)."),
         eval_every: int = typer.Option(None, help="Set finetune.train.eval_every for every run (learning curves; "
                                                   "the best validation weights are then kept)."),
         settings: list[str] = typer.Option([], "--set", help="Another `-S key=value` for every run (repeatable), "
                                                              "e.g. --set plan.steps=60."),
         resume: bool = typer.Option(False, help="Reuse the runs already in --out/runs (an interrupted comparison "
                                                 "goes on where it stopped; same settings assumed)."),
         redraw: bool = typer.Option(False, help="A seed also redraws the split's validation groups and kept train "
                                                 "rows (clean.splits.redraw), so the reference, value and advantages "
                                                 "rerun per seed; the test rows stay fixed."),
         out: Path = typer.Option(Path("results/compare"), help="Folder for the tables and figures."),
         root: Path = typer.Option(Path("."), help="The DVC project (with params.yaml and dvc.yaml).")):
    """Run every (algorithm, seed) as a DVC experiment on the cached upstream and tabulate the results."""
    from alol.core.stage import exit_with_error

    names = list(ALGORITHMS) if algorithms == "all" else [a.strip() for a in algorithms.split(",") if a.strip()]
    try:
        frame = compare(names, root, out, parse_seeds(seeds), parse_versus(versus), eval_every, settings, resume,
                        redraw)
    except AlolError as err:  # reported as every stage reports it
        exit_with_error(err)
    print((out / "table.md").read_text())
    if (out / "versus.md").exists():
        print((out / "versus.md").read_text())
    print(f"wrote {out}/: table.{{csv,md,json}}, versus, components.md, runs/, PNGs ({frame.height} rows)")


if __name__ == "__main__":
    typer.run(main)
