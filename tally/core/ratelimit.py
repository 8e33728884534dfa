"""Requests per caller per second: one token bucket per key, so one noisy caller is slowed
down without touching the others. No clock of its own (callers pass `now`), no Faust."""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    """Each key may spend `burst` requests at once and `rate` per second after that. Buckets
    of keys not seen for a while are forgotten (least recently used first, beyond `max_keys`):
    a forgotten key starts full again, which only ever errs towards letting a request in."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        #: key → (requests left, when it was last filled).
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Spend one request of `key`'s bucket: 0.0 when it had one, else the seconds until it
        will have one (nothing spent)."""
        left, filled = self._buckets.pop(key, (self.burst, now))
        left = min(self.burst, left + max(0.0, now - filled) * self.rate)
        if left >= 1.0:
            self._buckets[key] = (left - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (left, now)
            wait = (1.0 - left) / self.rate
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
