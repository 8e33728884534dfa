"""Which partition a key belongs to: Kafka's default partitioner (murmur2), as the Java client
and aiokafka use. State and queries live at that partition's owner.

Producers need not agree: librdkafka's default (CRC32 of the key, `consistent_random`), a random
or an explicit partition are all fine. A message that came on another partition is forwarded
to its owner with its origin (source partition and offset) in a header, by which a message
forwarded twice is known (tally.core.applied).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from aiokafka.partitioner import murmur2

R = TypeVar("R", bound=Mapping[str, Any])


@lru_cache(maxsize=1 << 16)
def partition_for(key: str, partitions: int) -> int:
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def group_by_partition(records: Iterable[R], key_field: str, partitions: int) -> dict[int, list[R]]:
    groups: dict[int, list[R]] = defaultdict(list)
    for record in records:
        groups[partition_for(str(record[key_field]), partitions)].append(record)
    return groups


#: The header a forwarded message carries: "<source partition>:<source offset>".
ORIGIN_HEADER = "tally.origin"
#: The header of a watermark announcement on a routed topic: "<partition>:<watermark ms>".
WATERMARK_HEADER = "tally.watermark"
#: With a watermark announcement, b"1" if the announcer is caught up with its own source.
RESTING_HEADER = "tally.resting"


def partition_tag(partition: int, number: int) -> bytes:
    """A header value naming a partition and a number (an offset, a watermark)."""
    return f"{partition}:{number}".encode()


def parse_partition_tag(value: bytes) -> tuple[int, int]:
    partition, number = value.decode().split(":")
    return int(partition), int(number)
