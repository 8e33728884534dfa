"""Creating Tally's source topics with the configured partition count, before anyone writes.

A producer that writes first would have the broker auto-create the topic with the broker's
default partition count, which need not match the tables' changelogs (TALLY_PARTITIONS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(
    bootstrap_servers: list[str],
    names: Iterable[str] | Mapping[str, int],
    *,
    partitions: int,
    replication: int,
) -> None:
    """Create each missing topic (`names` may map a name to its own partition count);
    existing ones are left as they are."""
    counts = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names, partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=count, replication_factor=replication)
            for name, count in counts.items()
            if name not in existing
        ]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def track_topics(producer: AIOKafkaProducer, names: Iterable[str]) -> None:
    """Make `producer` keep the metadata (leaders, partitions) of every topic in `names`.

    aiokafka refreshes metadata only for topics it was asked about: a topic that merely came
    with the bootstrap metadata drops out at the next refresh, so a batch for it waits for a
    leader until it times out, and key routing cannot find its partitions.
    """
    for name in names:
        await producer.client.add_topic(name)
        await producer.partitions_for(name)
