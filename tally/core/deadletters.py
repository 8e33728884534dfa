"""Dead letters: rejected messages keep their raw bytes; why and where from ride in headers.

The value and key of a dead letter are the original bytes, untouched, with the producer's own
headers, so a fixed message can be re-sent as it was. Reason and origin travel as Kafka
headers (the way Kafka Connect's DLQ does), readable by any Kafka tool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tally.core.clock import now_ms as wall_now_ms
from tally.core.partitioning import ORIGIN_HEADER, RESTING_HEADER, WATERMARK_HEADER

HEADER_PREFIX = "tally.dlq."
#: The header `tally dlq replay` marks a re-sent letter with (`dead-letters:<id>`).
REPLAYED_FROM = "tally.replayed-from"
#: Headers Tally itself puts on messages: never a producer's own (a letter replayed twice
#: carries the second replay's mark only).
ROUTING_HEADERS = frozenset({ORIGIN_HEADER, WATERMARK_HEADER, RESTING_HEADER, REPLAYED_FROM})


def producer_headers(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> list[tuple[str, bytes]]:
    """The headers a message came with from its producer (a social post's `tally.channel`):
    what a dead letter keeps beside its own, and a replay sends back."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    return [
        (name, value)
        for name, value in pairs
        if not name.startswith(HEADER_PREFIX) and name not in ROUTING_HEADERS
    ]


#: The longest reason a letter carries (a reason quoting a whole payload would make the letter
#: too large to send).
MAX_REASON_CHARS = 4000


@dataclass(frozen=True)
class DeadLetter:
    """Why a message was rejected, and where it came from."""

    reason: str
    error: str  # the error class
    stage: str  # decode | validate | late | process
    topic: str  # origin topic ("" for an HTTP body that never reached Kafka)
    partition: int  # -1 when there is no origin partition
    offset: int  # -1 when there is no origin offset
    time_ms: int
    rule: str = "error"  # what kind of wrong (`TallyError.rule`): what counts group by
    request: str = ""  # an HTTP origin: "POST /api/ingest/purchases <request id>"
    row: int = -1  # an HTTP origin: the row's index in the request body
    #: Whose data it was, when known (the record's tenant, or the ingest token's); "" when
    #: the payload did not say (it did not decode): such letters are an operator's to see.
    tenant: str = ""

    @classmethod
    def of(
        cls,
        exc: BaseException,
        *,
        stage: str,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
        request: str = "",
        row: int = -1,
        tenant: str = "",
        now_ms: int | None = None,
    ) -> DeadLetter:
        return cls(
            reason=(str(exc) or type(exc).__name__)[:MAX_REASON_CHARS],
            error=type(exc).__name__,
            stage=stage,
            topic=topic,
            partition=partition,
            offset=offset,
            time_ms=wall_now_ms() if now_ms is None else now_ms,
            rule=getattr(exc, "rule", "error"),
            request=request,
            row=row,
            tenant=tenant,
        )

    def noted(self, note: str) -> DeadLetter:
        """The same letter, its reason followed by `note` (what was done to the payload)."""
        return replace(self, reason=f"{self.reason} ({note})")

    @property
    def request_path(self) -> str:
        """ "POST /api/ingest/<endpoint>" of an HTTP origin, without the request id."""
        return self.request.rsplit(" ", 1)[0]

    @property
    def origin(self) -> str:
        """Where the rejected data came from, for people: topic[partition]@offset or the request."""
        if self.topic:
            return f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{self.request} row {self.row}" if self.row >= 0 else self.request

    def headers(self) -> list[tuple[str, bytes]]:
        return [(HEADER_PREFIX + k, str(v).encode()) for k, v in asdict(self).items()]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes]) -> DeadLetter:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        found = {
            k[len(HEADER_PREFIX) :]: v.decode() for k, v in pairs if k.startswith(HEADER_PREFIX)
        }
        values: dict[str, Any] = {
            f.name: int(found[f.name]) if f.type == "int" else found[f.name]
            for f in fields(cls)
            if f.name in found  # letters written before a field existed take its default
        }
        return cls(**values)
