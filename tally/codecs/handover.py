"""Records one stage of a pipeline hands to the next on an internal topic: a JSON list
(orjson), already checked by the stage that wrote it.

Avro is the format of what producers send (schemas, a registry, evolution); between two
stages of one deployment it only costs: on envelopes of ~50 purchases, fastavro's writer and
reader were the re-keying stage's and the counting stage's largest costs in py-spy samples,
where orjson takes a small fraction of the time (`python -m bench.handover`).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from tally.codecs.avro import Record
from tally.core.errors import DecodeError
from tally.core.limits import MESSAGE_MAX_BYTES, bounded_chunks

#: The largest handover message: room left for its key and headers.
HANDOVER_MAX_BYTES = MESSAGE_MAX_BYTES - 4096


class HandedRecords:
    """A list of `what` records (e.g. purchases) as one message's value: the names of their
    `fields` once, then each record as a JSON array of their values, in that order. A message
    another version wrote with more fields reads as well (the extra ones are dropped); one
    lacking a field this version needs is a DecodeError naming it."""

    def __init__(self, what: str, fields: Sequence[str]) -> None:
        self.what, self.fields = what, tuple(fields)
        self._head = b'{"fields":' + orjson.dumps(self.fields) + b',"rows":['

    def dumps(self, records: Sequence[Record]) -> bytes:
        return self.message([self.row(record) for record in records])

    def row(self, record: Record) -> bytes:
        """One record as its message holds it: a message is its rows, so a sender can cut
        them into messages by size without encoding anything twice."""
        return orjson.dumps([record[name] for name in self.fields])

    def message(self, rows: Sequence[bytes]) -> bytes:
        """The message of rows made by `row`."""
        return self._head + b",".join(rows) + b"]}"

    def messages(
        self, carried: Sequence[tuple[int, Record]], limit: int = HANDOVER_MAX_BYTES
    ) -> list[tuple[int, bytes]]:
        """Records, each with the offset of the message that brought them (in offset order),
        as (origin offset, message): as few messages of at most `limit` bytes as they fit,
        cut only between two messages' records (one message's records alone may pass it),
        each named by the last message whose records it holds, so no two share an origin (a
        batch downstream keeps one message per origin)."""
        groups: list[tuple[int, list[bytes]]] = []
        for offset, record in carried:
            if not groups or groups[-1][0] != offset:
                groups.append((offset, []))
            groups[-1][1].append(self.row(record))
        parts = bounded_chunks(groups, rows_size, len(groups), limit - len(self._head) - 2)
        return [
            (part[-1][0], self.message([r for _, rows in part for r in rows])) for part in parts
        ]

    def loads(self, data: bytes | None) -> list[Record]:
        if data is None:
            raise DecodeError("message has no value")
        try:
            handed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not JSON {self.what}: {exc}") from None
        if not (
            isinstance(handed, dict)
            and isinstance(fields := handed.get("fields"), list)
            and isinstance(rows := handed.get("rows"), list)
        ):
            raise DecodeError(f"not {self.what} as JSON {{'fields': [...], 'rows': [...]}}")
        width = len(fields)
        if not all(isinstance(row, list) and len(row) == width for row in rows):
            raise DecodeError(f"not {self.what}: every row must hold {width} values")
        if fields != list(self.fields):
            missing = sorted(set(self.fields) - set(fields))
            if missing:
                raise DecodeError(f"{self.what} without {', '.join(map(str, missing))}")
            at = [fields.index(name) for name in self.fields]
            rows = [[row[index] for index in at] for row in rows]
        names = self.fields
        return [dict(zip(names, row, strict=True)) for row in rows]


def rows_size(group: tuple[int, list[bytes]]) -> int:
    """The bytes a group's rows take in a message (each with its comma)."""
    return sum(len(row) + 1 for row in group[1])
