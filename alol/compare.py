"""`python -m alol.compare`: the tool lives in alol/tools/compare.py, outside the library core."""

import typer

from alol.tools.compare import main

if __name__ == "__main__":
    typer.run(main)
