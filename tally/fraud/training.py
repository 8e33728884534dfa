"""Training the default fraud model offline: generated orders (the order feed, with its fraud
patterns) → their features, as the pipeline computes them → a logistic regression fitted
with scikit-learn → a model file (core.fraud.MODEL_FORMAT). No Faust; scikit-learn is only
needed here (`pip install -e '.[train]'`), never by a worker.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from tally.core.fraud import FEATURES, Entities, Model, transform
from tally.core.tenancy import tenant_of
from tally.feed import orders

#: Start of the training data's event time (any fixed time: the data is a simulation).
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
#: Generated orders are this far apart in event time (about 20 a minute).
SPACING_MS = 3000


def labelled_features(count: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    """`count` generated orders' features, as the pipeline computes them, and whether each
    is fraud."""
    rng = random.Random(seed)
    clock = itertools.count(T0_MS, SPACING_MS)
    entities = Entities()
    generated = itertools.islice(orders(rng, clock_ms=lambda: next(clock)), count)
    return [
        (entities.features(order, tenant_of(order, "default")), fraud) for order, fraud in generated
    ]


def train(
    version: str, count: int = 200_000, seed: int = 1, review: float = 0.5, reject: float = 0.9
) -> tuple[Model, dict[str, Any]]:
    """A model fitted on `count` generated orders, and how its decisions do on as many
    held-out ones (another seed): precision and recall of review-or-reject and of reject."""
    from sklearn.linear_model import LogisticRegression  # only when training

    data = labelled_features(count, seed)
    rows = [[transform(name, features.get(name, 0.0)) for name in FEATURES] for features, _ in data]
    labels = [int(fraud) for _, fraud in data]
    fitted = LogisticRegression(max_iter=5000).fit(rows, labels)
    model = Model(
        version=version,
        features=FEATURES,
        weights=tuple(round(float(weight), 6) for weight in fitted.coef_[0]),
        intercept=round(float(fitted.intercept_[0]), 6),
        review_from=review,
        reject_from=reject,
        trained={
            "library": "scikit-learn LogisticRegression",
            "orders": count,
            "seed": seed,
            "fraud_share": round(sum(labels) / count, 4),
        },
    )
    return model, evaluate(model, labelled_features(count, seed + 1))


def evaluate(model: Model, data: list[tuple[dict[str, float], bool]]) -> dict[str, Any]:
    """Precision and recall of the model's decisions over labelled features."""
    outcomes = [(model.decide(features)[0], fraud) for features, fraud in data]
    frauds = sum(fraud for _, fraud in outcomes)
    quality = {}
    for name, flagged_as in (("review_or_reject", ("review", "reject")), ("reject", ("reject",))):
        flagged = [fraud for decision, fraud in outcomes if decision in flagged_as]
        quality[name] = {
            "flagged": len(flagged),
            "precision": round(sum(flagged) / len(flagged), 3) if flagged else None,
            "recall": round(sum(flagged) / frauds, 3) if frauds else None,
        }
    return quality
