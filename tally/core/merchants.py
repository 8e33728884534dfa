"""A merchant's sales per hour, and the steps answers merge hours into. No Faust.

An hour's figures are exact integers (orders, units, revenue in cents), the same split by
sales channel, and the distinct customers as an HLL sketch (Apache DataSketches): sketches
of hours, workers or replays merge into the sketch of their union, so a day's or a month's
distinct customers is estimated from its hours' sketches, never summed (a customer buying in
two hours is one customer). Every figure merges associatively, so a step is the merge of its
hours whichever tier (hot tables, archive) holds each.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from datasketches import hll_sketch, hll_union

from tally.core.rollups import bucket_start

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: 2^12 registers: about 1.6 % relative standard error, at most ~4 KB per merchant-hour
#: (a sketch of few customers stays a short list of them).
HLL_LG_K = 12
#: Channels one merchant-hour keeps apart; purchases of any further channel count as "other"
#: (a channel is free text in the purchase metadata: its variety must not grow a record).
#: Totals stay exact; past the cap, which channels fold into "other" depends on the order.
MAX_CHANNELS = 16
OTHER_CHANNEL = "other"
#: A purchase whose metadata names no channel.
NO_CHANNEL = "unknown"
#: The metadata key naming a purchase's sales channel.
CHANNEL_KEY = "channel"
#: Query steps: an hour, a UTC day, an ISO week (from Monday 00:00 UTC), a UTC calendar month.
STEPS = ("1h", "1d", "1w", "1mo")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: [orders, units, revenue_cents]
Counts = list[int]


def day_start(ms: int) -> int:
    return bucket_start(ms, DAY_MS)


def step_start(ms: int, step: str) -> int:
    """The start (epoch ms) of the `step` bucket that holds `ms`."""
    if step == "1h":
        return bucket_start(ms, HOUR_MS)
    day = bucket_start(ms, 24 * HOUR_MS)
    if step == "1d":
        return day
    moment = _EPOCH + timedelta(milliseconds=day)
    if step == "1w":
        return day - moment.weekday() * 24 * HOUR_MS
    if step == "1mo":
        first = moment.replace(day=1)
        return int((first - _EPOCH) / timedelta(milliseconds=1))
    raise ValueError(f"step {step!r} is not one of {', '.join(STEPS)}")


@dataclass
class HourFigures:
    """One merchant's sales of one hour (or, merged, of any set of hours)."""

    orders: int = 0
    units: int = 0
    revenue_cents: int = 0
    #: channel → [orders, units, revenue_cents]
    channels: dict[str, Counts] = field(default_factory=dict)
    customers: hll_sketch = field(default_factory=lambda: hll_sketch(HLL_LG_K))

    def add(
        self, quantity: int, unit_price_cents: int, customer: str, metadata: Mapping[str, str]
    ) -> None:
        """One purchase (an order) in."""
        revenue = quantity * unit_price_cents
        self.orders += 1
        self.units += quantity
        self.revenue_cents += revenue
        self._count(channel_of(metadata, self.channels), 1, quantity, revenue)
        if customer:
            self.customers.update(customer)

    def merge(self, other: HourFigures) -> None:
        """`other`'s figures in (a merged customer sketch counts a customer in both once)."""
        self.merge_all([other])

    def merge_all(self, others: Iterable[HourFigures]) -> None:
        """Several figures in, their sketches through one union (not one per pair: a year's
        daily answer merges 8,760 hours)."""
        union = hll_union(HLL_LG_K)
        union.update(self.customers)
        others = list(others)
        for other in others:
            union.update(other.customers)
        self.customers = union.get_result()
        for other in others:
            self.orders += other.orders
            self.units += other.units
            self.revenue_cents += other.revenue_cents
            for channel, counts in other.channels.items():
                self._count(channel_of({CHANNEL_KEY: channel}, self.channels), *counts)

    def _count(self, channel: str, orders: int, units: int, revenue_cents: int) -> None:
        kept = self.channels.get(channel)
        if kept is None:
            self.channels[channel] = [orders, units, revenue_cents]
        else:
            kept[0] += orders
            kept[1] += units
            kept[2] += revenue_cents

    def to_record(self) -> dict[str, Any]:
        """The JSON form a table keeps (the sketch as base64 of its compact bytes)."""
        return {
            "orders": self.orders,
            "units": self.units,
            "revenue_cents": self.revenue_cents,
            "channels": self.channels,
            "customers": base64.b64encode(self.customers.serialize_compact()).decode(),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> HourFigures:
        """Figures as `to_record` wrote them (the sketch may also be its bytes, as the
        archive keeps it)."""
        sketch = record["customers"]
        return cls(
            orders=int(record["orders"]),
            units=int(record["units"]),
            revenue_cents=int(record["revenue_cents"]),
            channels={str(c): [int(n) for n in v] for c, v in record["channels"].items()},
            customers=hll_sketch.deserialize(
                sketch if isinstance(sketch, bytes) else base64.b64decode(sketch)
            ),
        )

    def answer(self) -> dict[str, Any]:
        """The figures as a query shows them: averages derived, customers estimated with
        their 95 % bounds."""
        sketch = self.customers
        return {
            "orders": self.orders,
            "units": self.units,
            "revenue_cents": self.revenue_cents,
            "average_order_cents": self.revenue_cents / self.orders if self.orders else None,
            "distinct_customers": round(sketch.get_estimate()),
            "distinct_customers_bounds": [
                round(sketch.get_lower_bound(2)),
                round(sketch.get_upper_bound(2)),
            ],
            "channels": {
                channel: {"orders": o, "units": u, "revenue_cents": r}
                for channel, (o, u, r) in sorted(self.channels.items())
            },
        }


@dataclass
class DayFigures:
    """A merchant's final hours of one UTC day, merged, and which hours are in: an hour
    merged again (its day was written, the partition's progress was not, then a crash) is
    merged once."""

    #: Bit h set: hour h of the day (UTC) is in.
    hours: int = 0
    figures: HourFigures = field(default_factory=HourFigures)

    def add_hour(self, hour_ms: int, figures: HourFigures) -> bool:
        """Merge one final hour in (False: it was in already)."""
        bit = 1 << (hour_ms % DAY_MS) // HOUR_MS
        if self.hours & bit:
            return False
        self.hours |= bit
        self.figures.merge(figures)
        return True

    def to_record(self) -> dict[str, Any]:
        return {"hours": self.hours, **self.figures.to_record()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> DayFigures:
        """The day as `to_record` wrote it (None: a day with nothing in yet)."""
        if record is None:
            return cls()
        return cls(int(record["hours"]), HourFigures.from_record(record))


def channel_of(metadata: Mapping[str, str], kept: Mapping[str, Counts]) -> str:
    """The channel a purchase counts under, given the channels its merchant-hour keeps."""
    channel = metadata.get(CHANNEL_KEY) or NO_CHANNEL
    if channel in kept or len(kept) < MAX_CHANNELS - 1:
        return channel
    return OTHER_CHANNEL


def merged(figures: Iterable[HourFigures]) -> HourFigures:
    """The merge of several hours' (or tiers') figures."""
    total = HourFigures()
    total.merge_all(figures)
    return total


def by_step(hours: Iterable[tuple[int, HourFigures]], step: str) -> list[tuple[int, HourFigures]]:
    """Hours' figures (any order, an hour given twice merged) → one merged figure per step
    bucket, in time order."""
    buckets: dict[int, list[HourFigures]] = {}
    for hour_ms, figures in hours:
        buckets.setdefault(step_start(hour_ms, step), []).append(figures)
    return sorted((start, merged(each)) for start, each in buckets.items())
