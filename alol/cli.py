"""The `alol` command (`pip install` puts it on the PATH): the pipeline's stages as subcommands with the
arguments dvc.yaml gives them (`alol clean data/assets data/clean results/clean/stats.json` runs
stages/clean.py, installed as alol.stages.clean), and three commands for your own repository: `alol init`
writes a pipeline for your data there, `alol render` rewrites its dvc.yaml after a change to params.yaml,
`alol export` a standalone checkpoint of the trained policy.

A stage's module is imported only when it runs (each pulls in torch and more), so `alol --help` stays quick:
the stages' one-line descriptions are read from their docstrings.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import typer

from alol import stages as stage_package
from alol.core import stage as stage_support
from alol.core.errors import AlolError

STAGE_PANEL = "Stages (what dvc.yaml runs; same arguments as `python stages/<stage>.py`)"
REPOSITORY_PANEL = "Your own repository"

app = typer.Typer(help="Offline RL fine-tuning of language models (A-LoL and its baselines) as a DVC pipeline.",
                  no_args_is_help=True, add_completion=False)


def stage_names() -> list[str]:
    """The stage modules (stages/*.py), in the pipeline's order (alol/pipeline.py), then any other."""
    from alol.pipeline import STAGES

    order = list(dict.fromkeys(s.command for s in STAGES))
    found = sorted(p.stem for p in Path(stage_package.__path__[0]).glob("*.py") if p.stem != "__init__")
    return sorted(found, key=lambda name: order.index(name) if name in order else len(order))


def description(name: str) -> str:
    """The stage module's first docstring paragraph on one line, without its leading `<name>: `."""
    path = Path(stage_package.__path__[0]) / f"{name}.py"
    text = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].split())
    return text.removeprefix(f"{name}: ")


def run_stage(name: str, args: list[str]) -> None:
    """Run stage `name` with `args` as `python stages/<name>.py` would, its errors and usage saying `alol <name>`."""
    module = importlib.import_module(f"alol.stages.{name}")
    stage_support.COMMAND = f"alol {name}"
    command = typer.Typer(add_completion=False)  # what typer.run(main) builds in the script
    command.command()(module.main)
    command(args=args, prog_name=f"alol {name}")


def _add_stage(name: str) -> None:
    # The stage's own typer command parses everything, --help included, once its module is imported.
    def run(ctx: typer.Context) -> None:
        run_stage(name, ctx.args)

    app.command(name, help=description(name), add_help_option=False, rich_help_panel=STAGE_PANEL,
                context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(run)


for _name in stage_names():
    _add_stage(_name)


def _reporting(command: str, fn, *args, **kwargs):
    """fn(...) with an AlolError shown as every stage shows it (`error (alol <command>): ...`, exit 1)."""
    stage_support.COMMAND = f"alol {command}"
    try:
        return fn(*args, **kwargs)
    except AlolError as err:
        stage_support.exit_with_error(err)


@app.command(rich_help_panel=REPOSITORY_PANEL)
def init(folder: Path = typer.Argument(..., metavar="DIR", help="Your repository (created, with git, DVC and a "
                                       "first commit, if absent)."),
         data: str = typer.Option(..., help="Your data: a file or folder (JSONL, JSON, CSV, Parquet, Arrow) or a "
                                  "hub dataset id. A file outside DIR is copied into DIR/data/source/."),
         data_format: str = typer.Option("auto", "--format", help="auto (from the columns), prompt_completion, "
                                         "messages, sharegpt, preference or unpaired_preference (clean.format)."),
         columns: str = typer.Option("", help="Our column names = yours, e.g. prompt=question,completion=answer "
                                     "(clean.columns)."),
         policy: str = typer.Option("wheel", help="The model to fine-tune: 'wheel' (SmolLM2-135M-Instruct from "
                                    "PyPI, offline), a hub id or a local model folder (download.policy)."),
         force: bool = typer.Option(False, "--force", help="Replace an existing dvc.yaml, params.yaml or data "
                                    "copy, keeping each as <name>.bak."),
         score: str = typer.Option("", help="A column of your data that scores each reply (a rating, a label): "
                                   "the reward becomes that column alone, with a reward model learned from it for "
                                   "new text (rewards.<column>: type column; alol/rewards/column.py)."),
         transform: str = typer.Option("", help="With --score: steps applied to the score, e.g. log1p,zscore "
                                       "(log1p, rank, zscore).")):
    """Write a pipeline for your data (the `dataset` task) into your repository: then `cd DIR && dvc repro`."""
    from alol.tools.init import init_repository

    _reporting("init", init_repository, folder, data, data_format, columns, policy, force, score=score,
               transform=transform)


@app.command(rich_help_panel=REPOSITORY_PANEL)
def render(folder: Path = typer.Argument(Path("."), metavar="DIR", help="Your repository (set up by alol init).")):
    """Rewrite dvc.yaml (and .alol/version) from params.yaml after a change to the reward's, the task's or the
    policy's settings, or an upgrade of alol: the stages refuse to run on a stale one (the old kept as .bak)."""
    from alol.tools.init import render_repository

    _reporting("render", render_repository, folder)


@app.command(rich_help_panel=REPOSITORY_PANEL)
def export(out: Path = typer.Argument(..., metavar="OUT", help="Folder for the standalone checkpoint (must not exist, unless "
                                      "--force)."),
           model: Path = typer.Option(Path("models/policy"), help="The trained policy: a LoRA adapter or a full model."),
           params: Path = typer.Option(Path("params.yaml"), help="The params it was trained with (for its model card)."),
           metrics: Path = typer.Option(Path("results/evaluate/metrics.json"),
                                        help="The evaluation's headline metrics, for the card (skipped if absent)."),
           dtype: str = typer.Option("float32", help="The saved weights' dtype: float32, bfloat16 or float16."),
           force: bool = typer.Option(False, "--force", help="Replace OUT if it exists.")):
    """Write the policy as a standalone checkpoint (an adapter merged into its base), loadable anywhere with
    transformers' AutoModelForCausalLM.from_pretrained(OUT), with its model card."""
    from alol.tools.export import export_policy

    _reporting("export", export_policy, out, model, params, metrics, dtype, force)


def main() -> None:
    app()


if __name__ == "__main__":  # python -m alol.cli <command> ... (e.g. under accelerate launch -m)
    main()
