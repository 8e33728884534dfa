"""Ending a command with a message instead of a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `tally: message` and exit with `code`.

    A click exception raised inside an async Faust command is logged with a traceback by
    mode's worker; SystemExit passes through it, and the process exits with `code`.
    """
    print(f"tally: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
