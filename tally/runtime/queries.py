"""What the views share: parameters parsed into clear 400s, readiness (503), routed views."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ClassVar, TypeVar, cast

import aiohttp
import duckdb
from aiohttp import hdrs, web
from faust.exceptions import SameNode
from faust.types import CollectionT
from faust.web import Request, Response, View
from faust.web.exceptions import WebError

from tally.app import app, gate, settings
from tally.core.clock import epoch_ms, iso
from tally.core.errors import (
    BodyTimeout,
    StateConflict,
    UnreadableBody,
    UnsupportedBody,
    ValidationError,
)
from tally.core.generations import Serving
from tally.core.limits import id_problem
from tally.core.windowing import PaneSpec
from tally.http.access import Refusal, tenant_asked
from tally.http.caching import cache_control, kept_etag, matches, named_tag, strong_etag
from tally.http.hygiene import DEFAULT_MAX_BYTES, read_body, too_large
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.faust_compat import owns_key
from tally.runtime.serving import serving
from tally.telemetry import query_answers

logger = logging.getLogger(__name__)
T = TypeVar("T")


class BadRequest(WebError):
    """A query parameter is unusable; the detail says which and what is allowed."""

    code = 400


class OtherTenant(WebError):
    """A tenant's token asked for another tenant's data."""

    code = 403


class NotReady(WebError):
    """The worker is starting or rebalancing: its tables cannot answer yet."""

    code = 503
    detail = "this worker is starting or rebalancing (tables not recovered yet); retry shortly"


def require_ready() -> None:
    if not app.ready:
        raise NotReady()


#: The latest time a query may name: far from datetime's limit, so windows around it print.
LATEST_MS = int(datetime(9000, 1, 1, tzinfo=UTC).timestamp() * 1000)


class OwnerUnavailable(WebError):
    """The request was forwarded to the key's owner, which did not answer."""

    code = 503


#: The response header naming the generation whose tables answered.
GENERATION_HEADER = "Tally-Generation"
#: The request header of a query forwarded to a newer generation (which never forwards again).
FORWARDED_HEADER = "Tally-Forwarded-By-Generation"

#: Headers of a forwarded answer that the client needs too: what a refusal asks of it.
RELAYED = (GENERATION_HEADER, hdrs.WWW_AUTHENTICATE, hdrs.RETRY_AFTER)

#: A request to another worker (a query forwarded to its owner or a newer generation, a
#: reader's relay, a part of an answer) that takes longer than this is answered 503.
QUERY_TIMEOUT_S = 60.0

NOT_MODIFIED = 304


def mark_fresh(headers: MutableMapping[str, str]) -> None:
    """How long caches may keep an answer; with access control on, an answer is its token's
    (`Vary: Authorization`)."""
    headers["Cache-Control"] = cache_control(
        settings.cache_max_age_seconds, settings.cache_stale_seconds, gate.enabled
    )
    if gate.enabled:
        headers["Vary"] = "Authorization"


class OwnedView(View):
    """A GET of one pipeline's tables, answered by the worker owning the key: 503 until this
    worker is ready; forwarded whole to a newer generation once one serves the pipeline (see
    tally.core.generations); else `owned`, which subclasses decorate with `routed_to_owner` to
    forward or answer. An owner that does not answer (it died; the group has not moved its
    partitions yet) is a 503 that says so, not a 500. Every answer names its generation; a
    200 carries an ETag and a `Cache-Control` max-age and stale-while-revalidate
    (TALLY_CACHE_MAX_AGE_SECONDS, TALLY_CACHE_STALE_SECONDS), and a repeat with a matching
    `If-None-Match` is a bodiless 304 (tally.http.caching)."""

    #: The pipeline whose tables answer (settings.PIPELINES).
    pipeline: ClassVar[str]

    async def get(self, request: Request, **match: str) -> Response:
        require_ready()
        newer = serving.forward_to(self.pipeline)
        if newer is not None and FORWARDED_HEADER in request.headers:
            raise OwnerUnavailable(
                f"generation {newer.generation} serves the {self.pipeline} pipeline at "
                f"{', '.join(newer.urls)}, but the request came from there and this worker is "
                f"generation {settings.generation}: a worker of an older generation took over "
                "that address; start a generation-"
                f"{newer.generation} worker there"
            )
        if newer is not None:
            response = await self.forward(request, newer)
        else:
            response = await self.owned(request, **match)
        response.headers.setdefault(GENERATION_HEADER, str(settings.generation))
        answer = self.cacheable(request, response)
        query_answers[(self.pipeline, answer.status)] += 1
        return answer

    def cacheable(self, request: Request, response: Response) -> Response:
        """A 200 with its validator and freshness; a 304 when the client has it already. (A
        HEAD answer relayed from the key's owner has no body to take a digest of: no HEAD
        answer has a validator, a kept answer's is taken off.)"""
        headers = response.headers
        if response.status == NOT_MODIFIED:  # the key's owner found the client's copy current
            tag = named_tag(request.headers.get("If-None-Match"))  # the only one it matches
            if tag is not None:
                headers["ETag"] = tag
            mark_fresh(headers)
            return response
        body = cast(web.Response, response).body
        if request.method == "HEAD":
            headers.pop("ETag", None)  # (a kept answer's)
            return response
        if response.status != 200 or not isinstance(body, bytes):
            return response
        etag = headers.get("ETag") or strong_etag(body, headers[GENERATION_HEADER])
        headers["ETag"] = etag
        mark_fresh(headers)
        if not matches(request.headers.get("If-None-Match"), etag):
            return response
        kept = {name: headers[name] for name in ("ETag", GENERATION_HEADER)}
        mark_fresh(kept)
        return self.bytes(b"", status=NOT_MODIFIED, headers=kept)

    def serialized(self, body: bytes) -> Response:
        """A 200 of JSON already encoded (a kept answer), with its kept ETag."""
        answer = web.Response(
            body=body,
            content_type="application/json",
            charset="utf-8",
            headers={"ETag": kept_etag(body, str(settings.generation))},
        )
        return cast(Response, answer)  # what Faust's aiohttp driver answers with

    async def forward(self, request: Request, newer: Serving) -> Response:
        """The same request to a worker of the serving generation (the first that answers)."""
        return await self.relay(
            request,
            newer.urls,
            {FORWARDED_HEADER: str(settings.generation)},
            f"generation {newer.generation} serves the {self.pipeline} pipeline, and none of "
            "its workers",
            newer.generation,
        )

    async def relay(
        self,
        request: Request,
        urls: Sequence[str],
        headers: Mapping[str, str],
        none_answered: str,
        generation: int | None = None,
    ) -> Response:
        """The same request to the first of `urls` that answers, with `headers`, its answer
        relayed; a 503 starting with `none_answered` (who did not answer) when none does.
        An answer without a generation header is `generation`'s (default: this worker's)."""
        failures = []
        sent = dict(headers)
        if hdrs.AUTHORIZATION in request.headers:  # the caller's own, verified there
            sent[hdrs.AUTHORIZATION] = request.headers[hdrs.AUTHORIZATION]
        path = cast(web.Request, request).path_qs
        async with another_worker(request.method):
            for url in urls:
                try:
                    async with app.http_client.get(url + path, headers=sent) as answer:
                        body = await answer.read()
                except aiohttp.ClientError as exc:
                    failures.append(f"{url}: {type(exc).__name__}: {exc}")
                    continue
                relayed = {name: answer.headers[name] for name in RELAYED if name in answer.headers}
                relayed.setdefault(GENERATION_HEADER, str(generation or settings.generation))
                return self.bytes(
                    body, content_type=answer.content_type, status=answer.status, headers=relayed
                )
        raise OwnerUnavailable(
            f"{none_answered} answered ({'; '.join(failures)}); start one, or retry shortly"
        )

    #: The answer from this worker's tables, decorated with `routed_to_owner` by subclasses
    #: (their own parameters: the match of the route).
    owned: Callable[..., Awaitable[Response]]


OwnedQuery = Callable[..., Awaitable[Response]]


class ArchiveUnavailable(WebError):
    """The archive part of an answer could not be read (storage down, a damaged file)."""

    code = 503


async def read_archive(read: Callable[[], T], what: str) -> T:
    """`read` (blocking: DuckDB over the archive's files) in a thread; a storage or DuckDB
    failure is a 503 that says what could not be read (`what`)."""
    try:
        return await asyncio.to_thread(read)
    except (duckdb.Error, OSError) as exc:
        logger.exception("archive query failed: %s", what)
        raise ArchiveUnavailable(
            f"the archive ({settings.archive_location}) could not be read for {what}: "
            f"{type(exc).__name__}; retry, or ask for the hot tier's range only"
        ) from exc


GONE = 410
#: The window fields of an answer while there is no window yet.
NO_WINDOW = {"window_start": None, "window_end": None}


def check_retained(spec: PaneSpec, last_pane: int, watermark_ms: int) -> None:
    """410 for a window whose oldest pane is no longer kept (`?at=` too far back)."""
    oldest = spec.retained_from(watermark_ms)
    if spec.first_pane(last_pane) < oldest:
        raise BadRequest(
            f"the window ending at {iso(spec.start_ms(last_pane + 1))} is no longer "
            f"retained; the oldest pane kept starts at {iso(spec.start_ms(oldest))}",
            code=GONE,
        )


@asynccontextmanager
async def another_worker(method: str) -> AsyncIterator[None]:
    """Around a request (`method`) to another worker: one that does not answer within
    QUERY_TIMEOUT_S, or cannot be reached, is a 503 that says so, not a 500 (a write's
    says it may have been applied)."""
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        failed = f"did not complete ({type(exc).__name__}: {exc})"
        if method in ("GET", "HEAD"):
            message = (
                f"the query {failed}; if the worker that owns this key stopped, the group "
                "gives its partitions to another worker within seconds: retry shortly"
            )
        else:
            message = (
                f"the request {failed}; the worker owning this key may have applied it: "
                "read the current state before retrying"
            )
        raise OwnerUnavailable(message) from None


def routed_to_owner(
    table: CollectionT, *, exact_key: str | None = None, match_info: str | None = None
) -> Callable[[OwnedQuery], OwnedQuery]:
    """What `app.table_route` does, cheaper for a key this worker owns (see routed_by_key):
    the decorated query runs on the worker owning the key, `exact_key` or the route's
    `match_info` parameter."""
    if (exact_key is None) == (match_info is None):
        raise TypeError("routed_to_owner takes exact_key or match_info")

    def decorate(query: OwnedQuery) -> OwnedQuery:
        @wraps(query)
        async def routed(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = exact_key or request.match_info[cast(str, match_info)]
            return await routed_by_key(
                table, key, view, request, lambda: query(view, request, *args, **kwargs)
            )

        return routed

    return decorate


async def routed_by_key(
    table: CollectionT,
    key: str,
    view: View,
    request: Request,
    answer: Callable[[], Awaitable[Response]],
) -> Response:
    """`routed_to_owner` for a key the route does not hold (a tenant, named by the token or
    `?tenant=`): `answer` runs here if this worker owns `key` in `table` (checked without
    Faust's router, which answers a local key with an exception: ~7 % of a worker answering
    the top-10), else the request (its body too) goes to the owner."""
    if owns_key(app.router, table.name, key):
        return await answer()
    try:
        async with another_worker(request.method):
            return await app.router.route_req(table.name, key, view.web, request)
    except SameNode:  # this worker, named by another address
        return await answer()


async def json_object(request: Request, limit: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """A request's body as a JSON object; an empty body is an empty object. A 400 (413, 408)
    that says what was wrong otherwise."""
    try:
        body = await read_body(request, limit, 0)  # type: ignore[arg-type]
    except BodyTimeout as exc:
        raise BadRequest(str(exc), code=408) from None
    except (UnreadableBody, UnsupportedBody) as exc:
        raise BadRequest(str(exc)) from None
    if not body.complete:
        raise BadRequest(str(too_large(body, limit)), code=413)
    if not body.data.strip():
        return {}
    try:
        document = json.loads(body.data)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON: {str(exc)[:300]}") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


def time_param(request: Request, name: str, default_ms: int) -> int:
    """An ISO-8601 time (or epoch milliseconds) as epoch ms; naive times are UTC."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default_ms
    try:
        value = epoch_ms(raw)
    except ValueError as exc:
        raise BadRequest(f"{name}={raw!r}: {exc}") from None
    if not 0 <= value <= LATEST_MS:
        raise BadRequest(f"{name}={raw!r} is out of range (1970 to 9000)")
    return value


class NotFound(WebError):
    """The thing a request names does not exist (for the caller's tenant)."""

    code = 404


class Conflict(WebError):
    """The change asked for does not apply to the thing in its state."""

    code = 409


def changed_cell(
    table: CollectionT,
    key: bytes,
    partition: int,
    change: Callable[[Any], Any],
    missing: str,
) -> Any:
    """A cell a person changes through a view (an alert acknowledged, an order reviewed):
    written, and returned. 404 (`missing` says what) for a cell that does not exist, 409 for
    a change its state refuses (`StateConflict`), 400 for a change that is unusable."""
    current = read_cell(table, key, partition)
    if current is None:
        raise NotFound(missing)
    try:
        after = change(current)
    except StateConflict as exc:
        raise Conflict(str(exc)) from None
    except ValidationError as exc:
        raise BadRequest(str(exc)) from None
    write_cell(table, key, after, partition)
    return after


def choice_param(request: Request, name: str, choices: Sequence[str]) -> str:
    """One of `choices` (the first when the request names none); a 400 listing them."""
    value = request.query.get(name) or choices[0]
    if value not in choices:
        raise BadRequest(f"{name}={value[:40]!r} is not one of {', '.join(choices)}")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is out of range; allowed: {low} to {high}")
    return value


def id_param(name: str, value: str) -> str:
    """A path's id, if it can be one (tally.core.limits); else a 400 that says why."""
    problem = id_problem(value)
    if problem is not None:
        raise BadRequest(f"{name} {problem}")
    return value


def tenant_read(request: Request, across: bool) -> str | None:
    """Whose data a request reads (tally.http.access.tenant_asked), refusals as WebErrors."""
    try:
        return tenant_asked(request, settings.default_tenant, across)
    except Refusal as refused:
        raise (OtherTenant if refused.status == 403 else BadRequest)(refused.message) from None


def one_tenant_read(request: Request) -> str:
    """Whose data a one-key view reads: always one tenant."""
    tenant = tenant_read(request, across=False)
    assert tenant is not None  # across=False never answers "every tenant"
    return tenant
