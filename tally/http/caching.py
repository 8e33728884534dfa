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
from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import cache, lru_cache
from typing import Generic, TypeVar

T = TypeVar("T")


def strong_etag(body: bytes, generation: str) -> str:
    digest = hashlib.blake2b(body, digest_size=12, person=generation.encode()[:16])
    return '"' + digest.hexdigest() + '"'


#: The ETag of a kept answer (KeptAnswers' bodies): its digest is taken once, not per read
#: (for the 256 read most recently; others are digested at each read, and the bodies held
#: here are at most 256 more than the answer stores keep).
kept_etag = lru_cache(maxsize=256)(strong_etag)


def named_tag(if_none_match: str | None) -> str | None:
    """The one entity tag an `If-None-Match` header names, without a weak prefix (None: no
    header, `*`, or several tags)."""
    tags = [tag.strip() for tag in (if_none_match or "").split(",") if tag.strip()]
    if len(tags) != 1 or tags[0] == "*":
        return None
    return tags[0].removeprefix("W/")


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (and only it)."""
    return bool(if_none_match) and named_tag(if_none_match) == etag


@cache  # (a worker asks for the same few, on every answer)
def cache_control(max_age_s: int, stale_s: int, authenticated: bool) -> str:
    """Caches may keep the answer `max_age_s` seconds (0: revalidate every time), and answer
    with it `stale_s` seconds more while they fetch the next one (RFC 5861: a hot answer's
    expiry sends one request to the worker, not every reader's). An answer to a token is not
    `public`: a shared cache then never hands it to another request (RFC 9111 section 3.5)
    unless configured to keep one copy per token, as docker/nginx.conf is."""
    if max_age_s <= 0:
        return "no-cache"
    policy = f"max-age={max_age_s}"
    if stale_s > 0:
        policy += f", stale-while-revalidate={stale_s}"
    return policy if authenticated else f"public, {policy}"


class KeptAnswers(Generic[T]):
    """Answers of hot queries (serialized, or what they are built from), each kept with the
    version of the state it was built from (anything comparable that changes when that state
    does): a repeat at the same version costs no reads, no merge and no JSON encoding. Up to
    `limit` answers; the least recently used goes first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept: OrderedDict[Hashable, tuple[Hashable, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def invalidate(self) -> None:
        self._kept.clear()

    def get(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> T:
        """The answer for `key` at `version` (built now if not kept)."""
        kept = self._kept.get(key)
        if kept is not None and kept[0] == version:
            self._kept.move_to_end(key)
            return kept[1]
        answer = build()
        self._kept[key] = (version, answer)
        self._kept.move_to_end(key)
        while len(self._kept) > self._limit:
            self._kept.popitem(last=False)
        return answer
