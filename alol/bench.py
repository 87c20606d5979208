"""`python -m alol.bench`: the tool lives in alol/tools/bench.py, outside the library core."""

from alol.tools.bench import main

if __name__ == "__main__":
    main()
