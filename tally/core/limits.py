"""What one event may hold: the limits that keep one event from taking a pipeline down.

Ids become parts of table keys, Kafka keys, changelog records and the messages between stages
(the top-K candidates carry ten item ids at once), so an id has a bound in bytes and a set of
characters; a free-form string has a bound too. Ingest and the agents apply the same rules
(producers writing to Kafka directly never pass ingest). A table record or an internal message
that would still outgrow what Kafka takes is refused before it is written (`RecordTooLarge`),
and the event that caused it is dead-lettered. No Faust here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from tally.core.errors import TallyError, ValidationError

#: Longest id (item, purchase, server, metric) in UTF-8 bytes: a host name fits (253).
MAX_ID_BYTES = 256
#: Purchase metadata: entries, and bytes of each key and each value.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_BYTES = 256
MAX_METADATA_VALUE_BYTES = 1024
#: Distinct metrics one server may report in one minute (one table record holds them all).
MAX_METRICS_PER_SERVER_MINUTE = 1000
#: Largest table record or internal message (key and value), below the 1,000,000 bytes a
#: Faust producer sends and Kafka's default 1 MiB message limit.
MAX_RECORD_BYTES = 900_000
#: The tenant of a deployment that names none (TALLY_DEFAULT_TENANT).
DEFAULT_TENANT = "default"
#: A tenant name: it leads table keys, so no separator and nothing unprintable.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The key separator of every table key: never inside an id.
KEY_SEPARATOR = "|"
#: Unicode categories no id may contain: control characters (C0, DEL, C1), unpaired
#: surrogates (they have no UTF-8 form), line and paragraph separators.
REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: How much of a refused id a reason quotes.
QUOTED_CHARS = 40
#: Bytes per message that Tally's own producers cut their messages at (ingest envelopes,
#: the metrics stage's partial rollups): well below MAX_RECORD_BYTES.
MESSAGE_MAX_BYTES = 512 * 1024

T = TypeVar("T")


class RecordTooLarge(TallyError):
    """A table record or internal message would exceed MAX_RECORD_BYTES: the event that
    made it is dead-lettered instead of failing the producer (which would stop the worker)."""

    rule = "too_large"


def utf8_size(text: str) -> int | None:
    """Bytes of `text` in UTF-8; None when it has no UTF-8 form (an unpaired surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def shown(text: str) -> str:
    """A value as a reason quotes it: short, with control characters escaped."""
    head = text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "..."
    return repr(head) + ("" if len(text) <= QUOTED_CHARS else f" ({len(text):,} characters)")


def id_problem(value: str) -> str | None:
    """Why `value` cannot be an id, or None when it can."""
    if not value:
        return "must not be empty"
    size = utf8_size(value)
    if size is None:
        return "is not valid Unicode text (an unpaired surrogate)"
    if size > MAX_ID_BYTES:
        return f"is {size:,} bytes in UTF-8; an id may have at most {MAX_ID_BYTES}"
    if KEY_SEPARATOR in value:
        return f"must not contain {KEY_SEPARATOR!r} (the key separator)"
    if not value.isprintable():  # fast path: most ids are printable ASCII
        for char in value:
            if unicodedata.category(char) in REFUSED_CATEGORIES:
                return f"must not contain control characters (found U+{ord(char):04X})"
    return None


def usable_id(value: str) -> bool:
    return id_problem(value) is None


def check_id(name: str, value: str) -> None:
    """`ValidationError` (rule `bad_id`) unless `value` can be an id."""
    problem = id_problem(value)
    if problem is not None:
        raise ValidationError(f"{name} {problem}, got {shown(value)}", "bad_id")


def check_metadata(metadata: Mapping[str, str]) -> None:
    """`ValidationError` (rule `bad_metadata`) unless the map is within its limits."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ValidationError(
            f"metadata has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES}", "bad_metadata"
        )
    for key, value in metadata.items():
        key_size, value_size = utf8_size(key), utf8_size(value)
        if key_size is None or value_size is None:
            raise ValidationError(
                f"metadata {shown(key)} is not valid Unicode text (an unpaired surrogate)",
                "bad_metadata",
            )
        if not key or key_size > MAX_METADATA_KEY_BYTES:
            raise ValidationError(
                f"a metadata key must be 1 to {MAX_METADATA_KEY_BYTES} bytes, got {shown(key)}",
                "bad_metadata",
            )
        if value_size > MAX_METADATA_VALUE_BYTES:
            raise ValidationError(
                f"metadata {shown(key)} is {value_size:,} bytes; a value may have at most "
                f"{MAX_METADATA_VALUE_BYTES:,}",
                "bad_metadata",
            )


def check_record_size(what: str, key: bytes | None, value: bytes) -> None:
    """`RecordTooLarge` when key and value together exceed MAX_RECORD_BYTES."""
    size = len(key or b"") + len(value)
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"{what} would be {size:,} bytes; a record may have at most {MAX_RECORD_BYTES:,}"
        )


def bounded_chunks(
    items: Iterable[T], size: Callable[[T], int], max_items: int, max_bytes: int
) -> list[list[T]]:
    """`items` in order, cut into lists of at most `max_items` items and `max_bytes` (by
    `size`); an item larger than `max_bytes` alone makes a list of its own."""
    out: list[list[T]] = []
    part: list[T] = []
    used = 0
    for item in items:
        weight = size(item)
        if part and (len(part) >= max_items or used + weight > max_bytes):
            out.append(part)
            part, used = [], 0
        part.append(item)
        used += weight
    if part:
        out.append(part)
    return out
