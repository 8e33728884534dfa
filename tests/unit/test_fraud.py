"""The fraud pipeline's pure parts: an entity's history and the features it gives (by event
time, whatever the arrival order and however often an order comes), the model file format,
which version decides an order, a review's life, and the shipped default model."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.core.errors import ValidationError
from tally.core.fraud import (
    FEATURES,
    MINUTE_MS,
    Entities,
    History,
    Model,
    ModelBook,
    ModelError,
    ReviewConflict,
    reviewed,
    take_in,
)
from tally.fraud.models import DEFAULT_MODEL
from tally.fraud.training import evaluate, labelled_features

T0 = 1_767_225_600_000


def order(n: int, at: int, amount: int = 1000, address: str = "1 Oak St", **more: Any) -> dict:
    return {
        "order_id": f"o{n}",
        "customer_id": more.get("customer_id", "c1"),
        "card_id": more.get("card_id", "k1"),
        "device_id": more.get("device_id", "d1"),
        "amount_cents": amount,
        "shipping_address": address,
        "created_at_ms": at,
        "tenant": "shop",
    }


def test_a_customers_features_count_only_orders_placed_before() -> None:
    history = History()
    placed = [
        order(1, T0, 1000),
        order(2, T0 + 5 * MINUTE_MS, 3000),
        order(3, T0 + 30 * MINUTE_MS, 2000, address="9 Elm Ave"),
    ]
    features = [take_in("customer", history, o) for o in placed]
    assert features[0]["customer_orders_24h"] == 0 and features[0]["new_address"] == 1.0
    assert features[0]["amount_ratio"] == 1.0  # no history: nothing to compare with
    assert features[1]["customer_orders_10m"] == 1 and features[1]["new_address"] == 0.0
    assert features[1]["amount_ratio"] == 3.0
    assert features[2]["customer_orders_10m"] == 0 and features[2]["customer_orders_1h"] == 2
    assert features[2]["customer_amount_1h"] == 40.0  # dollars
    assert features[2]["new_address"] == 1.0 and features[2]["amount_ratio"] == 1.0


def test_a_card_counts_the_customers_that_used_it_in_a_day() -> None:
    history = History()
    for n, customer in enumerate(["a", "b", "c", "a"]):
        got = take_in("card", history, order(n, T0 + n * 1000, customer_id=customer))
    assert got["card_customers_24h"] == 3 and got["card_orders_10m"] == 3


#: Orders over a day: each is taken in again at most a day after the newest (KEPT_MS).
orders_strategy = st.lists(
    st.tuples(st.integers(0, 24 * 60), st.integers(1, 50_000), st.sampled_from("ABC")),
    min_size=1,
    max_size=30,
)


@given(orders_strategy, st.randoms())
def test_features_do_not_depend_on_arrival_order_or_repeats(
    drawn: list[tuple[int, int, str]], rng: random.Random
) -> None:
    """An entity's orders taken in event-time order, and the same orders in any order with
    repeats (redelivery): every order gets the same features, once all before it are in."""
    placed = [
        order(n, T0 + minute * MINUTE_MS, amount, f"{a} St")
        for n, (minute, amount, a) in enumerate(drawn)
    ]
    in_time = History()
    expected = {}
    for o in sorted(placed, key=lambda o: (o["created_at_ms"], o["order_id"])):
        expected[o["order_id"]] = take_in("customer", in_time, o)
    shuffled = History()
    deliveries = placed + rng.sample(placed, len(placed) // 2)
    rng.shuffle(deliveries)
    for o in deliveries:
        take_in("customer", shuffled, o)
    # Taken again after everything (a redelivery much later): the same features.
    for o in placed:
        assert take_in("customer", shuffled, o) == expected[o["order_id"]]


def model_record(**changes: Any) -> dict[str, Any]:
    record = {
        "format": "tally-fraud-model/1",
        "version": "v9",
        "features": ["new_address", "amount_ratio"],
        "weights": [2.0, 1.0],
        "intercept": -3.0,
        "thresholds": {"review": 0.2, "reject": 0.8},
    }
    return {**record, **changes}


def test_a_model_decides_by_its_thresholds() -> None:
    model = Model.from_record(model_record())
    assert model.decide({"new_address": 0.0, "amount_ratio": 1.0})[0] == "approve"
    assert model.decide({"new_address": 1.0, "amount_ratio": 1.0})[0] == "review"
    assert model.decide({"new_address": 1.0, "amount_ratio": 20.0})[0] == "reject"
    assert Model.from_record(model.to_record()) == model


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"format": "pickle"}, "not a model"),
        ({"weights": [1.0]}, "one weight per feature"),
        ({"features": ["new_address", "zodiac_sign"]}, "unknown features zodiac_sign"),
        ({"thresholds": {"review": 0.9, "reject": 0.5}}, "review <= reject"),
        ({"weights": ["heavy", 1.0]}, "usable"),
        ({"version": ""}, "version"),
    ],
)
def test_a_bad_model_file_is_refused_with_what_is_wrong(changes: dict, says: str) -> None:
    with pytest.raises(ModelError, match=says):
        Model.from_record(model_record(**changes))


def test_the_model_of_an_orders_time_decides_it_once_known() -> None:
    book = ModelBook()
    book.add(Model.from_record(model_record(version="v1", effective_from_ms=0)))
    book.add(Model.from_record(model_record(version="v2", effective_from_ms=T0)))
    assert book.version_at(T0 - 1).version == "v1"
    assert book.version_at(T0).version == "v2"
    assert not book.can_decide(T0)  # the topic has not been read up to then yet
    book.known_until_ms = T0
    assert book.can_decide(T0) and not book.can_decide(T0 + 1)
    empty = ModelBook()
    empty.known_until_ms = T0
    assert empty.version_at(T0) is None and not empty.can_decide(T0)  # no model: it waits


def test_a_review_is_decided_once_by_a_person() -> None:
    waiting = {"order_id": "o1", "decision": "review", "review": None}
    done = reviewed(waiting, "reject", "analyst-1", 5, "stolen card")
    assert done["review"] == {
        "decision": "reject",
        "by": "analyst-1",
        "at_ms": 5,
        "note": "stolen card",
    }
    with pytest.raises(ReviewConflict, match="decided reject by analyst-1"):
        reviewed(done, "approve", "analyst-2", 6)
    with pytest.raises(ReviewConflict, match="by the model"):
        reviewed({"order_id": "o2", "decision": "approve", "review": None}, "reject", "a", 1)
    with pytest.raises(ValidationError, match="not one of"):
        reviewed(waiting, "maybe", "a", 1)


def test_the_shipped_model_is_valid_and_catches_most_generated_fraud() -> None:
    """The default model (`tally fraud train-model`) on orders it was not trained on."""
    model = Model.from_record(json.loads(DEFAULT_MODEL.read_text()))
    assert model.features == FEATURES and model.version == "v1"
    quality = evaluate(model, labelled_features(20_000, seed=99))
    assert quality["review_or_reject"]["recall"] > 0.7
    assert quality["reject"]["precision"] > 0.9


def test_entities_keep_merchants_apart() -> None:
    entities = Entities()
    entities.features(order(1, T0), "shop-a")
    assert entities.features(order(2, T0 + 1000), "shop-b")["customer_orders_10m"] == 0
    assert entities.features(order(3, T0 + 2000), "shop-a")["customer_orders_10m"] == 1
