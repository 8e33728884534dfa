"""Creating Tally's source topics with the configured partition count, before anyone writes.

A producer that writes first would have the broker auto-create the topic with the broker's
default partition count, which need not match the tables' changelogs (TALLY_PARTITIONS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress

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
