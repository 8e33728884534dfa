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
    """A list of `what` records (e.g. purchases) as one message's value: each record a JSON
    array of its `fields`' values, in order (the names once, here, not in every record)."""

    def __init__(self, what: str, fields: Sequence[str]) -> None:
        self.what, self.fields = what, tuple(fields)

    def dumps(self, records: Sequence[Record]) -> bytes:
        fields = self.fields
        return orjson.dumps([[record[name] for name in fields] for record in records])

    def loads(self, data: bytes | None) -> list[Record]:
        if data is None:
            raise DecodeError("message has no value")
        try:
            rows = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not a JSON list of {self.what}: {exc}") from None
        width = len(self.fields)
        if not isinstance(rows, list) or not all(
            isinstance(row, list) and len(row) == width for row in rows
        ):
            raise DecodeError(f"not a JSON list of {self.what}, each of {width} values")
        return [dict(zip(self.fields, row, strict=True)) for row in rows]
