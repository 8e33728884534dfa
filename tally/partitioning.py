"""Which partition a key belongs to: Kafka's default partitioner (murmur2), as producers use.

Envelopes (`PurchaseBatch`) hold many keys in one message, so their producer must group by this
and write each envelope to its partition explicitly; the agents check it on arrival.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

from aiokafka.partitioner import murmur2

from tally.codecs.avro import Record


@lru_cache(maxsize=1 << 16)
def partition_for(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def group_by_partition(
    records: Iterable[Record], key_field: str, partitions: int
) -> dict[int, list[Record]]:
    groups: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        groups[partition_for(str(record[key_field]), partitions)].append(record)
    return groups
