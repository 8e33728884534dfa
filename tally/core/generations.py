"""Table generations: which build of a pipeline's tables answers its queries. No Faust.

A replay builds a pipeline's tables again, from the source topic's history, as a new
*generation*: its own consumer group, changelogs and internal topics (settings.faust_app_id,
settings.generation_topic), so the serving generation is never touched. One compacted topic
per deployment (settings.serving_topic) records each attempt and, once one has caught up, that
it serves the pipeline; every worker follows that topic, and a worker of an older generation
forwards the pipeline's queries to the newer one. Until that record is written nothing
changes for readers, which is why a failed replay leaves the live answers as they were.

    key "generation:<n>"  → Attempt  {"generation", "pipeline", "from_ms", "state", "at_ms"}
    key "serving:<pipeline>" → Serving {"pipeline", "generation", "urls", "at_ms"}
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

#: The serving topic keeps the latest record of every key for good.
SERVING_TOPIC_CONFIG = {"cleanup.policy": "compact"}

#: An attempt's states: built while the current generation serves, then serving or failed;
#: a serving generation is superseded when a later replay of its pipeline cuts over.
REPLAYING, SERVING, FAILED, SUPERSEDED = "replaying", "serving", "failed", "superseded"


@dataclass(frozen=True)
class Attempt:
    """One replay: generation `generation` of `pipeline`, rebuilt from `from_ms`."""

    generation: int
    pipeline: str
    from_ms: int
    state: str
    at_ms: int
    reason: str = ""

    @property
    def key(self) -> bytes:
        return f"generation:{self.generation}".encode()


@dataclass(frozen=True)
class Serving:
    """Generation `generation` answers `pipeline`'s queries, at any of `urls`."""

    pipeline: str
    generation: int
    urls: tuple[str, ...]
    at_ms: int

    @property
    def key(self) -> bytes:
        return f"serving:{self.pipeline}".encode()


def encode(record: Attempt | Serving) -> bytes:
    return json.dumps(asdict(record), sort_keys=True).encode()


class Generations:
    """The latest record of every key of the serving topic, and what follows from them."""

    def __init__(self) -> None:
        self.attempts: dict[int, Attempt] = {}
        self.serving: dict[str, Serving] = {}

    def absorb(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic, in order; unknown or unreadable keys are skipped (a newer
        Tally may write more)."""
        if key is None or value is None:
            return
        kind, _, _ = key.decode(errors="replace").partition(":")
        try:
            fields: dict[str, Any] = json.loads(value)
            if kind == "generation":
                attempt = Attempt(**fields)
                self.attempts[attempt.generation] = attempt
            elif kind == "serving":
                serving = Serving(**{**fields, "urls": tuple(fields["urls"])})
                self.serving[serving.pipeline] = serving
        except (ValueError, TypeError, KeyError):
            return

    def absorb_all(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> Generations:
        for key, value in records:
            self.absorb(key, value)
        return self

    def serving_generation(self, pipeline: str) -> int:
        found = self.serving.get(pipeline)
        return 1 if found is None else found.generation

    def next_generation(self) -> int:
        """A number no attempt has used: a failed attempt's leftovers are never reused."""
        used = [*self.attempts, *(s.generation for s in self.serving.values())]
        return max(used, default=1) + 1

    def forward_to(self, pipeline: str, own_generation: int) -> Serving | None:
        """Where a worker of `own_generation` sends `pipeline`'s queries: to a newer serving
        generation, never back to an older one (a replay's worker answers for itself)."""
        found = self.serving.get(pipeline)
        if found is None or found.generation <= own_generation:
            return None
        return found

    def describe(self) -> dict[str, Any]:
        """For /api/health and `tally replay --status`."""
        return {
            "serving": {p: asdict(s) for p, s in sorted(self.serving.items())},
            "attempts": [asdict(a) for _, a in sorted(self.attempts.items())],
        }


#: The first record at or after an offset: (its offset, its timestamp), None past the end.
Probe = Callable[[int], Awaitable[tuple[int, int] | None]]


async def first_offset_at(stamp_at: Probe, start: int, end: int, from_ms: int) -> int:
    """Where to start reading [start, end) to get every record stamped at or after `from_ms`:
    a binary search, one probe per step. Records are assumed stamped in offset order
    (producer create time), as Kafka's own time index assumes; offsets may have gaps."""
    low, high = start, end
    while low < high:
        middle = (low + high) // 2
        found = await stamp_at(middle)
        if found is None:
            high = middle  # nothing from middle on
        elif found[1] >= from_ms:
            high = middle  # no record lies between middle and found[0]
        else:
            low = found[0] + 1
    return min(low, end)  # a probe may see a record appended after `end` was read
