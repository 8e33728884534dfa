"""Social views: a brand's alert queue, acting on an alert, and its minute summaries; each
answered by the worker owning the brand's partition (forwarded there). The brand is the
caller's tenant (an operator names one with `?tenant=`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from faust.web import Request, Response, View

from tally.app import app, settings
from tally.core.applied import value_of
from tally.core.clock import iso, now_ms
from tally.core.partitioning import partition_for
from tally.core.rollups import MINUTE_MS, minute_of
from tally.core.social import (
    ACTIONS,
    ALERT_STATES,
    RESOLVED,
    MinuteFigures,
    transition,
)
from tally.http.access import caller
from tally.runtime.cells import flush, place, read_cell
from tally.runtime.queries import (
    BadRequest,
    OwnedView,
    changed_cell,
    choice_param,
    id_param,
    int_param,
    json_object,
    one_tenant_read,
    require_ready,
    routed_by_key,
    time_param,
)
from tally.runtime.store import partition_key, scan, stored_value, tenant_values
from tally.social.tables import (
    alert_key,
    alerts_topic,
    minute_prefix,
    social_alerts,
    social_clocks,
    social_minutes,
    split_minute_key,
)
from tally.telemetry import SOCIAL_ALERTS

#: A summary without `from` covers this many minutes before `to`.
DEFAULT_MINUTES = 60
#: The longest range of one summary query.
MAX_MINUTES = 24 * 60
#: Alert statuses a queue is read by.
STATUS_CHOICES = (*ALERT_STATES, "all")


def urgency(alert: dict[str, Any]) -> tuple[float, int, str]:
    """Most negative for its reach first; then the oldest post."""
    return alert["weighted_score"], alert["created_at_ms"], alert["id"]


@app.page("/api/social/alerts")
class SocialAlerts(OwnedView):
    """The brand's alerts in one status (`?status=open`, the default; `all`), most urgent
    first, with the count in each status."""

    pipeline = "social"

    async def owned(self, request: Request) -> Response:
        brand = one_tenant_read(request)
        status = choice_param(request, "status", STATUS_CHOICES)
        limit = int_param(request, "limit", 100, 1, 1000)

        async def answer() -> Response:
            alerts = tenant_values(social_alerts, partition_for(brand, settings.partitions), brand)
            counts = Counter(alert["status"] for alert in alerts)
            chosen = sorted(
                (alert for alert in alerts if status in ("all", alert["status"])), key=urgency
            )
            return self.json(
                {
                    "brand": brand,
                    "status": status,
                    "counts": {state: counts.get(state, 0) for state in ALERT_STATES},
                    "alerts": chosen[:limit],
                    "more": len(chosen) > limit,
                }
            )

        return await routed_by_key(social_alerts, brand, self, request, answer)


@app.page("/api/social/alerts/{alert_id}/{action}")
class SocialAlertAction(View):
    """`ack` or `resolve` an alert of the brand (optional JSON body {"note": "..."}): the
    transition, who took it (the token's subject) and when join the alert's history, go to
    social-alerts, and the alert as it is now is the answer."""

    async def post(self, request: Request, alert_id: str, action: str) -> Response:
        require_ready()
        if action not in ACTIONS:
            raise BadRequest(f"{action[:40]!r} is not an action; use one of {', '.join(ACTIONS)}")
        brand = one_tenant_read(request)
        alert_id = id_param("alert_id", alert_id)

        async def act() -> Response:
            body = await json_object(request)
            note = body.get("note", "")
            if not isinstance(note, str):
                raise BadRequest("note must be a string")
            partition = partition_for(brand, settings.partitions)
            after = changed_cell(
                social_alerts,
                alert_key(brand, alert_id),
                partition,
                lambda alert: transition(alert, action, caller(request).subject, now_ms(), note),
                f"brand {brand!r} has no alert {alert_id[:80]!r}",
            )
            # Written before the answer: a GET after it (on any copy) finds the change.
            await flush([place(social_alerts, partition)], acknowledged=True)
            await (await alerts_topic.send(key=alert_id.encode(), value=after))
            SOCIAL_ALERTS.labels("resolved" if after["status"] == RESOLVED else "acked").inc()
            return self.json(after)

        return await routed_by_key(social_alerts, brand, self, request, act)


@app.page("/api/social/summary")
class SocialSummary(OwnedView):
    """The brand's posts per channel and minute over `from`..`to` (default: the last hour):
    counts by sentiment, mean score, the most-shared negative posts; totals per channel
    and over all of them. `?channel=` keeps one channel."""

    pipeline = "social"

    async def owned(self, request: Request) -> Response:
        brand = one_tenant_read(request)
        channel = request.query.get("channel") or None
        step = request.query.get("step", "1m")
        if step != "1m":
            raise BadRequest(f"step={step[:20]!r}: summaries are per minute (1m)")
        to_ms = time_param(request, "to", now_ms())
        from_ms = time_param(request, "from", to_ms - DEFAULT_MINUTES * MINUTE_MS)
        if from_ms >= to_ms:
            raise BadRequest(f"from ({iso(from_ms)}) must be before to ({iso(to_ms)})")
        first, end = minute_of(from_ms), minute_of(to_ms - 1) + MINUTE_MS
        if end - first > MAX_MINUTES * MINUTE_MS:
            raise BadRequest(f"from..to spans more than {MAX_MINUTES} minutes")

        async def answer() -> Response:
            return self.json(summary(brand, channel, first, end))

        return await routed_by_key(social_minutes, brand, self, request, answer)


def summary(brand: str, channel: str | None, first: int, end: int) -> dict[str, Any]:
    partition = partition_for(brand, settings.partitions)
    series: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, MinuteFigures] = {}
    overall = MinuteFigures()
    for key, value in scan(social_minutes, partition, minute_prefix(first), minute_prefix(end)):
        minute, whose, named = split_minute_key(key)
        if whose != brand or (channel is not None and named != channel):
            continue
        figures = MinuteFigures.from_record(value_of(stored_value(value)))
        series.setdefault(named, []).append({"t": iso(minute), **figures.answer()})
        totals.setdefault(named, MinuteFigures()).merge(figures)
        overall.merge(figures)
    clock = read_cell(social_clocks, partition_key(partition), partition) or {}
    newest = clock.get("newest_ms")
    # Posts mostly come in order: minutes within the grace of the newest post still fill up
    # (a later minute changes only by a late post).
    open_from = None if newest is None else minute_of(newest - int(settings.grace_seconds * 1000))
    return {
        "brand": brand,
        "channel": channel,
        "from": iso(first),
        "to": iso(end),
        "newest_post": None if newest is None else iso(newest),
        "late_posts": (clock.get("late_events") or {}).get(brand, 0),
        "open_minutes": [
            iso(minute) for minute in range(max(first, open_from or end), end, MINUTE_MS)
        ],
        "totals": {
            "all": overall.answer(),
            **{name: figures.answer() for name, figures in sorted(totals.items())},
        },
        "series": series,
    }
