"""The stage graph, defined once: every dvc.yaml (the root's and each pipelines/<name>/'s) is rendered from it.

    python -m alol.pipeline render    # write every dvc.yaml (and each task pipeline's .dvc/ project files)
    python -m alol.pipeline check     # exit 1 if a committed file differs from its rendering

A stage's deps are computed, never typed: the code it runs (the import closure of its script, read with
`ast`), the outputs of earlier stages it reads (`inputs`), and the assets its task and its reward read
(from the task's and the reward's records, given that pipeline's params.yaml). DVC still reads plain
dvc.yaml files; only their text comes from here. Commands, outs, params, metrics and plots are the
same in every pipeline; a task pipeline runs the root's stage scripts (../../stages/x.py).

`alol init` renders the same graph for a user's own repository (`installed`): the stages run as the
installed `alol <stage>` command, and `.alol/version` stands in for the library's code, which is not there.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import os
import re
import sys
from pathlib import Path

import yaml

from alol.core.errors import AlolError

REPO = Path(__file__).resolve().parents[1]
RENDERED = "# Rendered by `python -m alol.pipeline render` from alol/pipeline.py: edit that, then render.\n"
# The stage scripts: stages/ in this repository, alol/stages/ in an installed wheel (pyproject's package-dir).
STAGE_FOLDER = next(p for p in (Path(__file__).resolve().parent / "stages", REPO / "stages") if p.is_dir())
VERSION_FILE = ".alol/version"
"""In a user's repository (`alol init`): the installed alol's version, a dep of every stage in place of the
library's code (see alol/tools/init.py)."""
# Packages whose modules a params string picks (`task:`, `rewards.<name>.type`): a stage that touches one
# depends on all of its files, so a module chosen by name is covered too.
REGISTRY_PACKAGES = ("alol/tasks", "alol/rewards")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One DVC stage. Paths are relative to the pipeline's folder; code paths to the repository."""

    name: str
    script: str
    """The stage script under stages/, e.g. 'clean.py' (the command is `python stages/<script> <args>`)."""
    args: str
    """The command's arguments, exactly as DVC runs them (DVC keys its run cache and locks on the command)."""
    inputs: tuple[str, ...]
    """Outputs of earlier stages that this one reads: its data deps (they make the graph's edges)."""
    params: tuple[str, ...]
    outs: tuple[str, ...] = ()
    """Cached outputs."""
    uncached: tuple[str, ...] = ()
    """Outputs DVC does not cache (`cache: false`): metrics, curves, small JSON that git keeps."""
    fits_reward: bool = False
    """Fits the reward on data (annotate: the tf-idf diversity), so it reads what the reward is fit on."""
    covers: tuple[str, ...] = ()
    """Packages depended on whole although the imports may reach only part: finetune picks its algorithm
    family by `algorithm:`, and `dvc exp run -S algorithm=...` switches it without a re-render."""
    comment: str | None = None

    @property
    def command(self) -> str:
        """The stage's `alol` subcommand: its script's name (evaluate_reference runs `alol evaluate`)."""
        return Path(self.script).stem


STAGES = (
    Stage("download", "download.py", "data/assets", (), ("download", "task"), outs=("data/assets",)),
    Stage("clean", "clean.py", "data/assets data/clean results/clean/stats.json", (), ("base", "clean", "task"),
          outs=("data/clean/train.parquet", "data/clean/validation.parquet", "data/clean/test.parquet"),
          uncached=("results/clean/stats.json",)),
    Stage("annotate", "annotate.py", "data/clean data/assets data/annotated results/annotate/reward_stats.json",
          ("data/clean/train.parquet", "data/clean/validation.parquet", "data/clean/test.parquet"),
          ("rewards", "evaluate.rewards"),
          outs=("data/annotated",), uncached=("results/annotate/reward_stats.json",), fits_reward=True),
    Stage("train_reference", "train_reference.py",
          "data/annotated data/assets models/reference results/train_reference "
          "--checkpoint-dir data/checkpoints/train_reference",
          ("data/annotated/train.parquet",), ("base", "model", "train_reference"), outs=("models/reference",),
          uncached=("results/train_reference/live", "results/train_reference/summary.json")),
    Stage("estimate_value", "estimate_value.py",
          "data/annotated data/assets models/reference models/value results/estimate_value",
          ("data/annotated/validation.parquet", "data/annotated/reward_state.json", "models/reference"),
          ("base", "model", "rewards", "estimate_value"),
          outs=("models/value", "results/estimate_value/generations.parquet"),
          uncached=("results/estimate_value/fit_curve.json", "results/estimate_value/metrics.json",
                    "results/estimate_value/details.json")),
    Stage("advantages", "advantages.py", "data/annotated models/reference models/value data/advantages results/advantages",
          ("data/annotated/train.parquet", "models/reference", "models/value"), ("base", "model"),
          outs=("data/advantages",), uncached=("results/advantages/histogram.json", "results/advantages/metrics.json",
                                               "results/advantages/details.json")),
    Stage("sample", "sample.py", "data/annotated data/assets models/reference data/pairs.parquet results/sample.json",
          ("data/annotated/train.parquet", "data/annotated/reward_state.json", "models/reference"),
          ("base", "model", "rewards", "sample"), outs=("data/pairs.parquet",), uncached=("results/sample.json",), comment="preference pairs for dpo / dpo_ref_free / pro: data reply vs a reference reply"),
    Stage("plan", "plan.py", "data/advantages/train.parquet data/plans.parquet results/plan.json --pairs data/pairs.parquet",
          ("data/advantages/train.parquet", "data/pairs.parquet"), ("base.seed", "plan", "finetune.train.batch_size"),
          outs=("data/plans.parquet",), uncached=("results/plan.json",)),
    # every family's inputs: the offline losses read the advantages and the plan, the preference losses the
    # pairs, the online ones (ppo / grpo / rloo) the train prompts and the fitted reward
    Stage("finetune", "finetune.py",
          "data/advantages data/plans.parquet models/reference models/policy results/finetune "
          "--pairs data/pairs.parquet --annotated data/annotated --assets data/assets "
          "--checkpoint-dir data/checkpoints/finetune",
          ("data/advantages", "data/plans.parquet", "data/pairs.parquet", "data/annotated/train.parquet",
           "data/annotated/validation.parquet", "data/annotated/reward_state.json", "models/reference"),
          ("base", "model", "rewards", "algorithm", "finetune"), outs=("models/policy",),
          uncached=("results/finetune/live", "results/finetune/summary.json"),
          covers=("alol/algorithms",)),
    Stage("evaluate_reference", "evaluate.py", "models/reference data/annotated data/assets results/evaluate_reference",
          ("data/annotated/test.parquet", "data/annotated/reward_state.json", "models/reference"),
          ("base", "model", "rewards", "evaluate"), outs=("results/evaluate_reference/generations.parquet",),
          uncached=tuple(f"results/evaluate_reference/{f}" for f in (
              "metrics.json", "details.json", "reward_distribution.json", "reward_distribution.png")), comment="once per reference: every experiment compares with these replies"),
    Stage("evaluate", "evaluate.py",
          "models/policy data/annotated data/assets results/evaluate "
          "--reference models/reference --baseline results/evaluate_reference/generations.parquet",
          ("data/annotated/test.parquet", "data/annotated/reward_state.json", "models/policy", "models/reference",
           "results/evaluate_reference/generations.parquet"),
          ("base", "model", "rewards", "evaluate"), outs=("results/evaluate/generations.parquet",),
          uncached=tuple(f"results/evaluate/{f}" for f in (
              "metrics.json", "details.json", "reward_distribution.json", "reward_distribution.png"))),
)

METRICS = ("results/evaluate/metrics.json", "results/estimate_value/metrics.json", "results/advantages/metrics.json")
METRICS_COMMENT = "the headline `dvc exp show` carries; every detail is in the stages' details.json"
PLOTS = [
    {"Test reward (policy vs reference vs gold)": {
        "template": "linear", "x": "bin", "y": {"results/evaluate/reward_distribution.json": ["policy", "reference", "gold"]}}},
    "results/evaluate/reward_distribution.png",
    {"Finetune loss": {"x": "step", "y": {"results/finetune/live/plots/metrics/loss.tsv": "loss"}}},
    {"Finetune advantage and ratio": {
        "x": "step", "y": {"results/finetune/live/plots/metrics/ratio/clip_fraction.tsv": "clip_fraction"}}},
    {"Finetune tokens/s": {"x": "step", "y": {"results/finetune/live/plots/metrics/tokens_per_second.tsv": "tokens_per_second"}}},
    {"Reference NLL loss": {"x": "step", "y": {"results/train_reference/live/plots/metrics/loss.tsv": "loss"}}},
    {"Value head MSE (train rows, epoch-selection rows)": {
        "x": "step", "y": {"results/estimate_value/fit_curve.json": ["select_mse", "train_mse"]}}},
    {"Train advantages": {"template": "bar_horizontal_sorted", "x": "rows", "y": {"results/advantages/histogram.json": "advantage"}}},
    {"Test reward per algorithm (python -m alol.compare)": {
        "template": "bar_horizontal_sorted", "x": "reward", "y": {"results/compare/table.csv": "algorithm"}}},
    "results/compare/reward.png",
]


@dataclasses.dataclass(frozen=True)
class Texts:
    """A pipeline's words: the comment at the top of its dvc.yaml and its artifacts' descriptions."""

    header: str = ""
    policy: str = "The fine-tuned policy (LoRA adapter on models/reference, or a full model), algorithm from params.yaml"
    reference: str = "The reference policy pi_ref (NLL on the train replies)"


def _knowledge(name: str) -> Texts:
    return Texts(
        "The paper's knowledge-grounded dialogue tasks: Wizard of Wikipedia / FaithDial (clean.dataset: wow,\n"
        "faithdial or faithdial_wow), DialoGPT-medium, rewards CoLA + FaithCritic + DialogRPT-depth + tf-idf.\n"
        "The same stage commands as the root pipeline; the task's settings live in params.yaml beside this file.\n"
        f"  cd pipelines/{name} && dvc repro",
        f"The {name} policy: DialoGPT-medium fine-tuned in full from the NLL reference, algorithm from params.yaml",
        f"The reference policy pi_ref: DialoGPT-medium trained with NLL on the {name} train replies")


# Keyed by the pipeline's folder ("" is the root); a new pipelines/<name>/params.yaml renders with Texts().
TEXTS = {
    "": Texts("The default task, chit-chat (see params.yaml): `dvc repro`; another task: cd pipelines/<name>."),
    "comet": Texts(
        "The paper's COMET task: ATOMIC-10x triples, the COMET-distill GPT2-XL policy, the COMET critic as reward.\n"
        "The same stage commands as the root pipeline; the task's settings live in params.yaml beside this file.\n"
        "  cd pipelines/comet && dvc repro",
        "The COMET policy: COMET-distill GPT2-XL fine-tuned in full from the NLL reference, algorithm from params.yaml",
        "The reference policy pi_ref: COMET-distill GPT2-XL trained with NLL on the ATOMIC-10x train tails"),
    "faithdial": _knowledge("faithdial"),
    "faithdial_wow": _knowledge("faithdial_wow"),
    "wow": _knowledge("wow"),
    "hh": Texts(
        "The paper's Helpful-Harmless assistant run (HHA): PRO's data, OASST reward models, LLaMA-7B\n"
        "QLoRA continuing the QLoRA HH adapter. The same stage commands as the root pipeline; the\n"
        "task's settings live in params.yaml beside this file.   cd pipelines/hh && dvc repro",
        "The HH policy, the reference's QLoRA adapter (r 64) trained further on the 4-bit LLaMA-7B, algorithm "
        "from params.yaml",
        "The reference policy pi_ref, the QLoRA HH SFT adapter timdettmers/qlora-hh-rlhf-7b on LLaMA-7B taken "
        "as is (train_reference.source; no NLL stage)"),
    "noisy": Texts(
        "The noisy-data task: the default chit-chat task with 40% of the train replies replaced by real bad\n"
        "ones (20% Kaggle insult comments, 20% human replies from another conversation; alol/tasks/noise.py).\n"
        "Validation and test stay clean. The same stage commands as the root pipeline; the settings live in\n"
        "params.yaml beside this file.   cd pipelines/noisy && dvc repro"),
    "reddit": Texts(
        "The paper's Reddit response generation (reddit_pos / reddit_neg: `clean.train`): the Kaggle comment-\n"
        "score CSVs, DialoGPT-medium fully fine-tuned, the five-component reward (CoLA fluency, ToxiChat\n"
        "safety, DialogRPT depth and updown, tf-idf diversity). The same stage commands as the root pipeline;\n"
        "the task's settings live in params.yaml beside this file.   cd pipelines/reddit && dvc repro",
        "The Reddit policy, DialoGPT-medium fully fine-tuned from the NLL reference on the chosen train side "
        "(clean.train pos / neg), algorithm from params.yaml",
        "The Reddit reference policy pi_ref, DialoGPT-medium fine-tuned with NLL on the chosen train side"),
}


# --- what the task and the reward read: the registries' answers ---------------------------------------

def _task(task: str):
    from alol.tasks import TASKS

    if task not in TASKS:
        raise AlolError(f"params.yaml: task: {task!r} is not a task; known tasks: {', '.join(TASKS)}.")
    return TASKS[task]


def task_asset_deps(task: str, params: dict) -> dict[str, list[str]]:
    """Stage name -> the data/assets paths that stage reads for `task` (params: the pipeline's params.yaml):
    clean reads what the task's record declares for its clean settings; train_reference trains from the
    downloaded policy unless `train_reference.source` names a model or adapter used as is."""
    from alol.core.params import from_dict

    record = _task(task)
    clean = from_dict(record.config, params.get("clean") or {}, "params.yaml: clean")
    deps = {"clean": [*record.data(clean), *(f"data/assets/{name}" for name in record.assets(clean))]}
    if (params.get("train_reference") or {}).get("source", "train") == "train":
        deps["train_reference"] = ["data/assets/policy"]
    return deps


def task_clean_params(task: str) -> tuple[str, ...]:
    """The params sections the clean stage reads for `task`."""
    return ("base", "clean", "task") if _task(task).reads_base else ("clean", "task")


def task_clean_outs(task: str) -> tuple[str, ...]:
    """Tables the task's reader writes besides train / validation / test (cached, under data/clean)."""
    return tuple(f"data/clean/{name}.parquet" for name in _task(task).extra_tables)


def reward_asset_deps(params: dict, evaluation: bool = False) -> list[str]:
    """The data/assets paths the reward in `params` (`rewards:`, and with `evaluation` evaluate.rewards:)
    reads, wherever it is built: each component's reward-type record says which asset folders it reads
    (hub ids and folders are used in place)."""
    from alol import rewards

    return rewards.asset_deps(rewards.every_reward_config(params, evaluation))


def reward_fit_deps(params: dict) -> list[str]:
    """Files the rewards are fit on besides the train split (a diversity component's `fit_on`)."""
    from alol import rewards

    return rewards.fit_deps(rewards.every_reward_config(params))


def evaluation_reward_fitted(params: dict) -> str | None:
    """Where annotate writes evaluate.rewards' fitted state, when evaluate.rewards is set (the evaluations read it)."""
    from alol import rewards
    from alol.rewards.annotate import EVALUATION_FILES

    return None if rewards.evaluation_reward_configs(params) is None else f"data/annotated/{EVALUATION_FILES[0]}"


def uses_evaluation_reward(stage: Stage) -> bool:
    """Whether the stage builds or fits evaluate.rewards (it reads that setting: annotate, the evaluations)."""
    return any(p in ("evaluate", "evaluate.rewards") for p in stage.params)


# --- the code a stage runs -------------------------------------------------------------------------------

@functools.cache  # one render reads each file once, not once per stage and pipeline
def _imported_modules(path: Path) -> frozenset[str]:
    """alol.* modules `path` imports, at the top or inside functions (`from alol.x import y` too: y may be
    a module). Not followed: alol.core.params' registry names each section's module in a string, imported
    to check a params file, which can fail a stage but never change what it writes."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "alol"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "alol":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return frozenset(found)


@functools.cache
def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None  # a name defined in a module, not a module


@functools.cache
def _runs_code(path: Path) -> bool:
    """An __init__.py of only a docstring and constants (alol/__init__.py) runs nothing worth a dep."""
    return path.name != "__init__.py" or any(
        not isinstance(n, (ast.Expr, ast.Assign)) for n in ast.parse(path.read_text()).body)


@functools.cache  # every stage checks the whole graph when DVC runs it (check_rendered)
def code_closure(script: Path) -> frozenset[Path]:
    """Every repository file `script` runs: itself and the alol modules it imports, transitively, with the
    packages they live in (importing alol.rewards.x runs alol/rewards/__init__.py)."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            todo += [f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i]))) is not None]
    return frozenset(p for p in seen if _runs_code(p))


def package_files(folder: str) -> list[str]:
    """Every module of a package (repository-relative): its .py files, so an editor's or a system's stray file
    there (.DS_Store, x.py.swp) is no dep. (A data file a package reads at run time would need adding here.)"""
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / folder).rglob("*.py")
                  if p.is_file() and "__pycache__" not in p.parts)


@functools.cache
def code_deps(stage: Stage) -> tuple[str, ...]:
    """The stage's script first, then the library files it runs (repository-relative); touching a registry
    package or a `covers` folder brings in every file of it. Files, not folders: in a `dvc init --subdir`
    pipeline the library lies outside the DVC project, where no .dvcignore applies, so a folder dep would
    change whenever Python writes __pycache__ into it."""
    folders = (*REGISTRY_PACKAGES, *stage.covers)
    runs = {p.relative_to(REPO).as_posix() for p in code_closure(STAGE_FOLDER / stage.script)}
    touched = set(stage.covers) | {f for f in folders for name in runs if name.startswith(f + "/")}
    deps = runs | {name for f in touched for name in package_files(f)}
    script = f"stages/{stage.script}"
    return (script, *sorted(deps - {script}))


def builds_reward(stage: Stage) -> bool:
    """Whether the code the stage runs builds the task's reward (calls alol.rewards.annotate.load_reward),
    so that it reads the reward's assets. Computed like the code deps: a stage whose closure can reach
    load_reward gets the assets even where that call sits in a branch it does not take (train_reference
    and plan reach the algorithm families), which costs nothing, since their data already depends on them."""
    return any(_calls_load_reward(path) for path in code_closure(STAGE_FOLDER / stage.script))


@functools.cache
def _calls_load_reward(path: Path) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "load_reward"
               for n in ast.walk(ast.parse(path.read_text())))


# --- rendering -----------------------------------------------------------------------------------------

def stage_entry(stage: Stage, params: dict, prefix: str = "", installed: bool = False) -> dict:
    """The stage as its dvc.yaml entry for the pipeline whose params.yaml is `params`; `prefix` leads every
    repository path ('../../' in pipelines/<name>). `installed`: for a user's repository (`alol init`)."""
    task = params.get("task", "dataset")
    deps = ([VERSION_FILE] if installed else [prefix + d for d in code_deps(stage)]) + list(stage.inputs)
    if stage.fits_reward:
        deps += reward_fit_deps(params)
    deps += task_asset_deps(task, params).get(stage.name, [])
    if builds_reward(stage):
        evaluation = uses_evaluation_reward(stage)
        deps += reward_asset_deps(params, evaluation)
        fitted = evaluation_reward_fitted(params)
        if evaluation and fitted and not stage.fits_reward:
            deps.append(fitted)
    outs, params_used = list(stage.outs), list(stage.params)
    if stage.name == "clean":
        outs += task_clean_outs(task)
        params_used = list(task_clean_params(task))
    command = f"alol {stage.command}" if installed else f"python {prefix}stages/{stage.script}"
    return {"cmd": f"{command} {stage.args}",
            "deps": list(dict.fromkeys(deps)), "params": params_used,
            "outs": outs + [{path: {"cache": False}} for path in stage.uncached]}


def pipeline(params: dict, prefix: str = "", texts: Texts = Texts(), installed: bool = False) -> dict:
    """A whole dvc.yaml as data."""
    return {"stages": {s.name: stage_entry(s, params, prefix, installed) for s in STAGES}, "metrics": list(METRICS),
            "plots": PLOTS, "artifacts": {
                "policy": {"path": "models/policy", "type": "model", "desc": texts.policy},
                "reference": {"path": "models/reference", "type": "model", "desc": texts.reference}}}


class _Dumper(yaml.SafeDumper):
    """Block lists indented under their key; a list of plain values on one line ([policy, reference])."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


_Dumper.add_representer(list, lambda d, items: d.represent_sequence(
    "tag:yaml.org,2002:seq", items, flow_style=all(isinstance(i, str) for i in items)))


def _dump(data) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=112, allow_unicode=True)


def _command(cmd: str, width: int = 112) -> str:
    """`cmd:` as a plain scalar folded before its options (YAML reads the line breaks as single spaces)."""
    chunks = [c if i == 0 else "--" + c for i, c in enumerate(cmd.split(" --"))]
    lines = ["    cmd: " + chunks[0]]
    for chunk in chunks[1:]:
        if len(lines[-1]) + 1 + len(chunk) <= width:
            lines[-1] += " " + chunk
        else:
            lines.append("      " + chunk)
    return "\n".join(lines)


def render_text(data: dict, texts: Texts = Texts(), first_line: str = RENDERED) -> str:
    """dvc.yaml text: `first_line` (how it was written), the header, one block per stage (a blank line apart,
    with its comment), then the top-level sections. Parsing the text gives back `data` (checked)."""
    comments = {s.name: s.comment for s in STAGES}
    parts = [first_line + "".join(f"# {line}".rstrip() + "\n" for line in texts.header.splitlines()) + "stages:"]
    for name, entry in data["stages"].items():
        lines = [f"  {name}:" + (f"  # {comments[name]}" if comments[name] else ""), _command(entry["cmd"])]
        for key in ("deps", "params", "outs"):
            lines.append(f"    {key}:")
            for item in entry[key]:
                if isinstance(item, str):
                    lines.append(f"      - {item}")
                else:  # {path: {cache: false}}
                    (path, options), = item.items()
                    lines += [f"      - {path}:", *(f"          {k}: {str(v).lower()}" for k, v in options.items())]
        parts.append("\n".join(lines) + "\n")
    parts.append(f"metrics:  # {METRICS_COMMENT}\n" + "".join(f"  - {m}\n" for m in data["metrics"]))
    parts.append(_dump({"plots": data["plots"]}))
    parts.append(_dump({"artifacts": data["artifacts"]}))
    text = "\n".join(parts)
    if yaml.safe_load(text) != data:
        raise AlolError("alol/pipeline.py: the rendered dvc.yaml does not parse back to the stage graph; "
                        "a path or command needs quoting in render_text.")
    return text


def pipeline_folders(repo: Path = REPO) -> list[Path]:
    """The root and every pipelines/<name>/ that has a params.yaml."""
    return [repo, *sorted(p.parent for p in (repo / "pipelines").glob("*/params.yaml"))]


def rendered(folder: Path, repo: Path = REPO) -> str:
    """The dvc.yaml text for the pipeline in `folder` (the root or pipelines/<name>)."""
    params = yaml.safe_load((folder / "params.yaml").read_text()) or {}
    key = "" if folder == repo else folder.name
    texts = TEXTS.get(key) or Texts(f"The {key} task. The same stage commands as the root pipeline; the task's "
                                    f"settings live in params.yaml beside this file.   cd pipelines/{key} && dvc repro")
    prefix = "../" * len(folder.relative_to(repo).parts)
    return render_text(pipeline(params, prefix, texts), texts)


INSTALLED = Texts("Your data through alol's `dataset` task (params.yaml: clean.source): `dvc repro` runs it end to end,\n"
                  "`dvc exp run -S algorithm=a_lol_kl` another algorithm. Each stage is `alol <stage>` (--help).")


INSTALLED_MARK = "# Written by `alol init`"
"""How the dvc.yaml `alol init` writes begins (`alol render` replaces only such a file)."""
INSTALLED_FIRST_LINE = (f"{INSTALLED_MARK} from alol's stage graph (alol/pipeline.py) and params.yaml; after a change "
                        "there\n# (the reward's, the task's or the policy's settings) or an upgrade of alol, `alol render` "
                        "rewrites it.\n")


def installed_text(params: dict) -> str:
    """The dvc.yaml `alol init` writes into a user's repository whose params.yaml is `params`; called with that
    repository as the current folder (a local `clean.source` is a dep of clean: the task checks it exists)."""
    return render_text(pipeline(params, texts=INSTALLED, installed=True), INSTALLED, INSTALLED_FIRST_LINE)


def check_rendered(folder: Path) -> None:
    """Refuse a dvc.yaml whose stages lack a dep that `folder`'s params.yaml calls for, before DVC runs a stage.

    Part of a stage's deps comes from params, not from the graph: the asset folders and fitted files its
    reward reads, the task's inputs, a local clean.source. After a change there (an edit, or `dvc exp run
    -S rewards...`) without a re-render, DVC would not rerun a stage when such an input changes, and would
    cache its result under the wrong inputs. Every stage calls this when DVC runs it (alol/core/stage.py):
    the first stage DVC runs stops. Only missing deps count: a dep no longer needed costs a rerun at most,
    and a stage's other keys are the user's to change (`frozen`, an `accelerate launch` command, extra
    stages). In a user's repository `.alol/version` must also name the installed alol. A params.yaml that
    does not parse is left to the stage's own params check, which names the problem."""
    try:
        ours = (yaml.safe_load((folder / "dvc.yaml").read_text()) or {}).get("stages") or {}
        params = yaml.safe_load((folder / "params.yaml").read_text())
    except (OSError, yaml.YAMLError, AttributeError):
        return
    ours = {name: entry for name, entry in ours.items() if isinstance(entry, dict)}
    installed = any(VERSION_FILE in (entry.get("deps") or []) for entry in ours.values())
    prefix = "" if installed else next((m.group(1) for entry in ours.values()  # ../../ in pipelines/<task>
                                        if (m := re.search(r"(\S*)stages/\w+\.py", str(entry.get("cmd", ""))))), None)
    if not isinstance(params, dict) or prefix is None:
        return  # not a dvc.yaml of ours, or params the stage's own check reports
    if installed:
        import alol

        words = (folder / VERSION_FILE).read_text().split() if (folder / VERSION_FILE).exists() else []
        if words[-1:] != [alol.__version__]:  # the file ends with the version
            raise AlolError(f"{folder / VERSION_FILE}: does not name the installed alol {alol.__version__}, and every "
                            "stage depends on that file, so DVC would keep results of another version: run `alol "
                            "render` there (it rewrites dvc.yaml and .alol/version), then dvc repro.")
    with working_folder(folder):  # paths such as a local clean.source are checked from the pipeline's folder
        expected = pipeline(params, prefix, installed=installed)["stages"]
    lacking = {name: missing for name, want in expected.items() if name in ours
               if (missing := [d for d in want["deps"] if d not in (ours[name].get("deps") or [])])}
    if lacking:
        fix = "`alol render` there" if installed else "`python -m alol.pipeline render`"
        listed = "; ".join(f"{name}: {', '.join(deps[:3])}" + (f" and {len(deps) - 3} more" if len(deps) > 3 else "")
                           for name, deps in lacking.items())
        raise AlolError(f"{folder / 'dvc.yaml'}: stages lack deps that params.yaml calls for ({listed}), so DVC "
                        f"would not rerun them when those change. Run {fix} to rewrite dvc.yaml, then dvc repro. "
                        "(For `dvc exp run -S` of such a setting: set it in params.yaml and render first.)")


@contextlib.contextmanager
def working_folder(folder: Path):
    """Run the block in `folder` (contextlib.chdir, which Python 3.10 lacks)."""
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


# A task pipeline is a DVC project of its own (`dvc init --subdir`), so the root's `dvc metrics show`,
# `dvc exp show` and `dvc exp run` see the root's pipeline alone, and a task's folder its own. They share
# the root's cache: outputs of runs made before the split stay reachable, and equal files (assets,
# models) are stored once. (`dvc gc` in one project does not see the others' locks: name them with -p.)
PROJECT_FILES = {
    ".dvc/config": "[cache]\n    dir = ../../../.dvc/cache\n",
    ".dvc/.gitignore": "/config.local\n/tmp\n/cache\n",
    ".dvcignore": ("# What DVC skips when it walks this pipeline's folder. Never list an output here: DVC does not\n"
                   "# track an ignored path. (The library, ../../alol, lies outside this DVC project: its deps\n"
                   "# are files, which no .dvcignore needs to filter.)\n"
                   "__pycache__/\n*.pyc\n/dvc_plots/\n/data/checkpoints/\n"),
}


def expected_files(repo: Path = REPO) -> dict[Path, str]:
    """Every file `render` writes: each pipeline's dvc.yaml, and each task pipeline's DVC project files."""
    files = {}
    for folder in pipeline_folders(repo):
        files[folder / "dvc.yaml"] = rendered(folder, repo)
        if folder != repo:
            files |= {folder / name: text for name, text in PROJECT_FILES.items()}
    return files


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command not in ("render", "check"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        files = expected_files()
    except AlolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if command == "check":
        if stale:
            names = ", ".join(str(p.relative_to(REPO)) for p in stale)
            print(f"not as rendered: {names}; run `python -m alol.pipeline render` and commit them.", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
