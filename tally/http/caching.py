"""HTTP caching of query answers: strong validators and freshness, so that a browser, a CDN or
the shipped nginx micro-cache (docker/nginx.conf) can answer repeats without the worker.

An answer's ETag is a digest of its bytes and of the generation that answered: two answers
share one exactly when they are the same bytes from the same generation, whichever worker
produced them (a fail-over that answers the same keeps clients' caches valid; a cache that
revalidates never keeps naming a generation that no longer serves). `If-None-Match` is
honoured when it names one tag, compared weakly as RFC 9110 says for that header: a worker
that forwards a query to the key's owner gets a 304 without its headers back, and with one tag
it knows the ETag the 304 must carry. No Faust.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable


def strong_etag(body: bytes, generation: str) -> str:
    digest = hashlib.blake2b(body, digest_size=12, person=generation.encode()[:16])
    return '"' + digest.hexdigest() + '"'


def named_tag(if_none_match: str | None) -> str | None:
    """The one entity tag an `If-None-Match` header names, without a weak prefix (None: no
    header, `*`, or several tags)."""
    tags = [tag.strip() for tag in (if_none_match or "").split(",") if tag.strip()]
    if len(tags) != 1 or tags[0] == "*":
        return None
    return tags[0].removeprefix("W/")


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (and only it)."""
    return named_tag(if_none_match) == etag


def cache_control(max_age_s: int) -> str:
    """Shared caches may keep the answer `max_age_s` seconds (0: revalidate every time)."""
    return f"public, max-age={max_age_s}" if max_age_s > 0 else "no-cache"


class LastAnswer:
    """The last answer of a hot query, serialized once: rebuilt only when its parameters
    (`key`) differ or the state it reflects changed (`invalidate`), so repeats cost no JSON
    encoding."""

    def __init__(self) -> None:
        self._key: Hashable = None
        self._body: bytes | None = None

    def invalidate(self) -> None:
        self._body = None

    def get(self, key: Hashable, build: Callable[[], bytes]) -> bytes:
        """The body of the answer for `key`."""
        if self._body is None or key != self._key:
            self._key, self._body = key, build()
        return self._body
