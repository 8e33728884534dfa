"""Final merchant-hours as Parquet, through the archive's machinery (tally.archive.store):
one row per (merchant, hour), its exact figures, its channels as JSON and its customers'
sketch as bytes. A range of a merchant's hours is read with DuckDB, the figures merged in
Python (core.merchants: sketches merge there, not in SQL). No Faust.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from datetime import date
from typing import Any

import orjson
import pyarrow as pa

from tally.archive.store import Archive, Layout, connect, day_of
from tally.core.errors import ValidationError
from tally.core.limits import TENANT_PATTERN
from tally.core.merchants import HOUR_MS, HourFigures

MERCHANT_ROWS = pa.schema(
    [
        pa.field("merchant", pa.string(), nullable=False),
        pa.field("hour_ms", pa.int64(), nullable=False),
        pa.field("orders", pa.int64(), nullable=False),
        pa.field("units", pa.int64(), nullable=False),
        pa.field("revenue_cents", pa.int64(), nullable=False),
        pa.field("channels", pa.string(), nullable=False),
        pa.field("customers", pa.binary(), nullable=False),
    ]
)

#: A merchant's day is at most 24 rows of a file sorted by merchant: in row groups this small
#: a one-merchant query reads one or two of a day's, found by their statistics
#: (python -m bench.merchants: its one-year range).
MERCHANT_ROW_GROUP_ROWS = 4_096

#: A final merchant-hour: (merchant, hour ms, its figures as HourFigures.to_record wrote them).
FinalHour = tuple[str, int, dict[str, Any]]


def final_hour(value: Any) -> FinalHour:
    """(merchant, hour_ms, record) of a merchant-hours-1h value, checked."""
    try:
        merchant, hour_ms = value["merchant"], value["hour_ms"]
        if not (isinstance(merchant, str) and TENANT_PATTERN.fullmatch(merchant)):
            raise ValidationError(f"merchant={merchant!r} is not a tenant name")
        if not isinstance(hour_ms, int) or hour_ms < 0 or hour_ms % HOUR_MS:
            raise ValidationError(f"hour_ms={hour_ms!r} is not the start of an hour")
        record = {k: value[k] for k in ("orders", "units", "revenue_cents", "channels")}
        record["customers"] = base64.b64decode(value["customers"], validate=True)
        HourFigures.from_record(record)  # every field usable
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(
            "not a final merchant-hour: expected {merchant, hour_ms, orders, units, "
            f"revenue_cents, channels, customers}} ({type(exc).__name__}: {exc})"
        ) from None
    return merchant, hour_ms, record


def hours_by_day(hours: Iterable[FinalHour]) -> dict[date, pa.Table]:
    """Final hours → one sorted table per day; a (merchant, hour) given twice counts once
    (the later one)."""
    latest = {(merchant, hour_ms): record for merchant, hour_ms, record in hours}
    by_day: dict[date, list[dict[str, Any]]] = {}
    for (merchant, hour_ms), record in sorted(latest.items()):
        by_day.setdefault(day_of(hour_ms), []).append(
            {
                "merchant": merchant,
                "hour_ms": hour_ms,
                "orders": record["orders"],
                "units": record["units"],
                "revenue_cents": record["revenue_cents"],
                "channels": json.dumps(record["channels"], sort_keys=True),
                "customers": record["customers"],
            }
        )
    return {day: pa.Table.from_pylist(rows, MERCHANT_ROWS) for day, rows in by_day.items()}


MERCHANT_HOURS = Layout(
    MERCHANT_ROWS,
    [("merchant", "ascending"), ("hour_ms", "ascending")],
    ("merchant", "hour_ms"),
    "hour_ms",
    hours_by_day,
    row_group_rows=MERCHANT_ROW_GROUP_ROWS,
)


def archived_hours(
    archive: Archive, merchant: str, start_ms: int, end_ms: int
) -> list[tuple[int, HourFigures]]:
    """The merchant's archived hours in [start_ms, end_ms), in time order, each once.
    Blocking: run it in a thread."""
    files = archive.files_between(start_ms, end_ms)
    if not files:
        return []
    with connect() as con:
        archive.register(con, files)
        rows = con.execute(
            "SELECT hour_ms, orders, units, revenue_cents, channels, customers FROM "
            "(SELECT DISTINCT ON (merchant, hour_ms) * FROM rows "
            "WHERE merchant = ? AND hour_ms >= ? AND hour_ms < ?) ORDER BY hour_ms",
            [merchant, start_ms, end_ms],
        ).fetchall()
    return [
        (
            hour_ms,
            HourFigures.from_record(
                {
                    "orders": orders,
                    "units": units,
                    "revenue_cents": revenue,
                    "channels": orjson.loads(channels),
                    "customers": customers,
                }
            ),
        )
        for hour_ms, orders, units, revenue, channels, customers in rows
    ]
