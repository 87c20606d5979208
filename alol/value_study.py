"""`python -m alol.value_study`: the tool lives in alol/tools/value_study.py, outside the library core."""

import typer

from alol.tools.value_study import main

if __name__ == "__main__":
    typer.run(main)
