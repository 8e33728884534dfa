"""Offsets kept with state, so a message delivered twice is applied once.

Faust is at-least-once here: after a crash or a rebalance, messages processed since the last
commit come again. Every table record Tally increments is stored as `[value, offset]`, the
offset of the last source message it includes; a message at or below a record's offset is
already in it and is skipped for that record. One record is one changelog entry, so the value
and its offset survive a crash together (a changelog partition is a log: whatever part of a
batch reached it, each record in it is whole). No Faust in here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tally.tables.rollups import Acc, Cells

#: A stored record: [value, offset of the last source message it includes].
Stamped = list[Any]


def stamp(value: Any, offset: int) -> Stamped:
    return [value, offset]


def value_of(stored: Stamped | None, default: Any = None) -> Any:
    return default if stored is None else stored[0]


def offset_of(stored: Stamped | None) -> int:
    """The offset a record includes messages through (-1: none yet)."""
    return -1 if stored is None else int(stored[1])


def merge_all(accs: Iterable[Acc]) -> Acc | None:
    total: Acc | None = None
    for acc in accs:
        if total is None:
            total = list(acc)
        else:
            total[0] = min(total[0], acc[0])
            total[1] = max(total[1], acc[1])
            total[2] += acc[2]
            total[3] += acc[3]
    return total


def apply_server_rollups(
    servers_record: Stamped | None,
    total_record: Stamped | None,
    updates: Iterable[tuple[int, str, Acc]],
    through: int,
) -> tuple[Stamped, Stamped]:
    """A metric's minute across servers: each update is a server's *whole* rollup of that
    minute so far (offset of the message that carried it, server, [min, max, sum, count]).

    The per-server record takes an update it has not seen (offset above its own) unless it
    holds a larger count for that server already (an older rollup, come late). The all-servers
    total follows each replacement (old subtracted, new added: min and max only move outwards
    as a server's minute grows); when the two records disagree on their offset (a crash wrote
    one and not the other), the total is rebuilt from the per-server record first.
    Returns both records, stamped `through`.
    """
    servers: Cells = value_of(servers_record, {})
    seen = offset_of(servers_record)
    total: Acc | None = value_of(total_record)
    if total is None or offset_of(total_record) != seen:
        total = merge_all(servers.values())
    for offset, server, acc in updates:
        if offset <= seen:
            continue
        old = servers.get(server)
        if old is not None and acc[3] < old[3]:
            continue
        servers[server] = list(acc)
        if total is None:
            total = list(acc)
            continue
        total[0] = min(total[0], acc[0])
        total[1] = max(total[1], acc[1])
        total[2] += acc[2] - (old[2] if old else 0.0)
        total[3] += acc[3] - (old[3] if old else 0)
    return stamp(servers, through), stamp(total, through)
