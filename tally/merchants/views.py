"""Merchant views: a merchant's sales per step, its top items, a summary; answered by the
worker owning the merchant's partition, for the merchant's own token or an operator's (any
other caller: 404, as for a merchant that does not exist).

Hours from the hot tier's first hour on come from the tables; older ones from the archive.
Every answer says which tier answered for which hours, the window's watermark, and from which
hour on figures can still change (`open_from`: hours still in the window).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

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
from tally.core.topk import RankedTotals, late_by_group
from tally.http.access import caller
from tally.merchants.state import (
    days_from,
    final_before,
    hot_from,
    merchant_windows,
    written_clock,
)
from tally.merchants.tables import (
    MERCHANT_SPEC,
    cell_key,
    merchant_archive,
    merchant_clocks,
    merchant_days,
    merchant_hours,
    merchant_panes,
)
from tally.runtime.cells import read_cell
from tally.runtime.panes import pane_key, pane_prefix
from tally.runtime.queries import (
    NO_WINDOW,
    BadRequest,
    OwnedView,
    check_retained,
    choice_param,
    id_param,
    int_param,
    read_archive,
    routed_to_owner,
    time_param,
)
from tally.runtime.restore import RestoringTableManager
from tally.runtime.store import scan, stored_value

#: A query without `from` covers this much before `to`.
DEFAULT_RANGE_MS = 30 * 24 * HOUR_MS
#: Hours one query may span (two years and a day: a leap year's).
MAX_RANGE_MS = (2 * 366 + 1) * 24 * HOUR_MS


class NoSuchMerchant(WebError):
    """The caller's token is another merchant's: whether this one exists is not said (an
    operator asking for a merchant never seen gets an answer with no figures)."""

    code = 404


def merchant_param(request: Request, merchant_id: str) -> str:
    """The merchant of the path, if the caller may read it: its own token or an operator's."""
    merchant = id_param("merchant_id", merchant_id)
    identity = caller(request)
    if not identity.operator and identity.tenant != merchant:
        raise NoSuchMerchant(f"no merchant {merchant!r} for this token")
    return merchant


#: The request header of a query a reader relayed (its URL): never relayed by a reader again.
RELAYED_BY_READER = "Tally-Relayed-By-Reader"


class OwnerElsewhere(WebError):
    """A reader was asked for the owner's answer and knows no processing worker to ask."""

    code = 409


#: `?consistency=`: `any` lets a worker holding a standby copy of the merchant's partition
#: (or a reader: all of them) answer from it, saying how stale it is; `owner` asks the
#: partition's owner.
CONSISTENCY = ("any", "owner")


@dataclass(frozen=True)
class Copy:
    """The copy of a merchant's partition a query reads: the owner's (its window in memory,
    current), or a standby's or a reader's (what the changelogs brought: as of the clock
    record the owner last wrote, once a batch, every second at least while purchases
    partitions announce)."""

    served_by: str
    last_pane: int | None
    watermark: int | None
    as_of_ms: int
    late_events: int
    window: SlidingTotals | None = None

    def freshness(self) -> dict[str, Any]:
        return {
            "served_by": self.served_by,
            "as_of": iso(self.as_of_ms),
            "stale_by_ms": max(0, now_ms() - self.as_of_ms),
            "watermark": None if self.watermark is None else iso(self.watermark),
        }


def copy_of(
    served_by: str, partition: int, merchant: str, window: SlidingTotals | None = None
) -> Copy:
    """A copy as of the clock record the partition's owner last wrote when its window slid:
    the pane it slid to, so hours final by then are in the days, and none later. `window`:
    the owner's, in memory (its current top items)."""
    saved = merchant_windows.saved_clock(partition)
    clock = written_clock(partition, saved)
    now = now_ms()
    as_of = now if served_by == "owner" else clock.wall_ms
    watermark = (
        window.watermark(now) if window else clock.watermark(clock.wall_ms, MERCHANT_SPEC.grace_ms)
    )
    late = late_by_group(saved.get("late_events") or {}).get(merchant, 0)
    return Copy(served_by, saved.get("last_pane"), watermark, as_of, late, window)


def owner_copy(merchant: str) -> Copy:
    """The owner's copy, with its window (the clock record is read through the cell cache:
    what the window wrote is there)."""
    partition = partition_for(merchant, settings.partitions)
    window = merchant_windows.windows.get(partition)
    if window is None and merchant_windows.saved_clock(partition):
        window = merchant_windows.window_for(partition, now_ms(), idle=False)
    return copy_of("owner", partition, merchant, window)


def holds_standby(partition: int) -> bool:
    """Whether this worker keeps a current standby copy of the partition of every merchants
    table (runtime.restore)."""
    recovery = cast(RestoringTableManager, app.tables).recovery
    tables = (merchant_hours, merchant_days, merchant_panes, merchant_clocks)
    return recovery.holds_current_copies(tables, partition)


#: A part of a range and the tier answering for it: "archive" (hours, Parquet), "days"
#: (whole final days, RocksDB), "hot" (hours, RocksDB).
Segment = tuple[str, int, int]


class Range:
    """from/to of a request, whole hours, validated; which tier answers for which hours.

    Hours from the hot tier's first hour on come from the hot table, older ones from the
    archive; with steps of a day or more, whole final days the hot tier still keeps come
    from the days table instead, a read per day."""

    def __init__(self, request: Request, copy: Copy, step: str = "1h") -> None:
        to_ms = time_param(request, "to", now_ms())
        from_ms = time_param(request, "from", to_ms - DEFAULT_RANGE_MS)
        if from_ms >= to_ms:
            raise BadRequest(f"from ({iso(from_ms)}) must be before to ({iso(to_ms)})")
        if to_ms - from_ms > MAX_RANGE_MS:
            raise BadRequest(f"from..to spans more than {MAX_RANGE_MS // DAY_MS} days")
        self.first = step_start(from_ms, "1h")
        self.end = step_start(to_ms - 1, "1h") + HOUR_MS
        self.copy = copy
        last_pane = copy.last_pane
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
            **self.copy.freshness(),
            "open_from": None if self.open_from is None else iso(self.open_from),
            "tiers": [
                {"tier": tier, "from": iso(start), "to": iso(end)}
                for tier, start, end in self.segments
            ],
        }


def hour_cell(stored: Any) -> HourFigures:
    return HourFigures.from_record(value_of(stored))


def day_cell(stored: Any) -> HourFigures:
    return DayFigures.from_record(stored).figures


def hot_cells(
    table: CollectionT,
    figures_of: Callable[[Any], HourFigures],
    merchant: str,
    span: tuple[int, int],
    every: int,
) -> list[tuple[int, HourFigures]]:
    """The merchant's hours (or days) in [start, end) from a hot table: a read each."""
    partition = partition_for(merchant, settings.partitions)
    found = []
    for at_ms in range(*span, every):
        stored = read_cell(table, cell_key(at_ms, merchant), partition)
        if stored is not None:
            found.append((at_ms, figures_of(stored)))
    return found


async def hours_in(merchant: str, span: Range) -> list[tuple[int, HourFigures]]:
    """The merchant's figures of the range, per hour (or day): the hot tiers' first, then the
    archive's (read second: the hot tier may prune meanwhile, never the other way round)."""
    found = []
    for tier, start, end in span.segments:
        if tier == "days":
            found += hot_cells(merchant_days, day_cell, merchant, (start, end), DAY_MS)
        elif tier == "hot":
            found += hot_cells(merchant_hours, hour_cell, merchant, (start, end), HOUR_MS)
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
    """A merchant's query: answered from this worker's standby copy of the merchant's
    partition if it holds one (unless `?consistency=owner`), else by the partition's owner
    (forwarded there); on a reader, from its copy (`?consistency=owner`: relayed to a
    processing worker). Every answer says which copy answered and how stale it is."""

    pipeline = "merchants"

    async def owned(self, request: Request, merchant_id: str) -> Response:
        merchant = merchant_param(request, merchant_id)
        consistency = choice_param(request, "consistency", CONSISTENCY)
        partition = partition_for(merchant, settings.partitions)
        if settings.reads_only:
            if consistency == "owner":
                return await self.at_processing(request)
            return await self.answer(request, merchant, copy_of("reader", partition, merchant))
        if consistency == "any" and holds_standby(partition):
            copy = copy_of("standby", partition, merchant)
            if copy.last_pane is not None:  # else the copy has nothing yet: ask the owner
                return await self.answer(request, merchant, copy)
        return await self.at_owner(request, merchant_id)

    async def at_processing(self, request: Request) -> Response:
        """A reader's `consistency=owner` query: relayed to a processing worker (which
        forwards it to the owner), marked, so that a reader it reaches refuses it instead of
        relaying it on."""
        if RELAYED_BY_READER in request.headers:
            raise OwnerElsewhere(
                "a reader relayed this consistency=owner query to another reader: the "
                "relaying reader's TALLY_PROCESSING_URLS must name processing workers"
            )
        if not settings.processing_urls:
            raise OwnerElsewhere(
                "this worker only serves reads (TALLY_ROLE=read) and has no processing "
                "workers to relay consistency=owner to (TALLY_PROCESSING_URLS): ask a "
                "processing worker, or drop consistency=owner for this reader's copy"
            )
        return await self.relay(
            request,
            settings.processing_urls,
            {RELAYED_BY_READER: settings.web_url},
            "none of the processing workers (TALLY_PROCESSING_URLS)",
        )

    @routed_to_owner(merchant_hours, match_info="merchant_id")
    async def at_owner(self, request: Request, merchant_id: str) -> Response:
        merchant = merchant_param(request, merchant_id)
        return await self.answer(request, merchant, owner_copy(merchant))

    async def answer(self, request: Request, merchant: str, copy: Copy) -> Response:
        raise NotImplementedError


@app.page("/api/merchants/{merchant_id}/sales")
class MerchantSales(MerchantView):
    """A merchant's orders, units, revenue, average order and distinct customers per step."""

    async def answer(self, request: Request, merchant: str, copy: Copy) -> Response:
        step = request.query.get("step", "1h")
        if step not in STEPS:
            raise BadRequest(f"step={step!r} is not one of {', '.join(STEPS)}")
        span = Range(request, copy, step)
        hours = await hours_in(merchant, span)
        steps = steps_answer(hours, step)
        return self.json({"merchant": merchant, "step": step, **span.freshness(), "steps": steps})


@app.page("/api/merchants/{merchant_id}/summary")
class MerchantSummary(MerchantView):
    """A merchant's figures over the whole range, merged (distinct customers: of the range)."""

    async def answer(self, request: Request, merchant: str, copy: Copy) -> Response:
        span = Range(request, copy, "1d")
        total = merged(figures for _, figures in await hours_in(merchant, span))
        return self.json({"merchant": merchant, **span.freshness(), **total.answer()})


@app.page("/api/merchants/{merchant_id}/top-items")
class MerchantTopItems(MerchantView):
    """The merchant's top items over the sales window: the current one, or the one ending at
    `?at=` (its panes are kept TALLY_SALES_RETAINED_PANES after they leave the window)."""

    async def answer(self, request: Request, merchant: str, copy: Copy) -> Response:
        k = int_param(request, "k", settings.top_k, 1, settings.top_k)
        # The owner's window in memory is the current one; a standby's, the clock record's.
        current = copy.last_pane if copy.window is None else copy.window.last_pane
        if current is None:
            return self.json({"merchant": merchant, **NO_WINDOW, "items": []})
        last_pane = current
        if request.query.get("at"):
            last_pane = min(MERCHANT_SPEC.pane_of(time_param(request, "at", 0)), last_pane)
        if copy.window is not None and last_pane == current:
            top = copy.window.totals.group_top(merchant, k)
        else:
            top = top_from_panes(merchant, last_pane, k, copy.watermark or 0)
        return self.json(
            {
                "merchant": merchant,
                "window_start": iso(MERCHANT_SPEC.start_ms(MERCHANT_SPEC.first_pane(last_pane))),
                "window_end": iso(MERCHANT_SPEC.start_ms(last_pane + 1)),
                **copy.freshness(),
                "late_events": copy.late_events,
                "items": [
                    {"rank": rank, "item_id": unscoped(key)[1], "quantity": quantity}
                    for rank, (key, quantity) in enumerate(top, 1)
                ],
            }
        )


def top_from_panes(
    merchant: str, last_pane: int, k: int, watermark_ms: int
) -> list[tuple[str, int]]:
    """The merchant's top items of the window ending with `last_pane`, summed from its panes
    (a past window's, or the current one on a standby copy)."""
    check_retained(MERCHANT_SPEC, last_pane, watermark_ms)
    partition = partition_for(merchant, settings.partitions)
    totals = RankedTotals()
    for pane in range(MERCHANT_SPEC.first_pane(last_pane), last_pane + 1):
        start = pane_key(pane, scoped(merchant, ""))
        for key, value in scan(merchant_panes, partition, start, start[:-1] + b"}"):
            totals.add(key[len(pane_prefix(pane)) :].decode(), value_of(stored_value(value)))
    return totals.top(k)
