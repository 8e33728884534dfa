"""HTTP caching of query answers: strong validators and freshness, so that a browser, a CDN or
the shipped nginx micro-cache (docker/nginx.conf) can answer repeats without the worker.

An answer's ETag is a digest of its bytes: two answers share one exactly when they are the
same bytes, whichever worker or generation produced them (a fail-over that answers the same
keeps clients' caches valid). `If-None-Match` is compared weakly, as RFC 9110 says for that
header. aiohttp only, no Faust.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (or is `*`)."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or etag in (tag.removeprefix("W/") for tag in tags)


def cache_control(max_age_s: int) -> str:
    """Shared caches may keep the answer `max_age_s` seconds (0: revalidate every time)."""
    return f"public, max-age={max_age_s}" if max_age_s > 0 else "no-cache"


class LastAnswer:
    """The last answer of a hot query, serialized once: rebuilt only when its parameters
    (`key`) differ or the state it reflects changed (`invalidate`), so repeats cost neither
    the JSON encoding nor the digest."""

    def __init__(self) -> None:
        self._key: Hashable = None
        self._answer: tuple[bytes, str] | None = None

    def invalidate(self) -> None:
        self._answer = None

    def get(self, key: Hashable, build: Callable[[], bytes]) -> tuple[bytes, str]:
        """(body, ETag) of the answer for `key`."""
        if self._answer is None or key != self._key:
            body = build()
            self._key, self._answer = key, (body, strong_etag(body))
        return self._answer
