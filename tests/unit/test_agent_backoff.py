"""`tally agent`'s retries against a real HTTP endpoint that fails: delays grow, full jitter
spreads them, and the bound holds."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tally.ingest.agent import AgentStats, Backoff, post_with_retries
from tests.harness import serve

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def serving(handler: Handler) -> tuple[web.AppRunner, str]:
    application = web.Application()
    application.router.add_post("/api/ingest/metrics", handler)
    runner, url = await serve(application)
    return runner, url + "/api/ingest/metrics"


@given(
    base=st.floats(0.001, 10),
    cap=st.floats(0.001, 100),
    retry=st.integers(0, 200),
    seed=st.integers(0, 2**32),
)
def test_each_delay_lies_under_a_ceiling_that_doubles_up_to_the_cap(
    base: float, cap: float, retry: int, seed: int
) -> None:
    backoff = Backoff(base_s=base, cap_s=cap)
    ceiling = backoff.ceiling(retry)
    assert ceiling == min(cap, base * 2.0 ** min(retry, 64))
    assert backoff.ceiling(retry + 1) >= ceiling
    assert 0.0 <= backoff.delay(retry, random.Random(seed)) <= ceiling


def test_retries_against_a_failing_endpoint_grow_spread_and_stop_at_the_bound() -> None:
    backoff = Backoff(base_s=0.05, cap_s=0.6, retries=5)
    ceilings = [0.05, 0.1, 0.2, 0.4, 0.6]  # doubling from 0.05 s, capped at 0.6 s
    servers = 40
    arrivals: dict[str, list[float]] = defaultdict(list)
    chosen: dict[str, list[float]] = defaultdict(list)  # the delays the agent slept, per server

    def sleeping(server: str) -> Callable[[float], Awaitable[None]]:
        async def sleep(delay: float) -> None:
            chosen[server].append(delay)
            await asyncio.sleep(delay)

        return sleep

    async def unavailable(request: web.Request) -> web.Response:
        arrivals[(await request.read()).decode()].append(time.monotonic())
        return web.json_response({"error": "broker down"}, status=503)

    async def run() -> AgentStats:
        runner, url = await serving(unavailable)
        stats = AgentStats()
        try:
            async with aiohttp.ClientSession() as session:
                results = await asyncio.gather(
                    *(
                        post_with_retries(
                            session,
                            url,
                            f"server-{n}".encode(),
                            backoff=backoff,
                            rng=random.Random(n),
                            stats=stats,
                            sleep=sleeping(f"server-{n}"),
                        )
                        for n in range(servers)
                    )
                )
        finally:
            await runner.cleanup()
        assert not any(results)
        return stats

    stats = asyncio.run(run())
    assert stats.failed == servers and stats.batches == 0
    assert stats.retries == servers * backoff.retries
    # The bound: the first try and exactly `retries` more, per server.
    assert {len(times) for times in arrivals.values()} == {backoff.retries + 1}
    # Each delay under its ceiling, and really waited: the next try came no sooner (a busy
    # machine only makes the gaps longer, so the gaps bound the delays from below only).
    for server, delays in chosen.items():
        assert len(delays) == backoff.retries
        times = arrivals[server]
        for retry, delay in enumerate(delays):
            assert 0.0 <= delay <= ceilings[retry], (server, retry, delay)
            assert times[retry + 1] - times[retry] >= delay, (server, retry)
    by_retry = [[delays[retry] for delays in chosen.values()] for retry in range(backoff.retries)]
    means = [statistics.mean(delays) for delays in by_retry]
    # Delays grow: the mean of uniform(0, ceiling) doubles until the cap.
    assert means[0] < means[2] < means[4], means
    # Full jitter spreads the servers: the last retries are far from simultaneous.
    last = by_retry[-1]
    assert statistics.pstdev(last) > 0.15 * ceilings[-1], last
    assert max(last) - min(last) > 0.5 * ceilings[-1]


def test_a_retried_batch_that_succeeds_counts_once_and_a_4xx_is_not_retried() -> None:
    attempts: dict[str, int] = defaultdict(int)

    async def flaky(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        attempts[body] += 1
        if body == "bad":
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if attempts[body] <= 2:
            return web.json_response({"error": "try later"}, status=503)
        return web.json_response({"accepted": 3, "rejected": 1}, status=202)

    async def run() -> tuple[AgentStats, bool, bool]:
        runner, url = await serving(flaky)
        stats = AgentStats()
        backoff = Backoff(base_s=0.01, cap_s=0.05, retries=4)
        try:
            async with aiohttp.ClientSession() as session:
                good = await post_with_retries(
                    session, url, b"good", backoff=backoff, rng=random.Random(1), stats=stats
                )
                bad = await post_with_retries(
                    session, url, b"bad", backoff=backoff, rng=random.Random(2), stats=stats
                )
        finally:
            await runner.cleanup()
        return stats, good, bad

    stats, good, bad = asyncio.run(run())
    assert good and not bad
    assert attempts == {"good": 3, "bad": 1}
    assert (stats.batches, stats.samples, stats.rejected_rows) == (1, 3, 1)
    assert (stats.retries, stats.failed) == (2, 1)


def test_a_connection_refused_is_retried_like_a_503() -> None:
    async def run() -> AgentStats:
        stats = AgentStats()
        async with aiohttp.ClientSession() as session:
            await post_with_retries(
                session,
                "http://127.0.0.1:9/api/ingest/metrics",  # the discard port: nothing listens
                b"x",
                backoff=Backoff(base_s=0.001, cap_s=0.002, retries=3),
                rng=random.Random(0),
                stats=stats,
            )
        return stats

    stats = asyncio.run(run())
    assert (stats.retries, stats.failed) == (3, 1)
