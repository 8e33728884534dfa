"""Offsets kept with state, so a message delivered twice is applied once.

Faust is at-least-once here: after a crash or a rebalance, messages processed since the last
commit come again. Every table record Tally increments is stored as `[value, offset]`, the
offset of the last source message it includes; a message at or below a record's offset is
already in it and is skipped for that record. One record is one changelog entry, so the value
and its offset survive a crash together (a changelog partition is a log: whatever part of a
batch reached it, each record in it is whole). No Faust in here.

A batch is checked against the state as it was before the batch, so the check only holds if a
batch has each message once, in offset order: `one_per_offset` makes it so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from tally.core.rollups import Acc, Cells, Rollup, merge_all

#: A stored record: [value, offset of the last source message it includes].
Stamped = list[Any]


class Offset(Protocol):
    @property
    def offset(self) -> int: ...


class Delivered(Protocol):
    """A delivered message, as Faust's events are: `.message.offset`."""

    @property
    def message(self) -> Offset: ...


D = TypeVar("D", bound=Delivered)


def one_per_offset(events: Sequence[D]) -> list[D]:
    """The events of one partition, one per offset, in offset order.

    Around a rebalance Faust can hand a message over twice, even twice in one batch (seen on
    the local broker in the failover test). Offsets kept with the state skip a message that an
    earlier batch wrote, but not its twin in the same batch. In offset order, the batch's last
    event carries its highest offset, which the records written for the batch are stamped with.
    """
    by_offset = {event.message.offset: event for event in events}
    return [by_offset[offset] for offset in sorted(by_offset)]


def stamp(value: Any, offset: int) -> Stamped:
    return [value, offset]


def value_of(stored: Stamped | None, default: Any = None) -> Any:
    return default if stored is None else stored[0]


def offset_of(stored: Stamped | None) -> int:
    """The offset a record includes messages through (-1: none yet)."""
    return -1 if stored is None else int(stored[1])


def holds(stored: Stamped | None, offset: int) -> bool:
    """Whether the record already includes the source message at `offset`."""
    return offset <= offset_of(stored)


def apply_server_rollups(
    servers_record: Stamped | None, updates: Iterable[tuple[int, str, Acc]], through: int
) -> tuple[Stamped, Stamped]:
    """A metric's minute across servers: each update is a server's *whole* rollup of that
    minute so far (offset of the message that carried it, server, [min, max, sum, count]).

    The per-server record takes an update it does not hold yet unless it has a larger count
    for that server already (an older rollup, come late); the all-servers total is then merged
    from the per-server record, so it is exact (no running sum to drift) and a crash that
    wrote one record and not the other is mended by the next update. Returns (per-server
    record, total record), both stamped `through`.
    """
    servers: Cells = value_of(servers_record, {})
    for offset, server, acc in updates:
        if holds(servers_record, offset):
            continue
        old = servers.get(server)
        if old is None or acc[3] >= old[3]:
            servers[server] = list(acc)
    total = merge_all(Rollup.from_list(acc) for acc in servers.values())
    return stamp(servers, through), stamp(None if total is None else total.to_list(), through)
