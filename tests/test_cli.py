"""What every stage command shows a user: a one-line description in --help; and the installed `alol` command."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alol import pipeline
from conftest import REPO, run_stage

STAGES = sorted(p.name for p in (REPO / "stages").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("script", STAGES)
def test_help_starts_with_the_stage_description(script):
    doc = ast.get_docstring(ast.parse((REPO / "stages" / script).read_text()))
    first = " ".join(doc.split("\n\n")[0].split())
    proc = run_stage(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert first[:60] in " ".join(proc.stdout.replace("│", " ").split())


# --- the installed `alol` command (alol/cli.py) ----------------------------------------------------------

ALOL = Path(sys.executable).with_name("alol")  # the console script pip installs beside the interpreter


def alol(*args, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    assert ALOL.exists(), f"{ALOL}: no alol command; install the package (pip install -e .)"
    return subprocess.run([str(ALOL), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def flat(text: str) -> str:
    """Help text on one line, rich's box characters and wrapping removed."""
    return " ".join(text.replace("│", " ").split())


def test_alol_help_lists_every_stage_with_its_description():
    proc = alol("--help")
    assert proc.returncode == 0, proc.stderr
    shown = flat(proc.stdout)
    for script in STAGES:
        name = script.removesuffix(".py")
        doc = " ".join(ast.get_docstring(ast.parse((REPO / "stages" / script).read_text())).split("\n\n")[0].split())
        assert doc.startswith(f"{name}: ")
        assert f"{name} {doc.removeprefix(f'{name}: ')[:50]}" in shown, name
    assert "init Write a pipeline for your data" in shown and "export Write the policy" in shown


@pytest.mark.parametrize("script", STAGES)
def test_alol_stage_is_the_stage_script(script, tmp_path):
    """`alol <stage>` parses exactly what `python stages/<stage>.py` does (its usage, named `alol <stage>`),
    from any folder."""
    name = script.removesuffix(".py")
    proc = alol(name, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: alol {name} [OPTIONS]" in flat(proc.stdout)
    script_help = run_stage(script, "--help").stdout
    assert flat(proc.stdout).split("[OPTIONS]", 1)[1] == flat(script_help).split("[OPTIONS]", 1)[1]


def test_errors_name_the_command_as_typed(tmp_path):
    proc = alol("clean", "data/assets", "data/clean", "stats.json", "--params", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "error (alol clean): missing.yaml: no such params file" in flat(proc.stderr)
    proc = run_stage("clean.py", "data/assets", "data/clean", "stats.json", "--params", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "error (clean): missing.yaml" in flat(proc.stderr)


def test_pyproject_installs_every_package_and_the_stages():
    """pyproject lists the packages (alol.stages lives outside alol/, so find cannot): every alol/ package is
    there, stages/ is alol.stages, and alol/params.yaml (what alol init copies) is the root's params.yaml."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "alol").rglob("__init__.py")}
    assert set(setup["packages"]) == found | {"alol.stages"}
    assert setup["package-dir"] == {"alol.stages": "stages"}
    assert (REPO / "alol" / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()


def test_the_built_wheel_runs_the_stages_from_anywhere(tmp_path):
    """A non-editable install (the wheel) has the stages, the alol command and the params alol init writes."""
    import shutil
    import zipfile

    # built from a copy of the repository's files (links kept as links): an in-tree build would reuse build/
    source = tmp_path / "source"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name, follow_symlinks=False)
    assert (source / "alol" / "params.yaml").is_symlink()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(tmp_path / "dist")],
                          cwd=source, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel, = (tmp_path / "dist").glob("alol-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        params = zf.read("alol/params.yaml")
    assert {f"alol/stages/{s}" for s in STAGES} | {"alol/stages/__init__.py", "alol/cli.py"} <= names
    assert not [n for n in names if n.startswith(("stages/", "tests/"))]
    assert "alol = alol.cli:main" in entry_points
    assert params == (REPO / "params.yaml").read_bytes()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = ("import alol, alol.stages.clean as c; from alol import pipeline as p; "
             "print(alol.__file__, c.__file__, p.STAGE_FOLDER, sorted(s.name for s in p.STAGES if p.builds_reward(s)))")
    proc = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split()[:3]
    assert all(f.startswith(str(site)) for f in files), files
    assert proc.stdout.split(None, 3)[3].strip() == str(sorted(s.name for s in pipeline.STAGES if pipeline.builds_reward(s)))
    proc = subprocess.run([str(site / "bin" / "alol"), "clean", "a", "b", "c.json", "--params", "none.yaml"],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "error (alol clean): none.yaml: no such params file" in flat(proc.stderr)
