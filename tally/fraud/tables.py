"""The fraud pipeline's topics and tables (Faust declarations; the logic is in core.fraud).

orders ─► (checked) ─► fraud-entity-orders: each order three times, to its customer's, card's
       and device's partitions (murmur2 of "<role>|<merchant>|<id>")
       ─► fraud_entities "<role>|<merchant>|<id>" → the entity's recent orders (History)
       ─► fraud-features: the order and each entity's features, to the merchant's partition
       ─► fraud_orders "<merchant>|<order id>" → the parts so far, then the decision
       ├► fraud-decisions, fraud-audit (every decision, the people's too)
       └► fraud_reviews "<merchant>|<order id>" → an order sent to review, then its outcome
fraud-models (compacted, every worker reads it whole) ─► the model deciding each order
"""

from __future__ import annotations

from tally.app import app
from tally.runtime.routing import rekeyed_from
from tally.runtime.store import memory_bounded
from tally.runtime.topics import handover_topic, internal_topic
from tally.topics import (
    FRAUD_AUDIT,
    FRAUD_DECISIONS,
    FRAUD_ENTITY_ORDERS,
    FRAUD_FEATURES,
    ORDERS,
)

#: Decided orders are kept this long (an order delivered again later is decided again, by
#: the same features and model: the same decision).
ORDERS_KEPT_MS = 7 * 86_400_000

#: Orders to decide, Avro `tally.fraud.Order`, keyed by customer id.
orders = app.topic(ORDERS, key_type=bytes, value_type=bytes)
#: Orders by entity: JSON lists (codecs.handover) of orders, each with its role.
entity_orders = handover_topic(FRAUD_ENTITY_ORDERS)
rekeyed_from(orders, entity_orders)
#: Each entity's features of orders, to the merchants' partitions: JSON lists.
order_features = handover_topic(FRAUD_FEATURES)
rekeyed_from(entity_orders, order_features)
#: The model's decisions (JSON, keyed by order id), and every decision for the audit.
decisions_topic = internal_topic(FRAUD_DECISIONS, value_serializer="json")
audit_topic = internal_topic(FRAUD_AUDIT, value_serializer="json")

#: Both grow with customers and orders: their databases' memory is bounded (on disk, not
#: in memory: python -m bench.fraud holds 1,000,000 customers).
fraud_entities = app.Table("fraud_entities", key_type=bytes, options=memory_bounded())
fraud_orders = app.Table(
    "fraud_orders",
    key_type=bytes,
    extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": ORDERS_KEPT_MS},
    options=memory_bounded(),
)
fraud_reviews = app.Table("fraud_reviews", key_type=bytes)


def entity_key(role: str, merchant: str, entity: str) -> str:
    return f"{role}|{merchant}|{entity}"


def order_key(merchant: str, order_id: str) -> bytes:
    return f"{merchant}|{order_id}".encode()
