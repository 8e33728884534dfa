"""Wall-clock time and its written forms: every `now`, ISO string and epoch-ms parse in Tally
goes through here, so there is one convention (UTC, milliseconds, `Z`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache


def now_ms() -> int:
    """The wall clock in ms: the default source of `wall_ms` everywhere (tests pass their own)."""
    return int(time.time() * 1000)


@lru_cache(maxsize=16_384)
def iso(ms: int) -> str:
    """Epoch ms as ISO 8601 in UTC with a `Z`: how every answer writes a time. Kept for the
    times answers repeat (minutes, steps): formatting was a fifth of a series query's work."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def epoch_ms(text: str) -> int:
    """An ISO-8601 time (naive = UTC) or epoch milliseconds, as epoch ms; `ValueError` saying
    what is expected otherwise."""
    if text.isascii() and text.isdecimal():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "must be an ISO 8601 time (2026-11-22T10:00:00Z) or epoch milliseconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)
