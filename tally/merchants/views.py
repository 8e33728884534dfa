"""Merchant views: a merchant's sales per step, its top items, a summary; answered by the
worker owning the merchant's partition, for the merchant's own token or an operator's (any
other caller: 404, as for a merchant that does not exist).

Hours from the hot tier's first hour on come from the tables; older ones from the archive.
Every answer says which tier answered for which hours, the window's watermark, and from which
hour on figures can still change (`open_from`: hours still in the window).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from faust.types import CollectionT
from faust.web import Request, Response
from faust.web.exceptions import WebError

from tally.app import app, settings
from tally.archive.merchant_hours import archived_hours
from tally.core.applied import value_of
from tally.core.clock import iso, now_ms
from tally.core.merchants import (
    DAY_MS,
    HOUR_MS,
    STEPS,
    DayFigures,
    HourFigures,
    by_step,
    day_start,
    merged,
    step_start,
)
from tally.core.partitioning import partition_for
from tally.core.sliding import SlidingTotals
from tally.core.tenancy import scoped, unscoped
from tally.core.topk import RankedTotals
from tally.http.access import caller
from tally.merchants.state import days_from, final_before, hot_from, merchant_windows
from tally.merchants.tables import (
    MERCHANT_SPEC,
    cell_key,
    merchant_archive,
    merchant_days,
    merchant_hours,
    merchant_panes,
)
from tally.runtime.cells import read_cell
from tally.runtime.panes import pane_key, pane_prefix
from tally.runtime.queries import (
    BadRequest,
    OwnedView,
    id_param,
    int_param,
    read_archive,
    routed_to_owner,
    time_param,
)
from tally.runtime.store import scan, stored_value

#: A query without `from` covers this much before `to`.
DEFAULT_RANGE_MS = 30 * 24 * HOUR_MS
#: Hours one query may span (two years and a day: a leap year's).
MAX_RANGE_MS = (2 * 366 + 1) * 24 * HOUR_MS
GONE = 410


class NoSuchMerchant(WebError):
    """The caller may not read this merchant (or it has no data): nothing says which."""

    code = 404


def merchant_param(request: Request, merchant_id: str) -> str:
    """The merchant of the path, if the caller may read it: its own token or an operator's."""
    merchant = id_param("merchant_id", merchant_id)
    identity = caller(request)
    if not identity.operator and identity.tenant != merchant:
        raise NoSuchMerchant(f"no merchant {merchant!r} for this token")
    return merchant


def window_of(merchant: str) -> SlidingTotals | None:
    """The window of the merchant's partition, on its owner (None: it never heard of any
    purchase)."""
    partition = partition_for(merchant, settings.partitions)
    window = merchant_windows.windows.get(partition)
    if window is None and merchant_windows.saved_clock(partition):
        window = merchant_windows.window_for(partition, now_ms(), idle=False)
    return window


#: A part of a range and the tier answering for it: "archive" (hours, Parquet), "days"
#: (whole final days, RocksDB), "hot" (hours, RocksDB).
Segment = tuple[str, int, int]


class Range:
    """from/to of a request, whole hours, validated; which tier answers for which hours.

    Hours from the hot tier's first hour on come from the hot table, older ones from the
    archive; with steps of a day or more, whole final days the hot tier still keeps come
    from the days table instead, a read per day."""

    def __init__(self, request: Request, window: SlidingTotals | None, step: str = "1h") -> None:
        to_ms = time_param(request, "to", now_ms())
        from_ms = time_param(request, "from", to_ms - DEFAULT_RANGE_MS)
        if from_ms >= to_ms:
            raise BadRequest(f"from ({iso(from_ms)}) must be before to ({iso(to_ms)})")
        if to_ms - from_ms > MAX_RANGE_MS:
            raise BadRequest(f"from..to spans more than {MAX_RANGE_MS // DAY_MS} days")
        self.first = step_start(from_ms, "1h")
        self.end = step_start(to_ms - 1, "1h") + HOUR_MS
        last_pane = None if window is None else window.last_pane
        self.watermark = None if window is None else window.watermark(now_ms())
        self.open_from = final_before(last_pane)
        hours = [(self.first, self.end)]
        self.segments: list[Segment] = []
        if step != "1h" and last_pane is not None and self.open_from is not None:
            first_day = max(day_start(self.first + DAY_MS - 1), days_from(last_pane))
            end_day = min(day_start(self.end), day_start(self.open_from))
            if first_day < end_day:
                self.segments.append(("days", first_day, end_day))
                hours = [(self.first, first_day), (end_day, self.end)]
        hot = self.first if last_pane is None else hot_from(last_pane)
        for start, end in hours:
            cut = min(max(hot, start), end)
            self.segments += [
                (tier, a, b) for tier, a, b in (("archive", start, cut), ("hot", cut, end)) if a < b
            ]
        self.segments.sort(key=lambda segment: segment[1])

    def freshness(self) -> dict[str, Any]:
        return {
            "from": iso(self.first),
            "to": iso(self.end),
            "as_of": iso(now_ms()),
            "watermark": None if self.watermark is None else iso(self.watermark),
            "open_from": None if self.open_from is None else iso(self.open_from),
            "tiers": [
                {"tier": tier, "from": iso(start), "to": iso(end)}
                for tier, start, end in self.segments
            ],
        }


def hot_cells(
    table: CollectionT, merchant: str, start: int, end: int, every: int
) -> list[tuple[int, HourFigures]]:
    """The merchant's hours (or days) in [start, end) from a hot table: a read each."""
    partition = partition_for(merchant, settings.partitions)
    found = []
    for at_ms in range(start, end, every):
        stored = read_cell(table, cell_key(at_ms, merchant), partition)
        if stored is not None:
            figures = (
                HourFigures.from_record(value_of(stored))
                if every == HOUR_MS
                else DayFigures.from_record(stored).figures
            )
            found.append((at_ms, figures))
    return found


async def hours_in(merchant: str, span: Range) -> list[tuple[int, HourFigures]]:
    """The merchant's figures of the range, per hour (or day): the hot tiers' first, then the
    archive's (read second: the hot tier may prune meanwhile, never the other way round)."""
    found = []
    for tier, start, end in span.segments:
        if tier != "archive":
            table, every = (merchant_days, DAY_MS) if tier == "days" else (merchant_hours, HOUR_MS)
            found += hot_cells(table, merchant, start, end, every)
    for tier, start, end in span.segments:
        if tier == "archive":
            found += await read_archive(
                partial(archived_hours, merchant_archive(), merchant, start, end),
                f"merchant {merchant!r} from {iso(start)} to {iso(end)}",
            )
    return found


def steps_answer(figures: Iterable[tuple[int, HourFigures]], step: str) -> list[dict[str, Any]]:
    return [
        {"start": iso(start), "start_ms": start, **total.answer()}
        for start, total in by_step(figures, step)
    ]


class MerchantView(OwnedView):
    pipeline = "merchants"


@app.page("/api/merchants/{merchant_id}/sales")
class MerchantSales(MerchantView):
    """A merchant's orders, units, revenue, average order and distinct customers per step."""

    @routed_to_owner(merchant_hours, match_info="merchant_id")
    async def owned(self, request: Request, merchant_id: str) -> Response:
        merchant = merchant_param(request, merchant_id)
        step = request.query.get("step", "1h")
        if step not in STEPS:
            raise BadRequest(f"step={step!r} is not one of {', '.join(STEPS)}")
        span = Range(request, window_of(merchant), step)
        hours = await hours_in(merchant, span)
        return self.json(
            {
                "merchant": merchant,
                "step": step,
                **span.freshness(),
                "steps": steps_answer(hours, step),
            }
        )


@app.page("/api/merchants/{merchant_id}/summary")
class MerchantSummary(MerchantView):
    """A merchant's figures over the whole range, merged (distinct customers: of the range)."""

    @routed_to_owner(merchant_hours, match_info="merchant_id")
    async def owned(self, request: Request, merchant_id: str) -> Response:
        merchant = merchant_param(request, merchant_id)
        span = Range(request, window_of(merchant), "1d")
        total = merged(figures for _, figures in await hours_in(merchant, span))
        return self.json({"merchant": merchant, **span.freshness(), **total.answer()})


@app.page("/api/merchants/{merchant_id}/top-items")
class MerchantTopItems(MerchantView):
    """The merchant's top items over the sales window: the current one, or the one ending at
    `?at=` (its panes are kept TALLY_SALES_RETAINED_PANES after they leave the window)."""

    @routed_to_owner(merchant_hours, match_info="merchant_id")
    async def owned(self, request: Request, merchant_id: str) -> Response:
        merchant = merchant_param(request, merchant_id)
        k = int_param(request, "k", settings.top_k, 1, settings.top_k)
        window = window_of(merchant)
        if window is None or window.last_pane is None:
            return self.json(
                {"merchant": merchant, "window_start": None, "window_end": None, "items": []}
            )
        watermark = window.watermark(now_ms()) or 0
        at = request.query.get("at")
        last_pane = window.last_pane
        if at:
            last_pane = min(MERCHANT_SPEC.pane_of(time_param(request, "at", 0)), last_pane)
        if last_pane == window.last_pane:
            top = window.totals.group_top(merchant, k)
        else:
            top = past_top(merchant, last_pane, k, watermark)
        return self.json(
            {
                "merchant": merchant,
                "window_start": iso(MERCHANT_SPEC.start_ms(MERCHANT_SPEC.first_pane(last_pane))),
                "window_end": iso(MERCHANT_SPEC.start_ms(last_pane + 1)),
                "watermark": iso(watermark),
                "as_of": iso(now_ms()),
                "late_events": window.late_events.get(merchant, 0),
                "items": [
                    {"rank": rank, "item_id": unscoped(key)[1], "quantity": quantity}
                    for rank, (key, quantity) in enumerate(top, 1)
                ],
            }
        )


def past_top(merchant: str, last_pane: int, k: int, watermark_ms: int) -> list[tuple[str, int]]:
    """The merchant's top items of a past window, summed from its kept panes."""
    oldest = MERCHANT_SPEC.retained_from(watermark_ms)
    if MERCHANT_SPEC.first_pane(last_pane) < oldest:
        raise BadRequest(
            f"the window ending at {iso(MERCHANT_SPEC.start_ms(last_pane + 1))} is no longer "
            f"kept; the oldest pane kept starts at {iso(MERCHANT_SPEC.start_ms(oldest))}",
            code=GONE,
        )
    partition = partition_for(merchant, settings.partitions)
    totals = RankedTotals()
    for pane in range(MERCHANT_SPEC.first_pane(last_pane), last_pane + 1):
        start = pane_key(pane, scoped(merchant, ""))
        for key, value in scan(merchant_panes, partition, start, start[:-1] + b"}"):
            totals.add(key[len(pane_prefix(pane)) :].decode(), value_of(stored_value(value)))
    return totals.top(k)
