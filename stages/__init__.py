"""The pipeline's stages, one typer command per DVC stage: `python stages/<name>.py` here, `alol <name>` once
installed (this folder is the package alol.stages; alol/cli.py)."""
