"""Faust transport for the local broker (`tansu://`): Faust's aiokafka driver, three corrections.

Tansu 0.6.0 deviates from Kafka in ways that break Faust or slow it (the first two are in
shared/notes/dev-broker.md; the third was measured here):

1. ListOffsets(LATEST) answers the base offset of the last record *batch* + 1, not the last
   offset + 1. Faust reads changelog highwaters that way, so recovery stops early or raises
   ConsistencyError. We correct each highwater with the high watermark of a Fetch response,
   which the broker gets right (one small Fetch per leader, only at rebalance time).
2. The first group generation is 0, and aiokafka sends LeaveGroup only when generation > 0, so
   a stopped first member lingers until its session expires. We send LeaveGroup for 0 too.
3. A Fetch that finds no new records is parked for most of its `max_wait_time` even when
   records arrive meanwhile (Kafka answers as soon as they do). Faust's worker consumer waits
   up to 1.5 s, so each hop of a pipeline (purchases → counts → merged top-K) added up to
   1.5 s. Its consumer waits at most FETCH_MAX_WAIT_MS here: an idle worker sends ~10 small
   Fetches a second, a busy one is not affected (its Fetches find records at once).

Registered under the `faust.transports` entry point as `tansu`; with `kafka://` none of this
is loaded. It subclasses private internals of faust-streaming 0.15.3 and aiokafka 0.14.0,
which pyproject.toml pins. The canary test (tests/integration/test_broker.py) fails the
day the broker is fixed, so the shim can be dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from types import MethodType
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.group import LeaveGroupRequest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

logger = logging.getLogger(__name__)

READ_UNCOMMITTED = 0
#: The worker consumer's Fetch wait on the local broker (Faust's own is 1500 ms; see 3. above).
FETCH_MAX_WAIT_MS = 100


async def fetched_high_watermarks(
    client: AIOKafkaClient, listed: Mapping[TP, int]
) -> dict[TP, int]:
    """Each partition's high watermark as a Fetch response reports it.

    `listed` holds the ListOffsets answers: a Fetch from there returns at most one tiny batch
    and the true high watermark. Where the Fetch fails, the listed value stands.
    """
    by_leader: dict[int, list[TP]] = defaultdict(list)
    for tp in listed:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            continue
        by_leader[leader].append(tp)
    corrected = dict(listed)
    for leader, tps in by_leader.items():
        topics: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for tp in tps:
            topics[tp.topic].append((tp.partition, max(listed[tp], 0), 1))
        request = FetchRequest(
            # The local broker answers a Fetch with max_wait_time=0 with no partitions at all.
            max_wait_time=10,
            min_bytes=0,
            max_bytes=1,
            isolation_level=READ_UNCOMMITTED,
            topics=list(topics.items()),
        )
        try:
            response = await client.send(leader, request)
        except KafkaError as exc:
            logger.warning("highwater Fetch to %s failed, keeping ListOffsets: %r", leader, exc)
            continue
        for topic, partitions in response.topics:
            for partition, error_code, high_watermark, *_ in partitions:
                tp = TP(topic, partition)
                if error_code == 0 and tp in corrected:
                    corrected[tp] = max(corrected[tp], high_watermark)
    return corrected


def aiokafka_client(consumer: AIOKafkaConsumer) -> AIOKafkaClient:
    """The client of a plain aiokafka consumer (metadata refreshes, raw requests)."""
    return consumer._client


def send_leave_group_at_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Make the consumer's coordinator leave the group on stop even in generation 0."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_maybe_leave_group"):
        return
    original = coordinator._maybe_leave_group

    async def maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self._group_instance_id is None and self.member_id:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as exc:
                logger.warning("LeaveGroup (generation 0) failed: %r", exc)
        await original()

    coordinator._maybe_leave_group = MethodType(maybe_leave_group, coordinator)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):  # aiokafka internals moved (pinned)
            raise RuntimeError("aiokafka's consumer has no _fetch_max_wait_ms: update the shim")
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(), which builds the Fetcher
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        send_leave_group_at_generation_zero(self._ensure_consumer())

    async def _highwaters(self, partitions: Iterable[TP]) -> Mapping[TP, int]:
        listed = await super()._highwaters(list(partitions))
        if self.consumer.in_transaction:
            return listed
        return await fetched_high_watermarks(self._ensure_consumer()._client, listed)


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """`tansu://host:port`: Faust's aiokafka transport with the corrections above."""

    Consumer = Consumer
