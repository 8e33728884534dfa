"""Ending a command with a message instead of a traceback, before or after it starts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `tally: message` and exit with `code`.

    A click exception raised inside an async Faust command is logged with a traceback by
    mode's worker; SystemExit passes through it, and the process exits with `code`.
    """
    print(f"tally: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def parsed_by(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: the value through `parse` (each one of a multiple value; None stays
    None), a ValueError turned into a usage error before the command starts."""

    def callback(context: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return tuple(map(parse, value)) if isinstance(value, tuple) else parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback
