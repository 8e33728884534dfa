"""Fraud pipeline glue: orders → each entity's features → one decision per order.

1. `fan_out_orders` (orders): each order checked (invalid ones dead-lettered with the
   reason), then sent three times, to its customer's, card's and device's partitions of
   fraud-entity-orders: one message per batch and partition (each order with its role and
   origin).
2. `take_in_orders` (fraud-entity-orders): each order into its entity's history (once: an
   order id already held changes nothing), its features read from the orders before it in
   event time (core.fraud: the same features however often it comes), and sent to the
   merchant's partition of fraud-features.
3. `decide_orders` (fraud-features): the three parts of an order meet in its cell; once all
   are in, and the models are known up to the order's time (fraud.models), the model in
   effect then decides it, once: the decision (its version, score and features) to
   fraud-decisions and fraud-audit, and a `review` to the merchant's review queue. Orders
   waiting for the models are decided by `decide_waiting_orders` (every 50 ms).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from faust.types import TP, EventT, StreamT

from tally.app import app, settings
from tally.codecs.avro import Record, check_event_time
from tally.codecs.catalog import order_codec
from tally.codecs.handover import HandedRecords
from tally.core.clock import now_ms
from tally.core.errors import ValidationError
from tally.core.fraud import (
    ROLES,
    History,
    ModelError,
    entity_of,
    merged_features,
    take_in,
)
from tally.core.partitioning import partition_for
from tally.core.tenancy import tenant_of
from tally.fraud.models import DEFAULT_MODEL, FollowedModels, publish, read_model_file
from tally.fraud.tables import (
    audit_topic,
    decisions_topic,
    entity_key,
    entity_orders,
    fraud_entities,
    fraud_orders,
    fraud_reviews,
    order_features,
    order_key,
    orders,
)
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.intake import decode, each_partition, reject, timer
from tally.runtime.purchases import MAX_FUTURE_MS
from tally.runtime.routing import hand_over
from tally.runtime.state import PartitionStates
from tally.runtime.store import scan, stored_value
from tally.telemetry import EVENTS, FRAUD_DECISIONS
from tally.topics import FRAUD_MODELS

logger = logging.getLogger(__name__)

ORDER_FIELDS = (
    "order_id",
    "customer_id",
    "card_id",
    "device_id",
    "amount_cents",
    "currency",
    "shipping_address",
    "created_at_ms",
    "tenant",
)
#: Where an order came from: its partition and offset in `orders` (a dead letter or an
#: audit record names it).
ORIGIN_FIELDS = ("origin_partition", "origin_offset")
#: Stage 1 → 2: an order and the role it is taken in as.
HANDED_ORDERS = HandedRecords("orders by entity", (*ORDER_FIELDS, *ORIGIN_FIELDS, "role"))
#: Stage 2 → 3: an order, one entity's features of it.
HANDED_FEATURES = HandedRecords(
    "features of orders", (*ORDER_FIELDS, *ORIGIN_FIELDS, "role", "features")
)

#: How long the stages after the first gather a batch: what they read is handed over a
#: batch at a time already, and waiting the first stage's tenth of a second again at each
#: would be most of an order's wait for its decision.
BATCH_WITHIN_S = 0.02
#: Every published model, as this worker has read them.
models = FollowedModels()


def merchant_of(order: Record) -> str:
    return tenant_of(order, settings.default_tenant)


@app.task
async def follow_models() -> None:
    """Read and follow the models; publish the shipped default model (deciding from the
    start of time) when none has ever been published."""
    if settings.reads_only:
        return
    app.add_future(models.follow(settings.bootstrap_servers, FRAUD_MODELS, settings.replication))
    while models.known_until_ms < 0:
        await app.sleep(0.1)
    if not models.models:
        default = read_model_file(DEFAULT_MODEL)
        try:
            await publish(
                settings.bootstrap_servers, FRAUD_MODELS, settings.replication, default, 0
            )
        except ModelError:  # another worker published it first
            return
        logger.info("fraud: no model was published; published the default %s", default.version)


# --- stage 1: orders → the three entities' partitions -----------------------------------------


async def fan_out_partition(events: Sequence[EventT]) -> None:
    wall = now_ms()
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    for event in events:
        order = await decode(event, order_codec())
        if order is None:
            continue
        try:
            check_event_time("created_at_ms", order["created_at_ms"], wall, MAX_FUTURE_MS)
        except ValidationError as exc:
            await reject(event, exc, stage="validate", tenant=merchant_of(order))
            continue
        message = event.message
        origin = {"origin_partition": message.partition, "origin_offset": message.offset}
        for role in ROLES:
            key = entity_key(role, merchant_of(order), entity_of(role, order))
            owner = partition_for(key, settings.partitions)
            by_owner.setdefault(owner, []).append(
                (message.offset, {**order, **origin, "role": role})
            )
    for owner, theirs in by_owner.items():
        await hand_over(events[-1], owner, theirs, HANDED_ORDERS, entity_orders)


@app.agent(orders)
async def fan_out_orders(stream: StreamT) -> None:
    await each_partition(stream, fan_out_partition)


# --- stage 2: each entity's history and features ------------------------------------------


async def take_in_partition(events: Sequence[EventT]) -> None:
    partition = events[0].message.partition
    histories: dict[bytes, History] = {}
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    for event in events:
        for order in await decode(event, HANDED_ORDERS) or []:
            role = order["role"]
            key = entity_key(role, merchant_of(order), entity_of(role, order)).encode()
            history = histories.get(key)
            if history is None:
                history = histories[key] = History.from_record(
                    read_cell(fraud_entities, key, partition)
                )
            features = take_in(role, history, order)
            owner = partition_for(merchant_of(order), settings.partitions)
            by_owner.setdefault(owner, []).append(
                (event.message.offset, {**order, "features": features})
            )
    for key, history in histories.items():
        write_cell(fraud_entities, key, history.to_record(), partition)
    for owner, theirs in by_owner.items():
        await hand_over(events[-1], owner, theirs, HANDED_FEATURES, order_features)


@app.agent(entity_orders)
async def take_in_orders(stream: StreamT) -> None:
    await each_partition(stream, take_in_partition, within=BATCH_WITHIN_S)


# --- stage 3: the parts meet; the model decides ---------------------------------------------

#: fraud-features partition → orders whose parts are all in, waiting for the models to be
#: known up to their time: order cell key → its time.
waiting: PartitionStates[dict[bytes, int]] = PartitionStates(order_features.get_topic_name())


def waiting_in(partition: int) -> dict[bytes, int]:
    """The partition's waiting orders; after a restart or a rebalance, found in its cells."""
    found = waiting.get(partition)
    if found is None:
        found = waiting[partition] = {}
        for key, value in scan(fraud_orders, partition, b"", b"\xff"):
            cell = stored_value(value)
            if cell.get("decision") is None and len(cell.get("parts", {})) == len(ROLES):
                found[key] = cell["order"]["created_at_ms"]
    return found


async def decide_partition(events: Sequence[EventT]) -> None:
    """The parts into their orders' cells; complete orders decided when they can be. A part
    of an order decided already (it came again) sends the decision again: if the decision's
    messages were lost with a crash that kept its cell, they are not lost for good (a
    consumer reads the topic by order id; the repeat is the same decision)."""
    partition = events[0].message.partition
    pending = waiting_in(partition)
    cells: dict[bytes, dict[str, Any]] = {}
    decided_before: set[bytes] = set()
    for event in events:
        for part in await decode(event, HANDED_FEATURES) or []:
            key = order_key(merchant_of(part), part["order_id"])
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = read_cell(fraud_orders, key, partition) or {"parts": {}}
            if cell.get("decision") is not None:
                EVENTS.labels(order_features.get_topic_name(), "redelivered").inc()
                decided_before.add(key)
                continue
            order = {name: part[name] for name in (*ORDER_FIELDS, *ORIGIN_FIELDS)}
            cell["order"] = order
            cell["parts"][part["role"]] = part["features"]
            if len(cell["parts"]) == len(ROLES):
                pending[key] = order["created_at_ms"]
    for key, cell in cells.items():
        if key not in decided_before:
            write_cell(fraud_orders, key, cell, partition)
    for key in decided_before:
        decision = cells[key]["decision"]
        await send_decision(decision if decision["by"] == "model" else model_decision(decision))
    await decide_ready(partition, pending)


def owns(partition: int) -> bool:
    """Whether this worker still owns the partition of fraud-features (after an await)."""
    return TP(order_features.get_topic_name(), partition) in app.assignor.assigned_actives()


async def decide_ready(partition: int, pending: dict[bytes, int]) -> None:
    """Decide the partition's complete orders whose time the models are known up to. Each
    decision is in its cell before anything is awaited: an order never decided twice, by
    this path and the timer's at once. If a send fails, what was not decided is found again
    in the cells (the partition's waiting orders are rebuilt)."""
    ready = sorted((at, key) for key, at in pending.items() if models.can_decide(at))
    for _, key in ready:
        del pending[key]
    decided: Counter[str] = Counter()
    try:
        for _, key in ready:
            if not owns(partition):  # revoked meanwhile: its next owner decides the rest
                waiting.forget(partition)
                break
            cell = read_cell(fraud_orders, key, partition)
            if cell is None or cell.get("decision") is not None:
                continue
            decision = decision_of(cell)
            write_cell(fraud_orders, key, {"order": cell["order"], "decision": decision}, partition)
            if decision["decision"] == "review":
                write_cell(fraud_reviews, key, decision, partition)
            decided[decision["decision"]] += 1
            await send_decision(decision)
    except Exception:
        waiting.forget(partition)
        raise
    finally:
        for outcome, count in decided.items():
            FRAUD_DECISIONS.labels(outcome, "model").inc(count)
        EVENTS.labels(order_features.get_topic_name(), "counted").inc(sum(decided.values()))


def decision_of(cell: dict[str, Any]) -> dict[str, Any]:
    """The decision of a complete order by the model in effect at its time (one exists:
    `ModelBook.can_decide`)."""
    order = cell["order"]
    features = merged_features(cell["parts"][role] for role in ROLES)
    model = models.version_at(order["created_at_ms"])
    assert model is not None  # can_decide said so, and no await since
    outcome, score = model.decide(features)
    return {
        "order_id": order["order_id"],
        "merchant": merchant_of(order),
        "customer_id": order["customer_id"],
        "amount_cents": order["amount_cents"],
        "created_at_ms": order["created_at_ms"],
        "decision": outcome,
        "score": round(score, 6),
        "model_version": model.version,
        "features": features,
        "by": "model",
        "decided_at_ms": now_ms(),
        "origin": origin_of_order(order),
        "review": None,
    }


def model_decision(record: dict[str, Any]) -> dict[str, Any]:
    """The model's decision as it was sent, of a record a person has reviewed since."""
    return {**record, "review": None}


async def send_decision(decision: dict[str, Any]) -> None:
    """The model's decision to fraud-decisions and the audit."""
    key = decision["order_id"].encode()
    await decisions_topic.send(key=key, value=decision)
    await audit_topic.send(key=key, value={"kind": "model", **decision})


def origin_of_order(order: Record) -> str:
    """Where the producer wrote the order: `orders[partition]@offset`."""
    return f"{orders.get_topic_name()}[{order['origin_partition']}]@{order['origin_offset']}"


@app.agent(order_features)
async def decide_orders(stream: StreamT) -> None:
    await each_partition(stream, decide_partition, waiting, within=BATCH_WITHIN_S)


@timer(interval=0.05)
async def decide_waiting_orders() -> None:
    """Orders that came before the models were known up to their time: decided as soon as
    they are, on the partitions this worker still owns."""
    if not app.ready:
        return
    topic = order_features.get_topic_name()
    owned = [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic]
    for partition in owned:
        if owns(partition):
            pending = waiting_in(partition)
            if pending:
                await decide_ready(partition, pending)
