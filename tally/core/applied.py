"""Offsets kept with state, so a message delivered twice is applied once.

Faust is at-least-once here: after a crash or a rebalance, messages processed since the last
commit come again. Every table record Tally increments is stored as `[value, offset]`, the
offset of the last source message it includes; a message at or below a record's offset is
already in it and is skipped for that record. One record is one changelog entry, so the value
and its offset survive a crash together (a changelog partition is a log: whatever part of a
batch reached it, each record in it is whole). No Faust in here.

A message that came on the wrong partition is forwarded to its owner (runtime.routing), and
may be forwarded twice (its first forwarder died before committing). Such a message is known by
its *origin*, the source partition and offset it was first written to; a record keeps, beside
its own partition's offset, the highest origin offset it includes per source partition
forwarded from: `[value, offset, {"<partition>": offset}]`. Forwards from one source partition
arrive in the order of that partition (one forwarder at a time, in offset order, the producer
flushed before each commit), so the same rule holds for each.

A batch is checked against the state as it was before the batch, so the check only holds if a
batch has each message once, in offset order: `one_per_origin` makes it so.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tally.core.rollups import Acc, Cells, Rollup, merge_all

#: A stored record: [value, offset of the last source message it includes] and, once it
#: includes forwarded messages, {source partition (str): highest origin offset}.
Stamped = list[Any]
#: Where a message comes from: None for the record's own partition, else the source
#: partition a forwarded message was first written to.
Source = int | None
#: How far a batch reaches in each source: the highest offset per `Source`.
Through = Mapping[Source, int]


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


def one_per_origin(events: Sequence[D], origin: Callable[[D], Hashable]) -> list[D]:
    """`one_per_offset`, then the first of the messages with one origin: a message forwarded
    twice (by a forwarder that died and by the one after it) is applied once."""
    seen: set[Hashable] = set()
    kept = []
    for event in one_per_offset(events):
        key = origin(event)
        if key not in seen:
            seen.add(key)
            kept.append(event)
    return kept


def stamp(value: Any, through: int | Through, before: Stamped | None = None) -> Stamped:
    """`value` stamped with how far it reaches: `through` (a batch's offset, or its offset per
    source) merged with what the record held `before`, so a batch from one source keeps the
    marks of the others."""
    reach = {None: through} if isinstance(through, int) else through
    offset = max(offset_of(before), reach.get(None, -1))
    forwarded = dict(before[2]) if before is not None and len(before) > 2 else {}
    for source, last in reach.items():
        if source is not None:
            forwarded[str(source)] = max(forwarded.get(str(source), -1), last)
    return [value, offset, forwarded] if forwarded else [value, offset]


def value_of(stored: Stamped | None, default: Any = None) -> Any:
    return default if stored is None else stored[0]


def offset_of(stored: Stamped | None, source: Source = None) -> int:
    """The offset a record includes messages through, of its own partition or of a source
    partition forwarded from (-1: none yet)."""
    if stored is None:
        return -1
    if source is None:
        return int(stored[1])
    return int(stored[2].get(str(source), -1)) if len(stored) > 2 else -1


def holds(stored: Stamped | None, offset: int, source: Source = None) -> bool:
    """Whether the record already includes the message at `offset` of `source`."""
    return offset <= offset_of(stored, source)


def reach(origins: Iterable[tuple[Source, int]]) -> dict[Source, int]:
    """A batch's `Through`: the highest offset of each source among its messages' origins."""
    highest: dict[Source, int] = {}
    for source, offset in origins:
        highest[source] = max(highest.get(source, -1), offset)
    return highest


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


@dataclass(frozen=True)
class Hole:
    """Offset `start` of a partition was not delivered where a batch passes it."""

    start: int
    #: Read the partition again from `start` now (False: a reread is under way, or given up).
    reread: bool
    #: Reread `Unread.tries` times and still missing: nothing delivers it (a gap in the log).
    given_up: bool
    #: Given up: the offsets from `start` to this one (excluded) are passed as absent, up to
    #: the first offset after the hole that any batch since it opened delivered.
    until: int | None = None


@dataclass
class _Reread:
    missing: int  # the first offset not delivered
    tries: int  # rereads that came back without it
    seen: int  # the highest offset delivered since the hole opened
    after: int  # the lowest offset after the hole delivered since it opened
    at: float  # when the last reread began


class Unread:
    """Offsets of a partition that a batch skips over, which its stamps would then claim.

    The stamps above say "every message at or below this offset is in the record", which holds
    only if a partition's messages are applied without a hole. Faust can leave one: its stream
    drops a message fetched in the group generation before a rebalance and delivers the next
    ones. A record's stamp then passes the dropped message, and when it comes again (from the
    committed offset, which cannot pass it) it is skipped as already applied: lost. The chaos
    soak (bench/soak.py) found it. So only a batch's events up to a hole are applied, and the
    partition is read again from the hole.

    A reread has come back when a batch brings the first offset after the hole again (what
    was fetched before it, the rest of an earlier reread included, only brings later ones, in
    order, and may take long to drain on a busy worker).
    A hole that `tries` rereads came back without is taken as a gap in the log (a transaction
    marker, say) and passed, up to the first offset after it delivered since it opened; so is
    one whose rereads did not come back within `patience_s` each, `tries` times; never one
    that holds an offset the fetches show is a message in the log (`in_log`): a reread slow
    to come back on a busy worker would otherwise lose it. A passed hole stays passed for the
    batches after (until the partition leaves).
    """

    def __init__(self, tries: int = 3, patience_s: float = 10.0) -> None:
        self.tries, self.patience_s = tries, patience_s
        self._rereads: dict[Hashable, _Reread] = {}
        self._passed: dict[Hashable, range] = {}

    def forget(self, key: Hashable) -> None:
        """The partition left this worker: its rereads start over if it comes back."""
        self._rereads.pop(key, None)
        self._passed.pop(key, None)

    def hole(self, key: Hashable) -> int | None:
        """The partition's open hole: the first offset not delivered (None: none)."""
        reread = self._rereads.get(key)
        return None if reread is None else reread.missing

    def overdue(self, key: Hashable, now: float) -> int | None:
        """The partition's open hole if its last reread began `patience_s` ago or more and
        none came back since (with no batch coming, the stall watch asks): that reread is taken
        as dropped, and the caller reads again from the hole, its patience counted from now."""
        reread = self._rereads.get(key)
        if reread is None or now - reread.at < self.patience_s:
            return None
        reread.at = now
        return reread.missing

    def describe(self, key: Hashable) -> str:
        """The partition's hole and rereads, for a stalled partition's warning."""
        reread, passed = self._rereads.get(key), self._passed.get(key)
        said = [f"passed {passed.start}-{passed.stop - 1} as absent"] if passed else []
        if reread is not None:
            said.append(
                f"offset {reread.missing} missing, {reread.tries} rereads came back without "
                f"it, the highest delivered since is {reread.seen}"
            )
        return "; ".join(said) or "no hole"

    def applicable(
        self,
        key: Hashable,
        expected: int | None,
        offsets: Sequence[int],
        now: float,
        known_gap: Callable[[int], bool] = lambda offset: False,
        in_log: Callable[[int, int], bool] = lambda start, stop: False,
    ) -> tuple[int, Hole | None]:
        """How many of a batch's `offsets` (ascending, each once) may be applied, and the
        hole after them. `expected`: the next offset to apply (the one after the last
        applied, else the committed one, else the first one fetched; None: unknown);
        `known_gap`: offsets the log itself lacks (transaction markers, compaction), which
        are not holes; `in_log`: whether the log is known to have a message from one offset
        up to another (excluded): never passed."""
        following = offsets[0] if expected is None else expected
        passed = self._passed.get(key, range(0))
        applicable = 0
        for offset in offsets:
            while offset > following and (following in passed or known_gap(following)):
                following += 1
            if offset > following:
                break
            applicable += 1
            following = max(following, offset + 1)
        if applicable == len(offsets):
            self._rereads.pop(key, None)
            return applicable, None
        reread = self._rereads.get(key)
        after = offsets[applicable]
        if reread is None or reread.missing != following:
            self._rereads[key] = _Reread(following, 0, offsets[-1], after, now)
            return applicable, Hole(following, reread=True, given_up=False)
        # A reread from the hole brings the first offset after it again; what was fetched
        # before the reread (the rest of an earlier reread too) only brings later ones.
        came_back = after <= reread.after
        reread.seen = max(reread.seen, offsets[-1])
        reread.after = min(reread.after, after)
        if not came_back and now - reread.at < self.patience_s:  # earlier fetches drain
            return applicable, Hole(following, reread=False, given_up=False)
        reread.tries += 1
        gap = range(following, reread.after)  # not past what came
        if reread.tries >= self.tries and not in_log(gap.start, gap.stop):  # passed: the batch
            del self._rereads[key]  # applies up to its next hole
            self._passed[key] = gap
            more, _ = self.applicable(key, expected, offsets, now, known_gap, in_log)
            self._rereads.pop(key, None)  # a hole after it is new to the next batch
            return more, Hole(following, reread=False, given_up=True, until=gap.stop)
        reread.at = now
        return applicable, Hole(following, reread=True, given_up=False)
