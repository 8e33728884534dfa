"""The Faust app: settings applied once, pipelines listed explicitly.

Data flow (topics in `tally.topics`):
    purchases ──► agents.sales ──► sales_panes ─► per-partition top-K ─► merge ──► /api/sales/*
    metric-samples ──► agents.metrics ──► server/metric rollups       ──► /api/servers|metrics/*
    any reject ──► dead-letters (raw bytes + reason/origin headers)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import faust
from faust.app.base import BootStrategy
from faust.tables.manager import TableManager
from faust.types import TopicT

from tally.broker.admin import ensure_compacted_topic, ensure_topics, track_topics
from tally.broker.identity import describe_cluster, reconcile_local_state
from tally.broker.watch import BrokerWatch
from tally.http.access import configured_gate
from tally.http.hygiene import REGISTRY_MAX_BYTES, BodyLimits, application_options
from tally.runtime.collector import tune_collector
from tally.runtime.faust_compat import (
    aiokafka_producer,
    begin_stopping,
    check_pinned_versions,
    deliver_messages_inline,
    flush_producer_buffer_fully,
    hand_over_takes_when_stopping,
    honour_topic_maxsize,
    keep_skipped_messages_uncommitted,
    record_fetched_offsets,
    record_offsets_only_without_holes,
    relay_refusal_headers,
    remember_key_owners,
)
from tally.runtime.logs import quiet_repeats
from tally.settings import Settings, current_settings

logger = logging.getLogger(__name__)

settings = current_settings()
#: Access control of the worker's web server (tally.http.access).
gate = configured_gate(settings)
check_pinned_versions()
keep_skipped_messages_uncommitted()
deliver_messages_inline()
flush_producer_buffer_fully()
hand_over_takes_when_stopping()
record_fetched_offsets(drop_once=settings.fault_drop_fetched.encode())
relay_refusal_headers()
remember_key_owners()
honour_topic_maxsize()
if settings.processing_guarantee == "at_least_once":
    record_offsets_only_without_holes()

#: Each pipeline's modules (agents, then the views answering from its tables).
PIPELINE_MODULES = {
    "sales": ["tally.sales.agents", "tally.sales.views"],
    "metrics": ["tally.metrics.agents", "tally.metrics.views"],
    "archive": ["tally.metrics.archive_sink"],
    "merchants": [
        "tally.merchants.agents",
        "tally.merchants.archive_sink",
        "tally.merchants.views",
    ],
    "social": ["tally.social.agents", "tally.social.views"],
    "fraud": ["tally.fraud.agents", "tally.fraud.archive_sink", "tally.fraud.views"],
    "recommendations": ["tally.recommendations.agents", "tally.recommendations.views"],
    "coupons": ["tally.coupons.agents", "tally.coupons.views"],
}
#: Modules every worker runs, whatever its pipelines.
COMMON_MODULES = [
    "tally.runtime.heap",
    "tally.runtime.serving",
    "tally.web.dead_letters",
    "tally.web.health",
    "tally.web.index",
    "tally.web.ingest",
    "tally.web.prometheus",
    "tally.web.stream",
    "tally.web.registry",
]


#: What a reader (TALLY_ROLE=read) runs: a pipeline's views and its copies of the tables.
READER_MODULES = {"merchants": ["tally.merchants.reader", "tally.merchants.views"]}
#: What every reader runs: no ingest, dead letters or live streams (those need processing).
READER_COMMON_MODULES = [
    "tally.runtime.heap",
    "tally.runtime.serving",
    "tally.web.health",
    "tally.web.index",
    "tally.web.prometheus",
]


def worker_modules(settings: Settings) -> list[str]:
    """Modules Faust imports when the worker starts (explicit: no package-wide scan)."""
    by_pipeline, common = (
        (READER_MODULES, READER_COMMON_MODULES)
        if settings.reads_only
        else (PIPELINE_MODULES, COMMON_MODULES)
    )
    pipelines = settings.pipelines
    chosen = [m for name, modules in by_pipeline.items() if name in pipelines for m in modules]
    return chosen + common


def local_broker_settings(settings: Settings) -> dict[str, Any]:
    """The local broker waits session_timeout / 2 before a join: keep the session short."""
    if not settings.uses_local_broker:
        return {}
    return {"broker_session_timeout": 6.0, "broker_heartbeat_interval": 1.0}


#: Exit code of a worker whose stop outlasted TALLY_STOP_TIMEOUT_SECONDS (EX_TEMPFAIL).
STOP_TIMEOUT_EXIT = 75


def body_limits(settings: Settings) -> BodyLimits:
    """The largest body each web path takes (`Expect: 100-continue` is answered by it)."""
    return BodyLimits(
        (("/api/ingest/", settings.ingest_max_bytes), ("/registry/", REGISTRY_MAX_BYTES))
    )


def exit_after(seconds: float) -> None:
    """End the process `seconds` from now unless it ended by itself: a stop that waits on a
    broker that is gone (commits, flushes, leaving the group) must not hang the worker."""

    def deadline_passed() -> None:
        message = (
            f"the worker did not stop within {seconds:g} s (TALLY_STOP_TIMEOUT_SECONDS; "
            "is the broker gone?); exiting now: what was not committed is processed again "
            "after the restart"
        )
        logger.error(message)
        logging.shutdown()  # flush the log before the process ends
        os._exit(STOP_TIMEOUT_EXIT)

    timer = threading.Timer(seconds, deadline_passed)
    timer.daemon = True
    timer.start()


class ReaderBoot(BootStrategy):
    """A reader's services: no consumer, so no group membership, assignments or recovery;
    no producer (it writes nothing)."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class TallyApp(faust.App):
    """Faust's App, checking before any table opens that its local state fits this broker."""

    BootStrategy = ReaderBoot if settings.reads_only else BootStrategy

    #: True once tables are recovered and key routing works; views answer 503 before.
    routing_ready = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Why else the worker cannot answer yet: (reason, still waiting?), added by services.
        self.waiting_for: list[tuple[str, Callable[[], bool]]] = []
        #: Whether the broker takes connections: readiness and ingest ask it.
        self.broker_watch = BrokerWatch(settings.bootstrap_servers)
        #: The web driver (tally.runtime.web_driver) answers `Expect: 100-continue` by these.
        self.body_limits = body_limits(settings)
        self.waiting_for.append(("reading the revoked tokens", lambda: not gate.revocations.loaded))

    @property
    def ready(self) -> bool:
        return self.not_ready_because() is None

    def not_ready_because(self) -> str | None:
        # A reader has no group and answers from its copies, stale or not (they say by how
        # much): neither a rebalance nor a broker outage stops it once they are loaded.
        if not settings.reads_only:
            if not self.broker_watch.reachable:
                return self.broker_watch.reason
            if self.rebalancing:
                return "rebalancing"
            recovered = cast(TableManager, self.tables).recovery.completed.is_set()
            if not (self.routing_ready and recovered):
                return "recovering tables"
        for reason, waiting in self.waiting_for:  # (asked before every query's answer)
            if waiting():
                return reason
        return None

    async def on_first_start(self) -> None:
        Path(self.conf.datadir).mkdir(parents=True, exist_ok=True)  # Faust makes only the leaf
        quiet_repeats()  # Faust has set up logging by now
        tune_collector(settings.gc_young_objects)  # (everything it runs is imported)
        await super().on_first_start()
        await self.add_runtime_dependency(self.broker_watch)
        # Create the topics agents read before subscribing: the broker would otherwise
        # auto-create them with its own default partition count.
        sources = self.source_topic_partitions()
        await ensure_topics(
            settings.bootstrap_servers,
            sources,
            partitions=settings.partitions,
            replication=settings.replication,
        )
        await ensure_compacted_topic(
            settings.bootstrap_servers, settings.serving_topic, settings.replication
        )
        if gate.enabled:
            self.add_future(
                gate.revocations.follow(
                    settings.bootstrap_servers, settings.revocations_topic, settings.replication
                )
            )
        cluster_id, topics = await describe_cluster(settings.bootstrap_servers)
        reason = reconcile_local_state(
            datadir=Path(self.conf.datadir),
            tabledir=Path(self.conf.tabledir),
            cluster_id=cluster_id,
            changelogs={
                name: table.changelog_topic.get_topic_name() for name, table in self.tables.items()
            },
            topics=topics,
        )
        if reason:
            print(f"tally: starting with empty tables because {reason}", flush=True)

    def source_topic_partitions(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for agent in self.agents.values():
            channel = agent.channel
            if isinstance(channel, TopicT):
                for name in channel.topics:
                    found[name] = channel.partitions or settings.partitions
        return found

    async def on_stop(self) -> None:
        exit_after(settings.stop_timeout_seconds)
        begin_stopping()  # before Faust waits for what the agents took
        await super().on_stop()

    async def on_started(self) -> None:
        # Faust's router finds a key's owner with the producer's metadata of the changelogs. (A
        # reader routes no keys and has no producer; it waits for the changelogs to exist.)
        if not settings.reads_only:
            await track_topics(
                aiokafka_producer(self.producer),
                [table.changelog_topic.get_topic_name() for table in self.tables.values()],
            )
        self.routing_ready = True
        await super().on_started()


app = TallyApp(
    settings.faust_app_id,
    broker=settings.broker_urls,
    store="rocksdb://",
    Table="tally.runtime.bounded:BoundedTable",
    TableManager="tally.runtime.restore:RestoringTableManager",
    web="tally://",
    web_application_options=application_options(
        body_limits(settings), settings.http_header_timeout_seconds, gate.admit
    ),
    datadir=str(settings.data_dir),
    web_bind=settings.web_host,
    web_host=settings.advertised_host,
    web_port=settings.web_port,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    table_standby_replicas=settings.standby_replicas,
    processing_guarantee=settings.processing_guarantee,
    key_serializer="raw",
    value_serializer="raw",
    autodiscover=worker_modules(settings),
    # Faust's /router and /table debug views answer 500 on unknown names and print raw table
    # values; Tally's own views (routed to the owner) serve the tables.
    web_router_enabled=False,
    web_tables_enabled=False,
    # Faust scans `origin` too (its CLI sets it to the main package, `tally`, if unset): this
    # module, so that only the chosen pipelines' agents are registered.
    origin=__name__,
    producer_linger=settings.producer_linger_ms / 1000,  # Faust's setting is in seconds
    **local_broker_settings(settings),
)
