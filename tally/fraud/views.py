"""Fraud views: a merchant's review queue and a person's decision on a reviewed order, an
order's decision, the models this worker knows. Answered by the worker owning the
merchant's partition (forwarded there); the merchant is the caller's tenant (an operator
names one with `?tenant=`)."""

from __future__ import annotations

from functools import partial
from typing import Any

from faust.web import Request, Response, View

from tally.app import app, settings
from tally.archive.fraud_audit import decisions_of
from tally.core.clock import iso, now_ms
from tally.core.fraud import HUMAN_DECISIONS, reviewed
from tally.core.partitioning import partition_for
from tally.fraud.agents import models
from tally.fraud.archive_sink import audit_archive
from tally.fraud.tables import audit_topic, fraud_orders, fraud_reviews, order_key
from tally.http.access import caller
from tally.runtime.cells import flush, place, read_cell, write_cell
from tally.runtime.queries import (
    BadRequest,
    NotFound,
    OwnedView,
    changed_cell,
    choice_param,
    id_param,
    int_param,
    json_object,
    one_tenant_read,
    read_archive,
    require_ready,
    routed_by_key,
    time_param,
)
from tally.runtime.store import tenant_values
from tally.telemetry import FRAUD_DECISIONS

#: A review queue is read by: waiting for a person, decided by one, or both.
REVIEW_STATUSES = ("waiting", "decided", "all")


def review_status(decision: dict[str, Any]) -> str:
    return "waiting" if decision.get("review") is None else "decided"


@app.page("/api/fraud/reviews")
class FraudReviews(OwnedView):
    """The merchant's orders the model sent to review: `?status=waiting` (the default),
    `decided` or `all`; the oldest order first."""

    pipeline = "fraud"

    async def owned(self, request: Request) -> Response:
        merchant = one_tenant_read(request)
        status = choice_param(request, "status", REVIEW_STATUSES)
        limit = int_param(request, "limit", 100, 1, 1000)

        async def answer() -> Response:
            partition = partition_for(merchant, settings.partitions)
            found = tenant_values(fraud_reviews, partition, merchant)
            counts = {state: 0 for state in REVIEW_STATUSES[:2]}
            for review in found:
                counts[review_status(review)] += 1
            chosen = sorted(
                (r for r in found if status in ("all", review_status(r))),
                key=lambda r: (r["created_at_ms"], r["order_id"]),
            )
            return self.json(
                {
                    "merchant": merchant,
                    "status": status,
                    "counts": counts,
                    "reviews": chosen[:limit],
                    "more": len(chosen) > limit,
                }
            )

        return await routed_by_key(fraud_reviews, merchant, self, request, answer)


@app.page("/api/fraud/reviews/{order_id}/decision")
class FraudReviewDecision(View):
    """A person's decision on an order waiting for review: JSON {"decision": "approve" or
    "reject", "note": "..."}. It joins the order's record, goes to the audit, and the order
    leaves the queue; the answer is the order's record."""

    async def post(self, request: Request, order_id: str) -> Response:
        require_ready()
        merchant = one_tenant_read(request)
        order = id_param("order_id", order_id)

        async def decide() -> Response:
            body = await json_object(request)
            outcome, note = body.get("decision"), body.get("note", "")
            if outcome not in HUMAN_DECISIONS or not isinstance(note, str):
                raise BadRequest(
                    f'the body must be {{"decision": {" or ".join(map(repr, HUMAN_DECISIONS))}'
                    ', "note": "..." (optional)}'
                )
            partition = partition_for(merchant, settings.partitions)
            key = order_key(merchant, order)
            done = changed_cell(
                fraud_reviews,
                key,
                partition,
                lambda waiting: reviewed(waiting, outcome, caller(request).subject, now_ms(), note),
                f"merchant {merchant!r} has no order {order[:80]!r} in review",
            )
            cell = read_cell(fraud_orders, key, partition)
            if cell is not None:
                write_cell(fraud_orders, key, {**cell, "decision": done}, partition)
            # Written before the answer: a later read (on any copy) finds the decision.
            await flush(
                [place(fraud_reviews, partition), place(fraud_orders, partition)],
                acknowledged=True,
            )
            await (await audit_topic.send(key=order.encode(), value={"kind": "review", **done}))
            FRAUD_DECISIONS.labels(outcome, "person").inc()
            return self.json(done)

        return await routed_by_key(fraud_reviews, merchant, self, request, decide)


@app.page("/api/fraud/orders/{order_id}")
class FraudOrder(OwnedView):
    """An order's decision: the model's (its version, score and features) and a person's
    when it was reviewed; `"decision": null` while it waits for its parts or the models."""

    pipeline = "fraud"

    async def owned(self, request: Request, order_id: str) -> Response:
        merchant = one_tenant_read(request)
        order = id_param("order_id", order_id)

        async def answer() -> Response:
            partition = partition_for(merchant, settings.partitions)
            cell = read_cell(fraud_orders, order_key(merchant, order), partition)
            if cell is None:
                raise NotFound(f"merchant {merchant!r} has no order {order[:80]!r}")
            return self.json(
                {"merchant": merchant, "order_id": order, "decision": cell.get("decision")}
            )

        return await routed_by_key(fraud_orders, merchant, self, request, answer)


@app.page("/api/fraud/models")
class FraudModels(View):
    """The published models as this worker has read them, and up to when it knows them."""

    async def get(self, request: Request) -> Response:
        require_ready()
        known = models.known_until_ms
        return self.json(
            {
                "known_until": iso(known) if known >= 0 else None,
                "models": sorted(
                    (
                        {
                            "version": m.version,
                            "effective_from": iso(m.effective_from_ms),
                            "effective_from_ms": m.effective_from_ms,
                            "features": list(m.features),
                            "thresholds": {"review": m.review_from, "reject": m.reject_from},
                            "trained": dict(m.trained),
                        }
                        for m in models.models.values()
                    ),
                    key=lambda m: m["effective_from_ms"],
                ),
            }
        )


#: An audit query without `from` covers this much before `to`.
AUDIT_DEFAULT_MS = 86_400_000
#: The longest range of one audit query.
AUDIT_MAX_MS = 31 * 86_400_000


@app.page("/api/fraud/audit")
class FraudAudit(View):
    """The merchant's decisions, the model's and people's, as the archive holds them (written
    within TALLY_ARCHIVE_FLUSH_SECONDS of each): `from`..`to` (default: the last day; at
    most 31 days), by the time each was taken."""

    async def get(self, request: Request) -> Response:
        require_ready()
        merchant = one_tenant_read(request)
        to_ms = time_param(request, "to", now_ms())
        from_ms = time_param(request, "from", to_ms - AUDIT_DEFAULT_MS)
        if not 0 < to_ms - from_ms <= AUDIT_MAX_MS:
            raise BadRequest("from must be before to, and at most 31 days before it")
        found = await read_archive(
            partial(decisions_of, audit_archive(), merchant, from_ms, to_ms),
            f"merchant {merchant!r}'s decisions",
        )
        return self.json(
            {"merchant": merchant, "from": iso(from_ms), "to": iso(to_ms), "decisions": found}
        )
