"""What every stage command shares: user errors printed plainly, with a non-zero exit."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from alol.errors import AlolError

console = Console(stderr=True, soft_wrap=True)  # never break a path across lines


def stage(fn: Callable) -> Callable:
    """Wrap a stage's main function: AlolError -> red message and exit 1, timing on success."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except AlolError as err:
            console.print(f"[bold red]error[/] ({Path(sys.argv[0]).stem}): {escape(str(err))}", highlight=False)
            sys.exit(1)
        console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s")
        return result

    return wrapper
