"""The stage graph (alol/pipeline.py): the committed dvc.yaml files are its rendering, and every rendered
stage's deps cover the code it runs (an import closure computed here, apart from the renderer's)."""

from __future__ import annotations

import ast
import functools
import re
import shutil
from pathlib import Path

import pytest
import yaml

from alol import pipeline
from alol.core.errors import AlolError

REPO = Path(__file__).resolve().parents[1]
PIPELINES = [REPO / "dvc.yaml", *sorted((REPO / "pipelines").glob("*/dvc.yaml"))]
TASK_PIPELINES = PIPELINES[1:]


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
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
    return frozenset(found)


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


def stages(path: Path) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["stages"]


def stage_script(path: Path, stage: dict) -> Path:
    match = re.search(r"python\s+(\S*stages/\w+\.py)", stage["cmd"])
    assert match, stage["cmd"]
    return (path.parent / match.group(1)).resolve()


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


def dep_paths(path: Path, stage: dict) -> list[Path]:
    return [(path.parent / d).resolve() for d in stage.get("deps", [])]


@functools.cache
def calls_load_reward(path: Path) -> bool:
    """`path` builds the task's reward: it calls alol.rewards.annotate.load_reward (defining it is not calling it)."""
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "load_reward"
               for n in ast.walk(ast.parse(path.read_text())))


def rel(path: Path, pipeline_file: Path) -> str:
    """A dep as the root pipeline writes it: ../../alol/x.py -> alol/x.py."""
    return (pipeline_file.parent / path).resolve().relative_to(REPO).as_posix() if str(path).startswith("..") else str(path)


def test_committed_files_are_the_rendering():
    """Every dvc.yaml and each task pipeline's DVC project files are what `python -m alol.pipeline render`
    writes: a change to the graph, a stage's imports or a params.yaml's task / reward needs a re-render."""
    stale = [str(p.relative_to(REPO)) for p, text in pipeline.expected_files().items()
             if not p.exists() or p.read_text() != text]
    assert stale == [], "run `python -m alol.pipeline render` and commit the files"
    assert {p.parent for p in PIPELINES} == set(pipeline.pipeline_folders())  # no dvc.yaml is hand-kept
    assert pipeline.main(["check"]) == 0


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_deps_cover_the_code_each_stage_runs(path):
    all_stages = stages(path)
    # the reward's assets: what annotate (the stage that defines the reward) reads from data/assets
    reward_assets = [d for d in all_stages["annotate"]["deps"] if "data/assets/" in d]
    missing, scoring = {}, set()
    for name, stage in all_stages.items():
        deps = dep_paths(path, stage)
        runs = closure(stage_script(path, stage))
        lacking = sorted(str(p.relative_to(REPO)) for p in runs if not covered(p, deps))
        if any(calls_load_reward(p) for p in runs):
            scoring.add(name)
            lacking += [d for d in reward_assets if d not in stage["deps"]]
        if lacking:
            missing[name] = lacking
    assert missing == {}, f"{path.relative_to(REPO)}: deps miss code (or reward assets) the stage runs"
    # the stages the renderer gives the reward's assets are the ones whose code builds the reward
    assert scoring == {s.name for s in pipeline.STAGES if pipeline.builds_reward(s)}


def test_closure_follows_imports_inside_functions():
    """stages/finetune.py imports alol.algorithms, whose ppo_trainer imports alol.rewards.annotate inside a
    function, which imports alol.rewards (a package: its __init__.py and components.py)."""
    runs = {str(p.relative_to(REPO)) for p in closure(REPO / "stages" / "finetune.py")}
    assert {"alol/algorithms/finetune.py", "alol/rewards/annotate.py", "alol/rewards/__init__.py", "alol/rewards/components.py",
            "alol/algorithms/offline.py", "alol/algorithms/run.py"} <= runs
    assert "alol/__init__.py" not in runs  # a version string runs nothing
    assert {p.relative_to(REPO).as_posix() for p in pipeline.code_closure(REPO / "stages" / "finetune.py")} == runs


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_finetune_and_evaluate_cover_every_algorithm_and_reward_type(path):
    """`dvc exp run -S algorithm=...` or another reward type switches the code without a re-render: finetune
    depends on every file of alol/algorithms and alol/rewards, every scoring stage on every file of alol/rewards."""
    every = {folder: {f for f in pipeline.package_files(folder) if f.endswith(".py")}
             for folder in ("alol/algorithms", "alol/rewards")}
    all_stages = stages(path)
    for name, folders in {"finetune": ("alol/algorithms", "alol/rewards"), "evaluate": ("alol/rewards",),
                          "evaluate_reference": ("alol/rewards",), "annotate": ("alol/rewards",)}.items():
        deps = {rel(d, path) for d in all_stages[name]["deps"]}
        for folder in folders:
            assert every[folder] <= deps, (name, sorted(every[folder] - deps))
    # the online families' inputs too: the train prompts and the fitted reward
    assert {"data/annotated/train.parquet", "data/annotated/reward_state.json"} <= set(all_stages["finetune"]["deps"])


def test_code_deps_are_files_so_bytecode_never_changes_them():
    """In a `dvc init --subdir` pipeline ../../alol lies outside the DVC project, where no .dvcignore applies:
    a folder dep would change whenever Python writes __pycache__ into it."""
    for path in PIPELINES:
        for name, stage in stages(path).items():
            code = [rel(d, path) for d in stage["deps"] if rel(d, path).startswith(("alol", "stages"))]
            assert all((REPO / d).is_file() for d in code), (path, name)


@pytest.mark.parametrize("path", TASK_PIPELINES, ids=lambda p: p.parent.name)
def test_task_pipeline_runs_the_roots_stages(path):
    """A task pipeline's stages are the root's (commands with ../../, outs, params, metrics, plots); only the
    task's assets and its clean stage (params, extra tables) differ."""
    root, task = yaml.safe_load((REPO / "dvc.yaml").read_text()), yaml.safe_load(path.read_text())
    assert (task["metrics"], task["plots"]) == (root["metrics"], root["plots"])
    assert list(task["stages"]) == list(root["stages"])
    for name, stage in task["stages"].items():
        assert stage["cmd"] == root["stages"][name]["cmd"].replace("python stages/", "python ../../stages/")
        if name != "clean":
            assert (stage["outs"], stage["params"]) == (root["stages"][name]["outs"], root["stages"][name]["params"])
        code = {rel(d, path) for d in stage["deps"] if rel(d, path).startswith(("alol", "stages"))}
        assert code == {d for d in root["stages"][name]["deps"] if d.startswith(("alol", "stages"))}, name


def asset_deps(path: Path) -> dict[str, list[str]]:
    return {name: sorted(d for d in s["deps"] if d.startswith("data/assets")) for name, s in stages(path).items()
            if any(d.startswith("data/assets") for d in s["deps"])}


def test_asset_deps_per_task():
    """Worked out by hand from what each task's reader and each reward type read (the old hand-kept table)."""
    default_reward = ["data/assets/minilm", "data/assets/toxicity"]  # relevance (MiniLM), safety (Jigsaw BiLSTM)
    scoring = ("annotate", "estimate_value", "sample", "finetune", "evaluate_reference", "evaluate")
    # the dataset task reads its source where it is (here the messages file download writes) and the policy
    chats = "data/assets/chitchat/conversations.jsonl"
    root = {"clean": [chats, "data/assets/policy"], "train_reference": ["data/assets/policy"],
            **{name: default_reward for name in scoring}}
    assert asset_deps(REPO / "dvc.yaml") == root
    # noisy: the root's, and clean mixes in the Kaggle insults that download.insults fetches
    assert asset_deps(REPO / "pipelines" / "noisy" / "dvc.yaml") == {
        **root, "clean": [chats, "data/assets/insults", "data/assets/policy"]}
    # the other tasks' rewards are hub ids / folders used in place: no reward assets
    assert asset_deps(REPO / "pipelines" / "hh" / "dvc.yaml") == {"clean": ["data/assets/hh"]}
    # reddit's reference is an NLL run from the downloaded policy (a dep the hand-kept file lacked)
    assert asset_deps(REPO / "pipelines" / "reddit" / "dvc.yaml") == {"clean": ["data/assets/policy", "data/assets/reddit"],
                                                                      "train_reference": ["data/assets/policy"]}
    assert asset_deps(REPO / "pipelines" / "comet" / "dvc.yaml") == {"clean": ["data/assets/comet"],
                                                                     "train_reference": ["data/assets/policy"]}
    for name in ("wow", "faithdial", "faithdial_wow"):
        assert asset_deps(REPO / "pipelines" / name / "dvc.yaml") == {
            "clean": ["data/assets/policy", "data/assets/wow"], "train_reference": ["data/assets/policy"]}, name


def test_clean_stage_per_task():
    """hh's and reddit's readers read no `base:`; reddit's also writes both sides' train replies, which the
    tf-idf diversity (rewards.tfidf.fit_on) is fit on in annotate."""
    for name in ("hh", "reddit"):
        assert stages(REPO / "pipelines" / name / "dvc.yaml")["clean"]["params"] == ["clean", "task"]
    assert stages(REPO / "dvc.yaml")["clean"]["params"] == ["base", "clean", "task"]
    reddit = stages(REPO / "pipelines" / "reddit" / "dvc.yaml")
    assert "data/clean/train_replies.parquet" in reddit["clean"]["outs"]
    assert "data/clean/train_replies.parquet" in reddit["annotate"]["deps"]
    assert "data/clean/train_replies.parquet" not in stages(REPO / "dvc.yaml")["annotate"]["deps"]


def test_reward_asset_deps_follow_the_types():
    assert pipeline.reward_asset_deps({"rewards": {"safety": {}, "positivity": {}, "relevance": {"weight": 2}}}) == [
        "data/assets/toxicity", "data/assets/minilm"]
    assert pipeline.reward_asset_deps({"rewards": {"tox": {"type": "safety"}, "also": {"type": "safety"}}}) == [
        "data/assets/toxicity"]
    assert pipeline.reward_asset_deps({"rewards": {"oasst": {"type": "reward_model", "model": "x"}}}) == []
    assert pipeline.reward_fit_deps({"rewards": {"diversity": {}, "d": {"type": "diversity", "fit_on": "a.parquet"}}}) == [
        "a.parquet"]


def test_task_pipelines_are_dvc_projects_of_their_own():
    """`dvc init --subdir` projects sharing the root's cache: the root's `dvc metrics show` / `exp show` list
    the root's pipeline alone."""
    for path in TASK_PIPELINES:
        cache = re.search(r"^\[cache\]\n\s+dir = (\S+)$", (path.parent / ".dvc" / "config").read_text(), re.M)
        # DVC reads a relative cache dir from the folder of the config file
        assert cache and (path.parent / ".dvc" / cache.group(1)).resolve() == REPO / ".dvc" / "cache", path
    ignored = (REPO / ".dvcignore").read_text().splitlines()
    assert "__pycache__/" in ignored and not any(line.startswith("Add patterns") for line in ignored)


def test_artifact_descriptions_are_the_tasks_own():
    """The HH pipeline's reference is the QLoRA HH SFT adapter taken as is, not an NLL run."""
    hh = yaml.safe_load((REPO / "pipelines" / "hh" / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "pipelines" / "hh" / "params.yaml").read_text())
    root = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert params["train_reference"]["source"] in hh["artifacts"]["reference"]["desc"]
    for name in hh["artifacts"]:
        assert hh["artifacts"][name]["desc"] != root["artifacts"][name]["desc"], name


def test_pipeline_tests_copy_new_top_level_files(tmp_path, monkeypatch):
    """The pipeline tests run `dvc repro` in tests/conftest.py's copy of the project: a new top-level file or
    folder is copied before it is committed; outputs git ignores (data/) are not."""
    import subprocess

    import conftest

    repo, dest = tmp_path / "repo", tmp_path / "copy"
    files = {"stages/a.py": "", "alol/c.py": "", "tests/t.py": "", ".gitignore": "/data/\n", "newtool/b.py": "",
             "data/big.bin": "x"}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "stages", "alol", "tests", ".gitignore"], cwd=repo, check=True)
    monkeypatch.setattr(conftest, "REPO", repo)
    dest.mkdir()
    conftest.tracked_copy(dest)
    assert (dest / "stages" / "a.py").exists() and (dest / "newtool" / "b.py").exists()
    assert not (dest / "data").exists()


def test_unknown_task_names_the_known_ones():
    with pytest.raises(AlolError, match="task: 'nope'.*dataset, hh, reddit, wow, comet"):
        pipeline.task_asset_deps("nope", {})


def test_installed_rendering_is_the_same_graph_run_by_the_alol_command():
    """`alol init`'s dvc.yaml (a user's repository) is the same stage graph: each command `alol <script name>`
    with the same arguments, the same data deps, params and outs, and .alol/version in place of the code deps
    (alol's files are not in that repository)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    ours, installed = pipeline.pipeline(params), pipeline.pipeline(params, installed=True)
    assert list(installed["stages"]) == list(ours["stages"])
    assert {k: v for k, v in installed.items() if k != "stages"} == {k: v for k, v in ours.items() if k != "stages"}
    for name, stage in installed["stages"].items():
        mine = ours["stages"][name]
        script = re.match(r"python stages/(\w+)\.py ", mine["cmd"]).group(1)
        assert stage["cmd"] == mine["cmd"].replace(f"python stages/{script}.py", f"alol {script}")
        assert stage["deps"] == [pipeline.VERSION_FILE] + [d for d in mine["deps"] if not d.startswith(("alol/", "stages/"))]
        assert (stage["params"], stage["outs"]) == (mine["params"], mine["outs"])
    text = pipeline.render_text(installed, pipeline.INSTALLED, "# first\n")
    assert text.startswith("# first\n# Your data") and yaml.safe_load(text) == installed


@pytest.mark.parametrize("folder", ["", "pipelines/hh"])
def test_every_stage_refuses_a_dvc_yaml_its_params_have_moved_past(tmp_path, folder):
    """The committed pipelines pass the check every stage runs under DVC (pipeline.check_rendered); a params
    change that adds a dep (here evaluate.rewards, without a re-render) is refused, naming the stages and the
    fix. A stage's other keys are the user's: `frozen`, an `accelerate launch` command and an extra stage pass."""
    for path in PIPELINES:
        pipeline.check_rendered(path.parent)
    copy = tmp_path / folder
    copy.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / folder / name, copy / name)
    dvc = yaml.safe_load((copy / "dvc.yaml").read_text())
    dvc["stages"]["download"]["frozen"] = True
    finetune = dvc["stages"]["finetune"]
    finetune["cmd"] = finetune["cmd"].replace("python ", "accelerate launch --num_processes 2 ")
    dvc["stages"]["report"] = {"cmd": "python make_report.py", "deps": ["results/evaluate/metrics.json"]}
    (copy / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    pipeline.check_rendered(copy)  # still what its params call for
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["evaluate"]["rewards"] = {"relevance": {"type": "relevance"}}
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(AlolError, match=r"stages lack deps that params\.yaml calls for \(.*evaluate: [^;]*"
                                        r"data/annotated/evaluation_reward_state\.json.*python -m alol\.pipeline render"):
        pipeline.check_rendered(copy)
    (copy / "params.yaml").write_text("rewards: [unclosed\n")
    pipeline.check_rendered(copy)  # left to the stage's own params check, which names the line
