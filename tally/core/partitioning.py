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


def origin_header(partition: int, offset: int) -> bytes:
    return f"{partition}:{offset}".encode()


def parse_origin(value: bytes) -> tuple[int, int]:
    """The (source partition, offset) of a forwarded message's origin header."""
    partition, offset = value.decode().split(":")
    return int(partition), int(offset)
