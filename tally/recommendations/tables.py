"""The recommendations pipeline's topics and tables (Faust declarations; the logic is in
core.recommendations, core.ttl and runtime.expiry).

page-views ─► (checked, by session) ─► page-views-by-session, with each page-views
          │  partition's watermark (page_view_clocks "<partition>" → its event clock)
          ─► session_items   "<tenant>|<session>" → {"last_ms", "value": {item: first view ms}}
          │  session_expiry  "<expires at:013d>|<tenant>|<session>", and the partition's clock
          ─► co-view-changes (pairs completed or moved, to the row item's partition)
          ─► co_views  "t|<tenant>|<item>"            → {other item: sessions, over the window}
                       "p|<pane:012d>|<tenant>|<item>" → stamped {other item: sessions} (a pane)
                       "~clock"                        → {"clock", "last_pane", "late_changes"}

A row's window total and its panes share one table, so one RocksDB write batch carries both:
after a crash they agree. Panes lead with their hour, so those that left the 7-day window are
one range of keys, subtracted from the totals and deleted in one go.
"""

from __future__ import annotations

from tally.app import app, settings
from tally.core.recommendations import CO_VIEWS
from tally.core.ttl import TimeToLive
from tally.runtime.routing import rekeyed_from
from tally.runtime.store import memory_bounded
from tally.runtime.topics import handover_topic
from tally.topics import CO_VIEW_CHANGES, PAGE_VIEWS, SESSION_VIEWS

#: A session lives this long after its last view (TALLY_SESSION_TTL_SECONDS).
SESSION_TTL = TimeToLive(settings.session_ttl_seconds * 1000)

#: Page views as producers send them (Avro PageView), keyed by session id.
page_views = app.topic(PAGE_VIEWS, key_type=bytes, value_type=bytes)
#: Checked views of the sessions one partition holds: JSON lists (codecs.handover).
session_views = handover_topic(SESSION_VIEWS)
rekeyed_from(page_views, session_views)
#: Changes to co-view rows, each with the session-views offset that caused it.
co_view_changes = handover_topic(CO_VIEW_CHANGES)
rekeyed_from(session_views, co_view_changes)

#: Each page-views partition's event clock (the watermark it announces to the sessions).
page_view_clocks = app.Table("page_view_clocks", key_type=bytes)
#: Session state lives on disk (a million live sessions must not be a million dicts in
#: memory); its changelog is compacted, expired sessions leave it as tombstones.
session_items = app.Table("session_items", key_type=bytes, options=memory_bounded())
session_expiry = app.Table("session_expiry", key_type=bytes, options=memory_bounded())
#: Panes leaving the window and rows left empty are deleted with tombstones (compacted).
co_views = app.Table("co_views", key_type=bytes, options=memory_bounded())

#: The co_views table's own record of its partition: after every "p|" and "t|" key.
CO_VIEWS_CLOCK = b"~clock"


def total_key(tenant: str, item: str) -> bytes:
    return f"t|{tenant}|{item}".encode()


def pane_prefix(pane: int) -> bytes:
    return f"p|{pane:012d}|".encode()


def pane_key(pane: int, tenant: str, item: str) -> bytes:
    return pane_prefix(pane) + f"{tenant}|{item}".encode()


def row_of_pane_key(key: bytes) -> tuple[str, str]:
    """(tenant, item) of a `pane_key`."""
    tenant, item = key[len(pane_prefix(0)) :].decode().split("|", 1)
    return tenant, item


def window_of(last_pane: int) -> tuple[int, int]:
    """[start ms, end ms) of the co-view window ending with `last_pane`."""
    return CO_VIEWS.start_ms(CO_VIEWS.first_pane(last_pane)), CO_VIEWS.start_ms(last_pane + 1)
