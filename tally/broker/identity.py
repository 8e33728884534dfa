"""Noticing a fresh broker, so local tables built against an older one are dropped, not trusted.

The local broker is memory-only: a restart loses every topic, changelogs included, while the
worker's RocksDB files survive. Faust would then raise ConsistencyError (persisted offsets above
the changelog's end). Each `tally broker` start has a new cluster id; a worker remembers the id
its tables were built against, and also checks that their changelog topics still exist.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from tally.core.quarantine import IN_FLIGHT_DIR

logger = logging.getLogger(__name__)

MARKER_NAME = "broker-cluster-id"


async def describe_cluster(bootstrap_servers: list[str]) -> tuple[str, set[str]]:
    """The broker's cluster id and the names of its topics."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    try:
        await client.bootstrap()
        node = next(iter(client.cluster.brokers())).nodeId
        response = await client.send(node, MetadataRequest(None))
    finally:
        await client.close()
    topics = {topic[1] for topic in response.topics}
    return str(response.cluster_id), topics


def stale_state_reason(
    *,
    remembered_cluster_id: str | None,
    cluster_id: str,
    has_state: bool,
    changelogs: Iterable[str],
    topics: set[str],
) -> str | None:
    """Why local table state cannot be trusted against this broker, or None if it can."""
    if not has_state:
        return None
    if remembered_cluster_id is not None and remembered_cluster_id != cluster_id:
        return (
            f"the broker's cluster id is {cluster_id!r}, the tables were built against "
            f"{remembered_cluster_id!r} (a fresh broker)"
        )
    missing = sorted(set(changelogs) - topics)
    if missing:
        return f"the broker has no changelog topic {', '.join(missing)} (a fresh broker)"
    return None


def reconcile_local_state(
    *, datadir: Path, tabledir: Path, cluster_id: str, changelogs: dict[str, str], topics: set[str]
) -> str | None:
    """Wipe `tabledir` (and the offsets recorded in flight) if it belongs to another broker;
    remember this broker. Returns why.

    `changelogs` maps table name → changelog topic; only tables with local files are checked,
    so a table added by an upgrade (its changelog not created yet) does not wipe the others.
    """
    marker = datadir / MARKER_NAME
    remembered = marker.read_text().strip() if marker.exists() else None
    local = (
        {p.name.rsplit("-", 1)[0] for p in tabledir.glob("*.db")} if tabledir.exists() else set()
    )
    reason = stale_state_reason(
        remembered_cluster_id=remembered,
        cluster_id=cluster_id,
        has_state=bool(local),
        changelogs=[topic for table, topic in changelogs.items() if table in local],
        topics=topics,
    )
    if reason:
        logger.warning("Starting with empty tables: %s; removing %s", reason, tabledir)
        shutil.rmtree(tabledir)
    if reason or remembered != cluster_id:  # offsets in flight on another cluster mean nothing
        shutil.rmtree(datadir / IN_FLIGHT_DIR, ignore_errors=True)
    datadir.mkdir(parents=True, exist_ok=True)
    marker.write_text(cluster_id)
    return reason
