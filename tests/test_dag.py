"""dvc.yaml and pipelines/*/dvc.yaml: every stage's deps cover the code it runs, and the HH
pipeline's copies of the root's stages agree with them except where the task differs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINES = [REPO / "dvc.yaml", *sorted((REPO / "pipelines").glob("*/dvc.yaml"))]


def imported_modules(path: Path) -> set[str]:
    """alol.* modules `path` imports, at the top or inside functions (`from alol import x` too).
    Not followed: alol.core.params' registry imports each section's module by name to check a params
    file, which can fail a stage but never change what it writes."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "alol"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "alol":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # a submodule, if it is one
    return found


def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None  # a name imported from a module, not a module


def runs_code(path: Path) -> bool:
    """An __init__.py with only a docstring and constants (alol/__init__.py) runs nothing worth a dep."""
    if path.name != "__init__.py":
        return True
    return any(not isinstance(n, (ast.Expr, ast.Assign)) for n in ast.parse(path.read_text()).body)


def closure(script: Path) -> set[Path]:
    """Every repository file `script` runs: itself, the alol modules it imports, transitively, and
    the packages they live in."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing alol.rewards.x runs alol/rewards/__init__.py
                found = module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return {p for p in seen if runs_code(p)}


def stages(pipeline: Path) -> dict[str, dict]:
    return yaml.safe_load(pipeline.read_text())["stages"]


def stage_script(pipeline: Path, stage: dict) -> Path:
    match = re.search(r"python\s+(\S*stages/\w+\.py)", stage["cmd"])
    assert match, stage["cmd"]
    return (pipeline.parent / match.group(1)).resolve()


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


def dep_paths(pipeline: Path, stage: dict) -> list[Path]:
    return [(pipeline.parent / d).resolve() for d in stage.get("deps", [])]


def scores_with_the_reward(runs: set[Path]) -> bool:
    """The stage builds the task's reward (alol.rewards.annotate.load_reward), so it reads the reward's assets."""
    return any("load_reward(" in p.read_text() for p in runs if p != REPO / "alol" / "annotate.py")


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_deps_cover_the_code_each_stage_runs(pipeline):
    all_stages = stages(pipeline)
    # the reward's assets: what annotate (the stage that defines the reward) reads from data/assets
    reward_assets = [d for d in all_stages["annotate"]["deps"] if "data/assets/" in d]
    missing = {}
    for name, stage in all_stages.items():
        deps = dep_paths(pipeline, stage)
        runs = closure(stage_script(pipeline, stage))
        lacking = sorted(str(p.relative_to(REPO)) for p in runs if not covered(p, deps))
        if scores_with_the_reward(runs):
            lacking += [d for d in reward_assets if d not in stage["deps"]]
        if lacking:
            missing[name] = lacking
    assert missing == {}, f"{pipeline.relative_to(REPO)}: deps miss code (or reward assets) the stage runs"


def test_closure_follows_imports_inside_functions():
    """stages/finetune.py imports alol.algorithms.finetune, whose make_validator imports alol.rewards.annotate inside the
    function, which imports alol.rewards (a package: its __init__.py and components.py)."""
    runs = {str(p.relative_to(REPO)) for p in closure(REPO / "stages" / "finetune.py")}
    assert {"alol/algorithms/finetune.py", "alol/rewards/annotate.py", "alol/rewards/__init__.py", "alol/rewards/components.py",
            "alol/algorithms/losses.py"} <= runs
    assert "alol/__init__.py" not in runs  # a version string runs nothing


def without_prefix(path: str, pipeline: Path) -> str:
    """A dep as the root pipeline writes it: ../../alol/x.py -> alol/x.py."""
    return str((pipeline.parent / path).resolve().relative_to(REPO)) if path.startswith("..") else path


def is_code(path: str) -> bool:
    return path.startswith(("alol/", "stages/"))


# Where a task pipeline's stage may differ from the root's, and why. Anything else must agree.
ALLOWED = {
    "hh": {
        # data and asset deps are the task's own (PRO's files, reward models from the hub)
        "data_deps": {"download", "clean", "annotate", "train_reference", "estimate_value", "advantages", "sample",
                      "plan", "finetune", "evaluate_reference", "evaluate"},
        "code_deps": {},  # the same stage scripts run the same code
        # clean: HH's reader (alol/tasks/hh.py) reads no `base` setting; chit-chat's drops rows over
        # base's token limits and splits with base.seed
        "params": {"clean": {"base"}},
    },
    "reddit": {
        # data and asset deps are the task's own (the Kaggle CSVs, reward models from the hub or a folder);
        # annotate also reads the pos + neg train replies that the tf-idf diversity is fit on
        "data_deps": {"download", "clean", "annotate", "train_reference", "estimate_value", "advantages", "sample",
                      "plan", "finetune", "evaluate_reference", "evaluate"},
        "code_deps": {},
        # clean: the Reddit reader reads no `base` setting (its limits are the authors', in `clean:`)
        "params": {"clean": {"base"}},
        # clean also writes train_replies.parquet (both sides' train replies: the authors fit tf-idf on them)
        "outs": {"clean": {"data/clean/train_replies.parquet"}},
    },
}
# the noisy task: the root's stages, clean also reading the Kaggle insult comments
ALLOWED["noisy"] = {"data_deps": {"clean"}, "code_deps": {}, "params": {}}
# WoW / FaithDial and COMET: the reward models are hub ids / folders used in place (no reward assets
# from data/assets, unlike the root's toxicity and MiniLM), and clean reads the task's own data.
_REWARD_STAGES = {"clean", "annotate", "estimate_value", "sample", "finetune", "evaluate_reference", "evaluate"}
for _task in ("wow", "faithdial", "faithdial_wow", "comet"):
    ALLOWED[_task] = {"data_deps": _REWARD_STAGES, "code_deps": {}, "params": {}}


@pytest.mark.parametrize("pipeline", PIPELINES[1:], ids=lambda p: p.parent.name)
def test_task_pipeline_stages_agree_with_the_root(pipeline):
    root, task = stages(REPO / "dvc.yaml"), stages(pipeline)
    allowed = ALLOWED[pipeline.parent.name]
    problems = []
    for name, stage in task.items():
        if name not in root:
            continue
        mine = stage["cmd"].replace("../../stages/", "stages/").split()
        if mine != root[name]["cmd"].split():
            problems.append(f"{name}: cmd {stage['cmd']!r} != root {root[name]['cmd']!r}")
        deps = {without_prefix(d, pipeline) for d in stage["deps"]}
        root_deps = set(root[name]["deps"])
        code_diff = {d for d in deps ^ root_deps if is_code(d)} - allowed["code_deps"].get(name, set())
        if code_diff:
            problems.append(f"{name}: code deps differ: {sorted(code_diff)}")
        data_diff = {d for d in deps ^ root_deps if not is_code(d)}
        if data_diff and name not in allowed["data_deps"]:
            problems.append(f"{name}: data deps differ: {sorted(data_diff)}")
        params = {str(p) for p in stage.get("params", [])} ^ {str(p) for p in root[name].get("params", [])}
        if params - allowed["params"].get(name, set()):
            problems.append(f"{name}: params differ: {sorted(params)}")
        extra = allowed.get("outs", {}).get(name, set())
        outs = [o for o in stage.get("outs", []) if not (isinstance(o, str) and o in extra)]
        if (outs, stage.get("metrics")) != (root[name].get("outs"), root[name].get("metrics")):
            problems.append(f"{name}: outs or metrics differ")
    assert problems == []


def test_artifact_descriptions_are_the_tasks_own():
    """The HH pipeline's reference is the QLoRA HH SFT adapter taken as is, not an NLL run."""
    hh = yaml.safe_load((REPO / "pipelines" / "hh" / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "pipelines" / "hh" / "params.yaml").read_text())
    root = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert params["train_reference"]["source"] in hh["artifacts"]["reference"]["desc"]
    for name in hh["artifacts"]:
        assert hh["artifacts"][name]["desc"] != root["artifacts"][name]["desc"], name
