"""The fraud audit as Parquet, through the archive's machinery (tally.archive.store): one row
per decision, the model's and a person's, each once (merchant, order, kind), with the whole
record as JSON. Read with DuckDB (`decisions_of`). No Faust.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import orjson
import pyarrow as pa

from tally.archive.store import Archive, Layout, connect, day_of
from tally.core.errors import ValidationError

AUDIT_ROWS = pa.schema(
    [
        pa.field("merchant", pa.string(), nullable=False),
        pa.field("order_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # model | review
        pa.field("decision", pa.string(), nullable=False),
        pa.field("by", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("at_ms", pa.int64(), nullable=False),
        pa.field("record", pa.string(), nullable=False),
    ]
)

#: A decision as the archive keeps it: (merchant, order id, kind, the audit record).
AuditRow = tuple[str, str, str, dict[str, Any]]


def audit_row(value: Any) -> AuditRow:
    """An audit record of fraud-audit, checked."""
    try:
        kind = value["kind"]
        if kind not in ("model", "review"):
            raise ValidationError(f"kind={kind!r} is neither model nor review")
        at_of(value)  # every record has a time
        return str(value["merchant"]), str(value["order_id"]), kind, value
    except (KeyError, TypeError) as exc:
        raise ValidationError(f"not a fraud audit record: no {exc}") from None


def at_of(record: dict[str, Any]) -> int:
    """When the decision was taken: the model's, or the person's."""
    return int(record["review"]["at_ms"] if record["kind"] == "review" else record["decided_at_ms"])


def rows_by_day(rows: Iterable[AuditRow]) -> dict[date, pa.Table]:
    """Audit records → one sorted table per day; a decision given twice counts once."""
    latest = {(merchant, order, kind): record for merchant, order, kind, record in rows}
    by_day: dict[date, list[dict[str, Any]]] = {}
    for (merchant, order, kind), record in sorted(latest.items()):
        decided = record["review"]["decision"] if kind == "review" else record["decision"]
        by_day.setdefault(day_of(at_of(record)), []).append(
            {
                "merchant": merchant,
                "order_id": order,
                "kind": kind,
                "decision": decided,
                "by": record["review"]["by"] if kind == "review" else "model",
                "model_version": record["model_version"],
                "at_ms": at_of(record),
                "record": orjson.dumps(record).decode(),
            }
        )
    return {day: pa.Table.from_pylist(rows, AUDIT_ROWS) for day, rows in by_day.items()}


FRAUD_AUDIT_LAYOUT = Layout(
    AUDIT_ROWS,
    [("merchant", "ascending"), ("order_id", "ascending"), ("kind", "ascending")],
    ("merchant", "order_id", "kind"),
    "at_ms",
    rows_by_day,
)


def decisions_of(
    archive: Archive, merchant: str, start_ms: int, end_ms: int
) -> list[dict[str, Any]]:
    """The merchant's archived decisions taken in [start_ms, end_ms), in time order, each
    once. Blocking: run it in a thread."""
    files = archive.files_between(start_ms, end_ms)
    if not files:
        return []
    with connect() as con:
        archive.register(con, files)
        found = con.execute(
            "SELECT record FROM (SELECT DISTINCT ON (merchant, order_id, kind) * FROM rows "
            "WHERE merchant = ? AND at_ms >= ? AND at_ms < ?) ORDER BY at_ms, order_id, kind",
            [merchant, start_ms, end_ms],
        ).fetchall()
    return [orjson.loads(record) for (record,) in found]
