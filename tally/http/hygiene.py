"""What every Tally web server does before and around a handler, whoever runs it (a worker's
Faust web server or the stateless `tally ingest` process). aiohttp only, no Faust.

- Connections: a request's headers must arrive within TALLY_HTTP_HEADER_TIMEOUT_SECONDS
  (aiohttp closes a connection that has not sent a whole request within its keep-alive
  timeout), a body within BODY_TIMEOUT_S.
- Bodies are read by `read_body` only, up to a limit: compressed bodies are inflated here, in
  bounded steps that stop at the limit (aiohttp's own inflation is off: it would inflate a body
  whole, even one already refused), and `Expect: 100-continue` with a declared length over the
  limit is answered 413 before the client sends anything.
- Writes from other sites: a POST must say its body is JSON or NDJSON. A browser sends such a
  request to another site only after a CORS preflight, which Tally does not grant; a page on
  another site can therefore not write through a visitor's browser. A request the browser marks
  `Sec-Fetch-Site: cross-site` is refused outright.
- Errors are JSON with a sentence a person can act on, also aiohttp's own 404 and 405; an
  unexpected exception is logged and answered 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from tally.core.errors import BodyTimeout, BodyTooLarge, UnreadableBody, UnsupportedBody

logger = logging.getLogger(__name__)

#: A request body must arrive whole within this many seconds.
BODY_TIMEOUT_S = 30.0
#: Bodies of the schema registry's API (Confluent's own limit is about this).
REGISTRY_MAX_BYTES = 1024 * 1024
#: Bytes read from the network per step.
CHUNK_BYTES = 64 * 1024
#: Content encodings a body may have; anything else is refused (415), not read as plain text.
ENCODINGS = {"identity": None, "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
#: Media types of the bodies Tally takes: JSON and NDJSON (and Confluent's `+json` types).
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-lines"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The largest body any other path takes.
DEFAULT_MAX_BYTES = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class BodyLimits:
    """The largest body each path takes, in bytes, by path prefix."""

    by_prefix: tuple[tuple[str, int], ...]
    default: int = DEFAULT_MAX_BYTES

    def of(self, path: str) -> int:
        return next(
            (limit for prefix, limit in self.by_prefix if path.startswith(prefix)), self.default
        )

    @property
    def largest(self) -> int:
        return max([self.default, *(limit for _, limit in self.by_prefix)])


#: Paths whose errors take the schema registry's shape: {"error_code", "message"}.
REGISTRY_PREFIX = "/registry/"


def problem(status: int, message: str, path: str = "") -> web.Response:
    """A JSON error answer: {"error": message}, or Confluent's shape under the registry."""
    if path.startswith(REGISTRY_PREFIX):
        return web.json_response({"error_code": status, "message": message}, status=status)
    return web.json_response({"error": message}, status=status)


def is_json_type(content_type: str) -> bool:
    return (
        content_type == "application/json"
        or content_type in NDJSON_TYPES
        or (content_type.startswith("application/") and content_type.endswith("+json"))
    )


def refusal(request: web.Request) -> web.Response | None:
    """Why this request is refused before its handler runs, or None."""
    if request.method not in WRITE_METHODS:
        return None
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        return problem(
            403,
            "a page on another site may not write here (Sec-Fetch-Site: cross-site); "
            "send the request from your own code or a command line",
            request.path,
        )
    encoding = content_encoding(request)
    if encoding not in ENCODINGS:
        return problem(
            415,
            f"Content-Encoding {encoding[:40]!r} is not supported; send the body as is, or "
            "compressed with gzip or deflate",
            request.path,
        )
    if request.method == "POST" and not is_json_type(request.content_type):
        shown = request.headers.get(hdrs.CONTENT_TYPE, "(none)")[:80]
        return problem(
            415,
            f"Content-Type {shown} is not taken here: send JSON with "
            "'Content-Type: application/json', or NDJSON with 'Content-Type: "
            "application/x-ndjson' (browsers send those to another site only with its "
            "permission, which Tally does not give)",
            request.path,
        )
    return None


#: Whether a request may reach its handler: a refusal to answer instead, or None (the
#: access gate, tally.http.access).
Admit = Callable[[web.Request], web.Response | None]


def guard(admit: Admit | None = None) -> Middleware:
    """The middleware of a Tally web server: refusals before the handler (this module's, then
    `admit`'s; one middleware, not two: each layer costs every request a wrapped handler);
    JSON instead of aiohttp's plain-text errors and tracebacks."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        return await answered(request, handler, admit)

    return guarded


async def answered(
    request: web.Request, handler: Handler, admit: Admit | None
) -> web.StreamResponse:
    """The handler's answer, if `admit` lets the request in; HTTP errors as JSON, an
    unexpected exception (in `admit` too) as a 500."""
    try:
        refused = admit(request) if admit is not None else None
        if refused is not None:
            return refused
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        answer = problem(
            exc.status, f"{exc.reason}: {request.method} {request.path[:200]}", request.path
        )
        for name in (hdrs.ALLOW, hdrs.RETRY_AFTER):  # what the status means to a client
            if name in exc.headers:
                answer.headers[name] = exc.headers[name]
        return answer
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path[:200])
        return problem(
            500, "internal error while answering this request; see the server log", request.path
        )


def expect_handler(limits: BodyLimits) -> Callable[[web.Request], Awaitable[web.Response | None]]:
    """aiohttp's answer to `Expect: 100-continue`, but 413 when the declared length is over
    the path's limit: the client then never sends the body."""

    async def expect(request: web.Request) -> web.Response | None:
        if request.version < (1, 1):
            return None
        expected = request.headers.get(hdrs.EXPECT, "").lower()
        if expected != "100-continue":
            return problem(
                417, f"Expect: {expected[:40]!r} is not supported (only 100-continue)", request.path
            )
        limit = limits.of(request.path)
        declared = request.content_length
        if declared is not None and declared > limit:
            response = problem(
                413,
                f"the body would be {declared:,} bytes; this endpoint takes {limit:,}",
                request.path,
            )
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
        return None

    return expect


@dataclass(frozen=True)
class Body:
    """A request body, inflated; over the limit only its head is kept (for a dead letter)."""

    data: bytes
    size: int  # bytes declared or read (inflated); over the limit: at least this many
    complete: bool


def content_encoding(request: web.Request) -> str:
    return request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()


class Inflater:
    """Inflates a compressed body in bounded steps: gzip (several members too, as `gzip -c a
    b` makes) or zlib, whichever the client called "deflate" (wbits 47 recognises both)."""

    def __init__(self) -> None:
        self._stream = zlib.decompressobj(wbits=47)
        #: Compressed bytes not yet inflated (the output had no room, or a member ended).
        self._waiting = b""

    def feed(self, data: bytes, room: int) -> bytes:
        """`data` (after what earlier calls left) inflated, at most `room` bytes of it."""
        self._waiting += data
        out = []
        while self._waiting and room > 0:
            piece = self._stream.decompress(self._waiting, room)
            out.append(piece)
            room -= len(piece)
            if self._stream.eof:  # a member ended: the rest is the next member
                self._waiting = self._stream.unused_data
                if self._waiting:
                    self._stream = zlib.decompressobj(wbits=47)
            else:
                self._waiting = self._stream.unconsumed_tail
        return b"".join(out)

    @property
    def finished(self) -> bool:
        """Every byte fed was inflated and the last member ended."""
        return self._stream.eof and not self._waiting


def inflater(request: web.Request) -> Inflater | None:
    """The inflater of the body's Content-Encoding; None for identity."""
    encoding = content_encoding(request)
    if encoding not in ENCODINGS:
        raise UnsupportedBody(f"Content-Encoding {encoding[:40]!r} is not supported")
    return None if ENCODINGS[encoding] is None else Inflater()


async def read_body(request: web.Request, limit: int, head: int) -> Body:
    """The body, inflated, when it is at most `limit` bytes (compressed and inflated); else
    its first `head` bytes (as sent).

    Inflation stops as soon as the output passes the limit, so a small compressed body that
    would inflate to gigabytes costs what `limit` bytes cost. `UnreadableBody` when the body
    does not inflate, `BodyTimeout` when it does not arrive within BODY_TIMEOUT_S.
    """
    declared = request.content_length
    inflate = inflater(request)
    kept: list[bytes] = []
    size = sent = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            if declared is not None and declared > limit:
                while sent < head and (chunk := await request.content.read(CHUNK_BYTES)):
                    kept.append(chunk)
                    sent += len(chunk)
                return Body(b"".join(kept)[:head], declared, complete=False)
            async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                sent += len(chunk)
                if inflate is not None:
                    chunk = inflate.feed(chunk, limit + 1 - size)
                kept.append(chunk)
                size += len(chunk)
                if size > limit or sent > limit:
                    return Body(b"".join(kept)[:head], max(size, sent), complete=False)
            if inflate is not None and not inflate.finished:
                raise UnreadableBody(
                    f"the {content_encoding(request)} body ends before its compressed data"
                )
    except zlib.error as exc:
        raise UnreadableBody(
            f"the body does not decompress as {content_encoding(request)}: {exc}"
        ) from exc
    except RequestPayloadError as exc:
        raise UnreadableBody(
            f"the body cannot be read: {str(exc).splitlines()[-1].strip()}"
        ) from exc
    except TimeoutError:
        raise BodyTimeout(
            f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s ({sent:,} bytes came)"
        ) from None
    return Body(b"".join(kept), size, complete=True)


def too_large(body: Body, limit: int, setting: str = "") -> BodyTooLarge:
    where = f" ({setting})" if setting else ""
    return BodyTooLarge(
        f"the body is {body.size:,} bytes or more; this endpoint takes at most {limit:,} "
        f"bytes{where}: send it in parts"
    )


def application_options(
    limits: BodyLimits, header_timeout_s: float, admit: Admit | None = None
) -> dict[str, Any]:
    """`aiohttp.web.Application` options of a Tally web server (Faust's
    `web_application_options`); its routes take `expect_handler(limits)` on their own.
    `admit` decides, after the hygiene rules, whether a request reaches its handler.

    aiohttp's request handler: no automatic inflation; a connection that has not sent a whole
    request (line and headers) within `header_timeout_s` of opening or of its last answer is
    closed (aiohttp's keep-alive timeout covers both); little time spent draining a body the
    handler did not read.
    """
    return {
        "handler_args": {
            "auto_decompress": False,
            "keepalive_timeout": header_timeout_s,
            "lingering_time": 2.0,
        },
        "middlewares": [guard(admit)],
        "client_max_size": limits.largest,
    }
