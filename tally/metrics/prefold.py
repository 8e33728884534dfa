"""Metric batches decoded and folded per minute in the worker's second process
(runtime.offload), so the event loop only merges each envelope's ~50 rollups instead of
decoding and folding its ~500 samples. Imports no Faust app: the second process loads this.

The worker takes a prefolded envelope only when the usual path would fold every one of its
samples (none invalid, late, crowded or already applied); any other envelope it decodes and
folds itself, sample by sample, as without the second process, so what it rejects and why is
the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from tally.codecs.avro import Record, read_record, schema_id_of
from tally.core.errors import TallyError
from tally.core.rollups import Cells, fold_samples

#: No upper bound on event time here: the worker checks the newest against its own clock.
NO_FUTURE_BOUND = 1 << 62


class Prefolded(NamedTuple):
    """One envelope, every sample valid, folded by minute."""

    server_id: str
    tenant: str
    samples: int
    #: minute → metric → [min, max, sum, count] of the envelope's samples.
    minutes: dict[int, Cells]
    newest_ts: int
    oldest_minute: int


def prefold(
    payloads: list[bytes],
    readings: dict[int, tuple[Any, Any]],
    validate: Callable[[Record], None] | None,
) -> list[Prefolded | None]:
    """Each payload (a framed `MetricBatch`) folded by minute; None for one the worker must
    look at itself: it does not decode as `readings` say (AvroCodec.readings_of), fails
    `validate` (the codec's), or holds an invalid sample."""
    return [prefold_one(payload, readings, validate) for payload in payloads]


def prefold_one(
    payload: object,
    readings: dict[int, tuple[Any, Any]],
    validate: Callable[[Record], None] | None,
) -> Prefolded | None:
    """One payload's `prefold`."""
    if not isinstance(payload, bytes):
        return None
    try:
        schema_id = schema_id_of(payload)
        reading = readings.get(schema_id)
        if reading is None:
            return None
        batch = read_record(payload, schema_id, *reading)
        if validate is not None:
            validate(batch)
    except TallyError:
        return None
    minutes: dict[int, Cells] = {}
    judged = fold_samples(batch["samples"], minutes, None, NO_FUTURE_BOUND)
    if judged.invalid or judged.newest_ts is None or judged.oldest_minute is None:
        return None  # an empty envelope too: nothing to merge, the usual path passes it
    return Prefolded(
        batch["server_id"],
        batch["tenant"],
        judged.counted,
        minutes,
        judged.newest_ts,
        judged.oldest_minute,
    )
