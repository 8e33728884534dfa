"""Time to live, by event time: when a key's state expires, which expired keys a bounded sweep
removes, and whether a message came too late to be worth processing. No Faust.

A key lives `ttl_ms` past the newest event that touched it (a session: 30 minutes without a
click). Expiry follows the partition's event clock, not the wall clock: a backlog or a replay
expires state exactly as live traffic did, and a standby or a restored worker, which see the
same changelog, expire the same keys at the same event.

Due keys are found through an index ordered by expiry time (`expiry_key`; a table of its own,
beside the state's, on the same partitions): a sweep reads only what is due, and stops after
`budget` entries so it never holds a worker's loop for long. Each live key has exactly one
index entry: a touch that moves its expiry replaces the entry (`Retouch`). An entry that does
not match its key's expiry (left by a crash between the two writes) is dropped without
touching the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Digits of an expiry time in an index key: milliseconds up to the year 2286.
TIME_DIGITS = 13


def expiry_key(expires_at_ms: int, key: bytes) -> bytes:
    """The index entry of `key` expiring at `expires_at_ms`: ordered by time, then key."""
    if not 0 <= expires_at_ms < 10**TIME_DIGITS:
        raise ValueError(f"expiry time {expires_at_ms} is out of range")
    return str(expires_at_ms).zfill(TIME_DIGITS).encode() + b"|" + key


def parse_expiry_key(entry: bytes) -> tuple[int, bytes]:
    """(expiry time, key) of an index entry."""
    if entry[TIME_DIGITS : TIME_DIGITS + 1] != b"|" or not entry[:TIME_DIGITS].isdigit():
        raise ValueError(f"{entry!r} is not an expiry index entry")
    return int(entry[:TIME_DIGITS]), entry[TIME_DIGITS + 1 :]


def due_range(clock_ms: int) -> tuple[bytes, bytes]:
    """[start, stop) of the index entries due at `clock_ms` (expiring at or before it)."""
    return b"", expiry_key(clock_ms + 1, b"")


@dataclass(frozen=True)
class TimeToLive:
    """How long a key lives after its newest event, and a message after its event time."""

    ttl_ms: int

    def __post_init__(self) -> None:
        if self.ttl_ms <= 0:
            raise ValueError(f"a time to live must be positive, not {self.ttl_ms} ms")

    def expires_at(self, last_ms: int) -> int:
        return last_ms + self.ttl_ms

    def expired(self, last_ms: int, clock_ms: int) -> bool:
        """Whether a key last touched at `last_ms` is gone by `clock_ms` (inclusive: a
        30-minute session touched at 10:00 is over at 10:30)."""
        return clock_ms >= self.expires_at(last_ms)

    def stale(self, event_ms: int, arrived_ms: int) -> bool:
        """Whether a message arrived more than the TTL after its event time: acting on it
        has no value any more (a coupon for where a phone was an hour ago)."""
        return arrived_ms - event_ms > self.ttl_ms

    def stale_reason(self, event_ms: int, arrived_ms: int) -> str:
        return (
            f"arrived {arrived_ms - event_ms} ms after its event time, past its time to "
            f"live of {self.ttl_ms} ms"
        )


@dataclass(frozen=True)
class Retouch:
    """The index change of a touch: the key's newest event time, the entry it replaces
    (None: the key was new, or its expiry did not move) and the entry to write (None: same)."""

    last_ms: int
    drop: bytes | None
    write: bytes | None


def retouch(ttl: TimeToLive, key: bytes, previous_ms: int | None, event_ms: int) -> Retouch:
    """A touch of `key` by an event at `event_ms`, its newest event so far at `previous_ms`
    (None: a new key). An event older than the newest does not move the expiry back."""
    last_ms = event_ms if previous_ms is None else max(previous_ms, event_ms)
    if previous_ms is not None and last_ms == previous_ms:
        return Retouch(last_ms, None, None)
    drop = None if previous_ms is None else expiry_key(ttl.expires_at(previous_ms), key)
    return Retouch(last_ms, drop, expiry_key(ttl.expires_at(last_ms), key))


@dataclass
class Sweep:
    """What one sweep removes: the expired keys' state, and the index entries it read."""

    expired: list[bytes] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    #: It stopped at its budget with due entries left.
    more: bool = False


def sweep(
    due: Iterable[bytes],
    expiry_of: Callable[[bytes], int | None],
    clock_ms: int,
    budget: int,
) -> Sweep:
    """Up to `budget` of the `due` index entries (in order, from `due_range`): each dropped,
    and its key expired when the entry is the key's own (`expiry_of`: the expiry time its
    state says now; None: no state)."""
    found = Sweep()
    for entry in due:
        expires_at, key = parse_expiry_key(entry)
        if expires_at > clock_ms:
            break
        if len(found.dropped) == budget:
            found.more = True
            break
        found.dropped.append(entry)
        if expiry_of(key) == expires_at:
            found.expired.append(key)
    return found
