"""Which partition a key belongs to: Kafka's default partitioner (murmur2), as producers use.

Envelopes (`PurchaseBatch`) hold many keys in one message, so their producer must group by this
and write each envelope to its partition explicitly; the agents check it on arrival.
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
