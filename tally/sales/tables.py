"""The sales pipeline's tables and topics (Faust declarations; the logic is in tables.sliding).

purchases ─► sales_panes   "<pane:012d>|<tenant>|<item>" → [units, offset] (per purchases
         │                 partition; the pane leads: a slide reads a whole pane back)
         └─► sales_clocks  "<partition>" → event clock + late counts per tenant
each tenant's top-K ─► sales-topk-candidates (1 partition) ─► sales_topk "latest|<p>",
                                                               "<pane>|<p>" (history)
"""

from __future__ import annotations

from tally.app import app, settings
from tally.core.windowing import PaneSpec
from tally.runtime.topics import internal_topic
from tally.topics import SALES_CANDIDATES

SALES_SPEC = PaneSpec(
    pane_ms=settings.sales_pane_seconds * 1000,
    window_panes=settings.sales_window_panes,
    grace_ms=int(settings.grace_seconds * 1000),
    extra_retained_panes=settings.sales_retained_panes,
)

#: How long a pane record must stay in the changelog: retained panes, grace, and a day's margin.
_PANE_RETENTION_MS = (
    (SALES_SPEC.window_panes + SALES_SPEC.extra_retained_panes + 1) * SALES_SPEC.pane_ms
    + SALES_SPEC.grace_ms
    + 86_400_000
)

#: (pane, item) → [units sold, offset of the last purchase counted] (tables.applied: a
#: purchase delivered twice counts once). Expired panes are deleted locally; on Kafka the
#: changelog drops them by retention (compact,delete), so no tombstone per cell is ever written.
sales_panes = app.Table(
    "sales_panes",
    key_type=bytes,
    extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": _PANE_RETENTION_MS},
)

#: partition → {"event_ms", "wall_ms", "late_events": {tenant: n}}: the event clock survives
#: restarts.
sales_clocks = app.Table("sales_clocks", key_type=bytes)

#: Each partition's top-K of each tenant, merged into the answers by one worker.
topk_candidates = internal_topic(SALES_CANDIDATES, partitions=1, value_serializer="json")
#: "latest|<partition>" and "<last pane>|<partition>" → candidates (see tables.topk).
sales_topk = app.Table("sales_topk", key_type=bytes, partitions=1)
