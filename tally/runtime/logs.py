"""Logs a person can read during an outage or a flood of bad data. No Faust here.

- `QuietRepeats`: a warning or error that repeats (a client reconnecting to a broker that is
  gone logs one line per attempt, hundreds a second, in half a dozen wordings) is let through
  once per interval, with the count of the lines held back since.
- `RejectionSummary`: dead letters are counted and summarised once per interval, not logged one
  line each.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

#: A repeated warning or error is let through once per this many seconds.
REPEAT_INTERVAL_S = 60.0
#: Dead letters are summarised at most once per this many seconds.
SUMMARY_INTERVAL_S = 10.0
#: A record logged with `extra={SUMMARY: True}` is a summary already: never held back.
SUMMARY = "tally_summary"
#: The decision taken on a record, kept on it: every handler sees the same one.
_DECIDED = "tally_quiet_repeats"


#: Loggers whose every line is Tally's own: they repeat per message; any other library
#: (aiokafka, faust, mode) repeats per level, whatever its wording.
OWN_LOGGERS = "tally"


def repeat_key(record: logging.LogRecord) -> tuple[str, str]:
    """What makes two records "the same complaint": Tally's own message template, or a
    library's level (during an outage a Kafka client words the same news many ways)."""
    family = record.name.split(".", 1)[0]
    if family == OWN_LOGGERS:
        return record.name, str(record.msg)
    return family, record.levelname


class QuietRepeats(logging.Filter):
    """Lets a WARNING or ERROR record through once per `interval_s` per `repeat_key`; the
    next one let through says how many were held back. INFO and below pass (the worker's
    progress, not its complaints), and so does CRITICAL. One instance may filter for several
    handlers: a record is judged once."""

    def __init__(
        self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        #: repeat key → (when last let through, held back since).
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECIDED, None)
        if decided is None:
            decided = self._decide(record)
            setattr(record, _DECIDED, decided)
        return bool(decided)

    def _decide(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno < logging.CRITICAL or getattr(
            record, SUMMARY, False
        ):
            return True
        key = repeat_key(record)
        now = self.clock()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self.seen[key] = (last[0], last[1] + 1)
            return False
        self.seen[key] = (now, 0)
        if last is not None and last[1]:
            like = "like this" if key[0] == record.name else f"{key[1]} lines from {key[0]}"
            record.msg = (
                f"{record.getMessage()} [{last[1]:,} more {like} in the last "
                f"{now - last[0]:.0f} s were not logged]"
            )
            record.args = ()
        return True


def quiet_repeats(logger: logging.Logger | None = None) -> QuietRepeats:
    """Install one `QuietRepeats` on every handler of `logger` (the root: every record passes
    a root handler); returns it. Installing twice adds nothing."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        found = next((f for f in handler.filters if isinstance(f, QuietRepeats)), None)
        if found is not None:
            return found
    installed = QuietRepeats()
    for handler in target.handlers:
        handler.addFilter(installed)
    return installed


@dataclass
class RejectionSummary:
    """Dead letters counted by (topic, rule) between two summaries, with one example each."""

    interval_s: float = SUMMARY_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    since: float = field(default=-1.0)

    def note(self, topic: str, rule: str, example: str) -> None:
        if not self.counts:
            self.since = self.clock()
        self.counts[(topic, rule)] += 1
        self.examples.setdefault((topic, rule), example)

    def due(self) -> bool:
        return bool(self.counts) and self.clock() - self.since >= self.interval_s

    def take(self) -> str | None:
        """The summary line of everything noted since the last one (None: nothing noted)."""
        if not self.counts:
            return None
        seconds = self.clock() - self.since
        total = sum(self.counts.values())
        parts = [
            f"{topic} {rule}: {count:,} (e.g. {self.examples[(topic, rule)]})"
            for (topic, rule), count in self.counts.most_common()
        ]
        self.counts.clear()
        self.examples.clear()
        return f"{total:,} rejected in the last {seconds:.0f} s: " + "; ".join(parts)
