"""Payment fraud, as the fraud pipeline decides it: each entity's recent orders and the
features read from them, the model that scores those features, which model version decides
an order, and a review's life. No Faust.

Features are defined by event time, not by arrival: an order's features are read from the
orders of the same customer (card, device) placed before it (strictly: two orders of one
millisecond do not count for each other). So they do not depend on when the order is
processed, and an order processed again (after a crash, a rebalance) is given the features it
had the first time, even if later orders of the entity were taken in meanwhile; the model
version too is chosen by the order's time (`ModelBook.version_at`). Deciding an order again
gives the same decision.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tally.core.errors import StateConflict, TallyError, ValidationError

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
#: The windows velocity features count over.
WINDOWS_MS = {"10m": 10 * MINUTE_MS, "1h": HOUR_MS, "24h": DAY_MS}
#: Roles an order plays: it is its customer's, its card's and its device's.
ROLES = ("customer", "card", "device")
#: How far behind its newest order an entity keeps orders: twice the longest window, so an
#: order taken in again up to a day after newer ones (a redelivery, a replay of the last
#: day) is given the features it had.
KEPT_MS = 2 * DAY_MS
#: Orders an entity keeps besides those: a customer's history for the amount ratio even
#: when it orders rarely.
KEEP_LAST = 20
#: Orders an entity keeps at most (a card used by a bot): counts past it are capped.
MAX_KEPT = 1000
#: Shipping addresses a customer keeps (the first time each was used).
MAX_ADDRESSES = 64

#: An order as an entity keeps it: [created_at_ms, order_id, amount_cents, customer_id].
Entry = list[Any]


def order_key(created_at_ms: int, order_id: str) -> tuple[int, str]:
    """The order's place in event time: among orders of one millisecond, by id."""
    return created_at_ms, order_id


def address_digest(address: str) -> str:
    """A shipping address as a customer's state keeps it: normalised (case, spaces) and
    hashed, so the state holds no address."""
    normal = " ".join(address.lower().split())
    return hashlib.blake2b(normal.encode(), digest_size=8).hexdigest()


@dataclass
class History:
    """One entity's (customer's, card's, device's) recent orders, in event-time order, and
    for a customer the first use of each shipping address."""

    entries: list[Entry] = field(default_factory=list)
    #: address digest → [created_at_ms, order_id] of its first use
    addresses: dict[str, list[Any]] = field(default_factory=dict)

    def holds(self, order_id: str) -> bool:
        return any(entry[1] == order_id for entry in self.entries)

    def add(self, order: Mapping[str, Any], address: str | None = None) -> None:
        """The order in (once: a repeat of an order id changes nothing), older ones out."""
        at, order_id = order["created_at_ms"], order["order_id"]
        if address is not None:
            first = self.addresses.get(address)
            if first is None or order_key(at, order_id) < order_key(*first):
                self.addresses[address] = [at, order_id]
                if len(self.addresses) > MAX_ADDRESSES:
                    oldest = min(self.addresses, key=lambda a: order_key(*self.addresses[a]))
                    del self.addresses[oldest]
        if self.holds(order_id):
            return
        self.entries.append([at, order_id, order["amount_cents"], order["customer_id"]])
        self.entries.sort(key=lambda entry: order_key(entry[0], entry[1]))
        newest = self.entries[-1][0]
        recent = [entry for entry in self.entries if entry[0] > newest - KEPT_MS]
        kept = self.entries[-KEEP_LAST:] if len(recent) < KEEP_LAST else recent
        self.entries = kept[-MAX_KEPT:]

    def before(self, order: Mapping[str, Any]) -> list[Entry]:
        """The entity's orders placed before `order` (strictly: orders of the same
        millisecond do not count for each other, whichever came first)."""
        at = order["created_at_ms"]
        return [entry for entry in self.entries if entry[0] < at]

    def to_record(self) -> dict[str, Any]:
        return {"entries": self.entries, "addresses": self.addresses}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> History:
        if not record:
            return cls()
        return cls(
            [list(entry) for entry in record["entries"]],
            {address: list(first) for address, first in record["addresses"].items()},
        )


def velocity(prior: Sequence[Entry], at_ms: int, prefix: str) -> dict[str, float]:
    """Orders and amounts of the entity in each window before `at_ms` (the order excluded)."""
    features: dict[str, float] = {}
    for name, span in WINDOWS_MS.items():
        inside = [entry for entry in prior if entry[0] > at_ms - span]
        features[f"{prefix}_orders_{name}"] = len(inside)
        features[f"{prefix}_amount_{name}"] = sum(entry[2] for entry in inside) / 100
    return features


def role_features(role: str, history: History, order: Mapping[str, Any]) -> dict[str, float]:
    """What one entity's history says of `order`: velocity, and for a customer whether the
    shipping address is new and the amount against its earlier orders; for a card or a
    device, how many customers used it in the last 24 hours (a ring of accounts)."""
    prior = history.before(order)
    at = order["created_at_ms"]
    features = velocity(prior, at, role)
    if role == "customer":
        first = history.addresses.get(address_digest(order["shipping_address"]))
        known = first is not None and first[0] < at
        features["new_address"] = 0.0 if known else 1.0
        earlier = [entry[2] for entry in prior]
        mean = sum(earlier) / len(earlier) if earlier else 0.0
        features["amount_ratio"] = order["amount_cents"] / mean if mean else 1.0
    else:
        day = {entry[3] for entry in prior if entry[0] > at - DAY_MS}
        day.add(order["customer_id"])
        features[f"{role}_customers_24h"] = len(day)
    return features


def entity_of(role: str, order: Mapping[str, Any]) -> str:
    """The id of the order's customer, card or device."""
    return str(order[f"{role}_id"])


def take_in(role: str, history: History, order: Mapping[str, Any]) -> dict[str, float]:
    """The order into its `role` entity's history, and the features that history gives it
    (what the pipeline does on the entity's partition)."""
    address = address_digest(order["shipping_address"]) if role == "customer" else None
    history.add(order, address)
    return role_features(role, history, order)


class Entities:
    """Every entity's history in one process: what the pipeline keeps spread over partitions
    (for training a model, and for checking the pipeline's features)."""

    def __init__(self) -> None:
        self.histories: dict[tuple[str, str, str], History] = {}

    def features(self, order: Mapping[str, Any], tenant: str) -> dict[str, float]:
        features: dict[str, float] = {}
        for role in ROLES:
            history = self.histories.setdefault((tenant, role, entity_of(role, order)), History())
            features.update(take_in(role, history, order))
        return features


def check_order(order: Mapping[str, Any]) -> None:
    """Rules an order must keep beyond its Avro types."""
    if order["amount_cents"] <= 0:
        raise ValidationError(
            f"amount_cents must be > 0, got {order['amount_cents']}", "out_of_range"
        )
    if not order["shipping_address"].strip():
        raise ValidationError("shipping_address must not be empty", "missing_field")


# --- models --------------------------------------------------------------------------------

#: The file format of a model (`tally fraud publish-model FILE`).
MODEL_FORMAT = "tally-fraud-model/1"
#: Decisions, from the least to the most severe.
DECISIONS = ("approve", "review", "reject")


class ModelError(TallyError):
    """A model file is not a usable model; the message says what is wrong."""

    rule = "bad_model"


def transform(name: str, value: float) -> float:
    """Counts and amounts enter the model as log(1 + x): a tenth order in an hour is not ten
    times as suspicious as the first."""
    if name in ("new_address",):
        return value
    return math.log1p(max(value, 0.0))


@dataclass(frozen=True)
class Model:
    """A logistic regression over named features, with the probabilities from which an order
    is reviewed or rejected. Published as JSON (MODEL_FORMAT) and read by every worker."""

    version: str
    features: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    review_from: float
    reject_from: float
    #: From when (epoch ms, order time) the model decides: set when it is published.
    effective_from_ms: int = 0
    trained: Mapping[str, Any] = field(default_factory=dict)

    def probability(self, features: Mapping[str, float]) -> float:
        z = self.intercept + sum(
            weight * transform(name, features.get(name, 0.0))
            for name, weight in zip(self.features, self.weights, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def decide(self, features: Mapping[str, float]) -> tuple[str, float]:
        score = self.probability(features)
        if score >= self.reject_from:
            return "reject", score
        if score >= self.review_from:
            return "review", score
        return "approve", score

    def to_record(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "version": self.version,
            "features": list(self.features),
            "weights": list(self.weights),
            "intercept": self.intercept,
            "thresholds": {"review": self.review_from, "reject": self.reject_from},
            "effective_from_ms": self.effective_from_ms,
            "trained": dict(self.trained),
        }

    @classmethod
    def from_record(cls, record: Any) -> Model:
        """A model from its JSON record; `ModelError` saying what is wrong otherwise."""
        if not isinstance(record, Mapping) or record.get("format") != MODEL_FORMAT:
            raise ModelError(f"not a model: expected an object with format {MODEL_FORMAT!r}")
        try:
            features = tuple(str(name) for name in record["features"])
            weights = tuple(float(weight) for weight in record["weights"])
            thresholds = record["thresholds"]
            model = cls(
                version=str(record["version"]),
                features=features,
                weights=weights,
                intercept=float(record["intercept"]),
                review_from=float(thresholds["review"]),
                reject_from=float(thresholds["reject"]),
                effective_from_ms=int(record.get("effective_from_ms", 0)),
                trained=dict(record.get("trained") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model without a usable {exc}") from None
        if len(features) != len(weights) or not features:
            raise ModelError("a model needs one weight per feature, and at least one feature")
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            raise ModelError(f"unknown features {', '.join(unknown)}; known: {', '.join(FEATURES)}")
        if not 0 < model.review_from <= model.reject_from <= 1:
            raise ModelError("thresholds must satisfy 0 < review <= reject <= 1")
        if not model.version or len(model.version) > 64:
            raise ModelError("version must be 1 to 64 characters")
        return model


#: Every feature a model may use: what the three roles' states give.
FEATURES = (
    *(f"{role}_{what}_{window}" for role in ROLES for what in ("orders", "amount")
      for window in WINDOWS_MS),
    "card_customers_24h",
    "device_customers_24h",
    "new_address",
    "amount_ratio",
)  # fmt: skip


class ModelBook:
    """Every published model, by the time it takes effect: the one deciding an order is the
    latest whose `effective_from_ms` is at or before the order's time. `known_until_ms`: the
    time up to which every model published is known (the models topic read to its end as it
    was then); an order after it waits, so that a model published meanwhile decides it on
    every worker alike."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.known_until_ms = -1

    def add(self, model: Model) -> None:
        self.models[model.version] = model

    def remove(self, version: str) -> None:
        self.models.pop(version, None)

    def version_at(self, at_ms: int) -> Model | None:
        """The model deciding orders of time `at_ms` (None: none in effect then)."""
        effective = [m for m in self.models.values() if m.effective_from_ms <= at_ms]
        if not effective:
            return None
        return max(effective, key=lambda m: (m.effective_from_ms, m.version))

    def can_decide(self, at_ms: int) -> bool:
        """Whether every model published for orders of `at_ms` is known, and one decides
        them."""
        return at_ms <= self.known_until_ms and self.version_at(at_ms) is not None


# --- reviews ---------------------------------------------------------------------------------

#: What a reviewer may decide of an order the model sent to review.
HUMAN_DECISIONS = ("approve", "reject")


class ReviewConflict(StateConflict):
    """The order is not waiting for review (decided already, or never sent to review)."""

    rule = "review_conflict"


def reviewed(
    decision: Mapping[str, Any], outcome: str, by: str, at_ms: int, note: str = ""
) -> dict[str, Any]:
    """The order's decision record once a person decided it; `ReviewConflict` unless it waits
    for review, `ValidationError` for an outcome that is not approve or reject."""
    if outcome not in HUMAN_DECISIONS:
        raise ValidationError(
            f"decision {outcome!r} is not one of {', '.join(HUMAN_DECISIONS)}", "bad_decision"
        )
    if decision["decision"] != "review" or decision.get("review") is not None:
        state = decision.get("review") or {"decision": decision["decision"]}
        raise ReviewConflict(
            f"order {decision['order_id']!r} is not waiting for review: it was decided "
            f"{state['decision']}" + (f" by {state['by']}" if "by" in state else " by the model")
        )
    if len(note) > 1000:
        raise ValidationError(f"note has {len(note):,} characters; at most 1,000", "bad_note")
    return {**decision, "review": {"decision": outcome, "by": by, "at_ms": at_ms, "note": note}}


def merged_features(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for part in parts:
        merged.update(part)
    return merged
