"""HTTP hygiene (tally.http.hygiene) on a real aiohttp server over TCP: bounded inflation,
Expect: 100-continue, header and body timeouts, writes from other sites, JSON errors."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from tally.core.errors import UnreadableBody
from tally.http.hygiene import BodyLimits, application_options, expect_handler, read_body
from tests.harness import raw_exchange, serve

LIMIT = 1024 * 1024
LIMITS = BodyLimits((("/api/ingest/", LIMIT),))


@asynccontextmanager
async def serving(header_timeout_s: float = 15.0) -> AsyncIterator[tuple[str, list[Any]]]:
    """A server with one body-reading route, one GET, one failing route; yields its URL and
    what the body route saw."""
    seen: list[Any] = []

    async def take(request: web.Request) -> web.Response:
        try:
            body = await read_body(request, LIMIT, 100)
        except UnreadableBody as exc:
            return web.json_response({"unreadable": str(exc)}, status=400)
        seen.append(body)
        return web.json_response({"size": body.size, "complete": body.complete})

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    application = web.Application(**application_options(LIMITS, header_timeout_s))
    application.router.add_post("/api/ingest/x", take, expect_handler=expect_handler(LIMITS))
    application.router.add_get("/hello", hello)
    application.router.add_get("/broken", broken)
    runner, url = await serve(application)
    try:
        yield url, seen
    finally:
        await runner.cleanup()


def run(test: Callable[..., Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with serving(**options) as (url, seen):
            await test(url, seen)

    asyncio.run(main())


async def post(url: str, body: bytes, **headers: str) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **headers}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(url + "/api/ingest/x", data=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


def test_a_gzip_bomb_is_inflated_only_up_to_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (256 * 1024 * 1024), 9)  # 256 MiB in ~250 KB

    async def check(url: str, seen: list[Any]) -> None:
        started = time.monotonic()
        status, answer = await post(url, bomb, **{"Content-Encoding": "gzip"})
        assert time.monotonic() - started < 2.0
        assert status == 200 and answer == {"size": LIMIT + 1, "complete": False}, answer
        assert len(seen[0].data) == 100  # only the head is kept

    run(check)


def test_compressed_bodies_inflate_and_broken_ones_are_unreadable() -> None:
    rows = b'{"a": 1}\n' * 1000
    members = gzip.compress(rows[:4000]) + gzip.compress(rows[4000:])  # as `gzip -c a b` makes

    async def check(url: str, seen: list[Any]) -> None:
        for encoding, body in [
            ("gzip", gzip.compress(rows)),
            ("deflate", zlib.compress(rows)),
            ("gzip", members),
        ]:
            status, answer = await post(url, body, **{"Content-Encoding": encoding})
            assert (status, answer) == (200, {"size": len(rows), "complete": True})
            assert seen[-1].data == rows
        for broken, says in [
            (gzip.compress(rows)[:-20], "ends before its compressed data"),
            (gzip.compress(rows) + b"junk", "does not decompress as gzip"),
            (b"plain", "does not decompress as gzip"),
        ]:
            status, answer = await post(url, broken, **{"Content-Encoding": "gzip"})
            assert status == 400 and says in answer["unreadable"], answer

    run(check)


def test_an_unknown_encoding_or_a_simple_cross_site_write_is_refused() -> None:
    async def check(url: str, seen: list[Any]) -> None:
        status, answer = await post(url, b"[]", **{"Content-Encoding": "bogus"})
        assert status == 415 and "Content-Encoding 'bogus'" in answer["error"]
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            status, answer = await post(url, b"[]", **{"Content-Type": content_type})
            assert status == 415 and "application/json" in answer["error"], content_type
        status, answer = await post(url, b"[]", **{"Sec-Fetch-Site": "cross-site"})
        assert status == 403 and "another site" in answer["error"]
        status, _ = await post(url, b"[]", **{"Content-Type": "application/x-ndjson"})
        assert status == 200
        assert len(seen) == 1, "refused requests never reach the handler"

    run(check)


def test_errors_are_json_without_tracebacks() -> None:
    async def check(url: str, seen: list[Any]) -> None:
        async with aiohttp.ClientSession() as session:
            for path, status in [("/nowhere", 404), ("/broken", 500)]:
                async with session.get(url + path) as response:
                    assert response.status == status
                    answer = await response.json()
                    assert set(answer) == {"error"} and "Traceback" not in answer["error"]
            async with session.delete(url + "/hello") as response:
                assert response.status == 405 and "error" in await response.json()
                assert response.headers["Allow"] == "GET,HEAD"

    run(check)


def test_expect_100_continue_over_the_limit_is_answered_413_before_the_body() -> None:
    async def check(url: str, seen: list[Any]) -> None:
        head = (
            b"POST /api/ingest/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer, _ = await asyncio.to_thread(raw_exchange, url, head, 3.0)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"100 Continue" not in answer
        small = head.replace(b"5000000", b"2")
        answer, _ = await asyncio.to_thread(raw_exchange, url, small, 1.0)
        assert answer.startswith(b"HTTP/1.1 100 Continue"), answer[:200]

    run(check)


def test_half_sent_headers_do_not_hold_a_connection() -> None:
    async def check(url: str, seen: list[Any]) -> None:
        partial = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: "
        answer, open_for = await asyncio.to_thread(raw_exchange, url, partial, 10.0)
        assert answer == b"" and open_for < 4.0, (answer, open_for)

    run(check, header_timeout_s=1.0)
