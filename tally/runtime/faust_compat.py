"""Every use of faust-streaming's and aiokafka's private internals outside the broker shim, in
one place, for the pinned versions only (pyproject.toml). `check_pinned_versions` runs when
the app is built: a worker on other versions stops at once with the reason, rather than
misbehaving the first time one of these is used. (`tally.broker.shim` keeps its own, checked
the same way, because it is loaded by Faust's transport entry point.)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from faust import streams as faust_streams
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.stores.rocksdb import Store as RocksDBStore
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, CollectionT, EventT, Message, ProducerT

from tally.core.errors import ConfigurationError

#: The versions whose internals this module reaches into.
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


def check_pinned_versions(installed: Mapping[str, str] | None = None) -> None:
    """`ConfigurationError` naming every package whose installed version is not the pinned
    one, or whose internals this module uses are missing."""
    found = installed if installed is not None else {name: version(name) for name in PINNED}
    wrong = [
        f"{name} {found.get(name)} (needs {want})"
        for name, want in PINNED.items()
        if found.get(name) != want
    ]
    missing = [
        what
        for what, present in (
            ("faust.streams._current_event", hasattr(faust_streams, "_current_event")),
            ("RocksDB Store._db_for_partition", hasattr(RocksDBStore, "_db_for_partition")),
        )
        if not present
    ]
    if wrong or missing:
        raise ConfigurationError(
            "Tally reaches into private internals of pinned versions (tally/runtime/"
            f"faust_compat.py); found: {', '.join(wrong + missing)}. Install the versions "
            "pyproject.toml pins (make test / make run do)."
        )


def keep_skipped_messages_uncommitted() -> None:
    """Faust's stream skips a message fetched in an older generation of the group, or while a
    rebalance has the flow paused, and acks it all the same; a commit during the rebalance
    then moves past it, and the partition resumes after a message no agent processed (seen:
    purchases never forwarded after a worker died, about one failover in six). Here only
    messages a stream took in (`tracked`) reach the committed offsets: a skipped one is read
    again after the rebalance (its neighbours too, which the pipelines' stamps make
    harmless)."""
    if getattr(FaustConsumer.ack, "keeps_skipped_uncommitted", False):
        return
    faust_ack = FaustConsumer.ack

    def ack(self: FaustConsumer, message: Message) -> bool:
        if not message.tracked:
            message.acked = True
            return False
        return faust_ack(self, message)

    ack.keeps_skipped_uncommitted = True  # type: ignore[attr-defined]
    FaustConsumer.ack = ack  # type: ignore[method-assign]


@contextmanager
def current_event(event: EventT) -> Iterator[None]:
    """Faust routes table reads and writes to the partition of the stream's current event,
    kept in a private context variable: inside, that is `event`."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def partition_db(table: CollectionT, partition: int) -> Any:
    """The rocksdict database of one partition of a RocksDB table (opened if need be)."""
    return table.data._db_for_partition(partition)  # type: ignore[attr-defined]


def set_persisted_offset(table: CollectionT, tp: TP, offset: int) -> None:
    """Record in the partition's database that its changelog is applied through `offset`,
    as Faust's recovery does (where its restore of `tp` starts next time)."""
    table.data.set_persisted_offset(tp, offset)  # type: ignore[attr-defined]


def open_partition_dbs(table: CollectionT) -> list[Any]:
    """The rocksdict databases of the partitions this worker has opened."""
    return list(getattr(cast(Any, table).data, "_dbs", {}).values())


def aiokafka_producer(producer: ProducerT) -> AIOKafkaProducer:
    """The aiokafka producer inside Faust's producer (started)."""
    return cast(AIOKafkaProducer, cast(Any, producer)._ensure_producer())


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The group's committed offset of `tp` as Faust last knew it (None for none, or 0):
    before anything is processed after an assignment, where Faust seeked its reading to."""
    return cast(int | None, consumer._committed_offset.get(tp))


def fetched_gap(consumer: Any, tp: Any) -> Callable[[int], bool]:
    """Whether an offset of `tp` is one Faust saw missing from the fetched records (a
    transaction marker, a compacted record): the log has no message there."""
    gaps = consumer._gap.get(tp)
    return lambda offset: bool(gaps) and bool(gaps.overlaps(offset))


def monitor_metrics(monitor: PrometheusMonitor) -> FaustMetrics:
    """The Prometheus metrics a Faust monitor feeds (to feed them from another monitor)."""
    return cast(FaustMetrics, cast(Any, monitor)._metrics)
