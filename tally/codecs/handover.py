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


class HandedRecords:
    """A list of `what` records (e.g. purchases) as one message's value: the names of their
    `fields` once, then each record as a JSON array of their values, in that order. A message
    another version wrote with more fields reads as well (the extra ones are dropped); one
    lacking a field this version needs is a DecodeError naming it."""

    def __init__(self, what: str, fields: Sequence[str]) -> None:
        self.what, self.fields = what, tuple(fields)

    def dumps(self, records: Sequence[Record]) -> bytes:
        fields = self.fields
        rows = [[record[name] for name in fields] for record in records]
        return orjson.dumps({"fields": fields, "rows": rows})

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
