"""Simulated server agents (`tally agent`): each batches its samples and posts them to the
ingest endpoint every interval, retrying failures with exponential backoff and full jitter.

Full jitter (each retry waits a uniform random time up to an exponentially growing ceiling)
is what keeps thousands of agents that failed together from retrying together. Retries are
bounded: after the last one the batch is dropped and counted as failed, as a real agent with
a bounded buffer would.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from tally.access.tokens import authorization
from tally.core.clock import now_ms
from tally.core.errors import TallyError
from tally.feed import METRIC_NAMES

#: Statuses worth a retry besides every 5xx: the server timed out or is rate limiting.
RETRYABLE_4XX = frozenset({408, 429})


class AgentGaveUp(TallyError):
    """Batches kept failing and none was delivered for the give-up time."""


@dataclass(frozen=True)
class Backoff:
    """Retry n (0-based) waits uniform(0, min(cap, base * 2**n)) seconds; at most `retries`."""

    base_s: float = 0.5
    cap_s: float = 30.0
    retries: int = 5

    def ceiling(self, retry: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(retry, 64))

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(retry))


@dataclass
class AgentStats:
    """What the progress line shows, for all simulated servers together."""

    batches: int = 0
    samples: int = 0
    retries: int = 0
    failed: int = 0
    rejected_rows: int = 0
    started: float = field(default_factory=time.monotonic)
    #: When a batch was last delivered (or the agents started), and the last failure seen.
    delivered_at: float = field(default_factory=time.monotonic)
    last_problem: str = ""

    def failing_for(self) -> float:
        """Seconds since the last delivery, while batches fail (0 while none has)."""
        return time.monotonic() - self.delivered_at if self.failed else 0.0

    def line(self) -> str:
        rate = self.samples / max(time.monotonic() - self.started, 1e-9)
        return (
            f"agent: sent {self.batches:,} batches ({self.samples:,} samples, {rate:,.0f}/s), "
            f"retried {self.retries:,}, failed {self.failed:,}, "
            f"rejected rows {self.rejected_rows:,}"
        )


Sleep = Callable[[float], Awaitable[None]]


async def post_with_retries(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    backoff: Backoff,
    rng: random.Random,
    stats: AgentStats,
    sleep: Sleep = asyncio.sleep,
) -> bool:
    """Post one batch; True once accepted (202). Connection errors, 5xx, 408 and 429 are
    retried per `backoff`; any other status is final (the batch itself is wrong)."""
    for attempt in range(backoff.retries + 1):
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/x-ndjson"}
            ) as response:
                if response.status == 202:  # delivered: never re-sent, whatever the body
                    stats.batches += 1
                    stats.delivered_at = time.monotonic()
                    try:
                        answer = json.loads(await response.read())
                        stats.samples += int(answer.get("accepted", 0))
                        stats.rejected_rows += int(answer.get("rejected", 0))
                    except (ValueError, TypeError, AttributeError, aiohttp.ClientError):
                        pass
                    return True
                detail = (await response.read())[:200].decode(errors="replace")
                stats.last_problem = f"{response.status}: {detail}"
                if response.status < 500 and response.status not in RETRYABLE_4XX:
                    print(f"agent: {url} -> {response.status}: {detail}", file=sys.stderr)
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.last_problem = f"{type(exc).__name__}: {exc}"
        if attempt == backoff.retries:
            break
        stats.retries += 1
        await sleep(backoff.delay(attempt, rng))
    stats.failed += 1
    return False


@dataclass
class SimulatedServer:
    """One server: a random walk per metric, sampled every `resolution_s`."""

    server_id: str
    metrics: list[str]
    rng: random.Random
    values: dict[str, float] = field(default_factory=dict)

    def samples(self, from_ms: int, to_ms: int, resolution_ms: int) -> list[dict[str, object]]:
        """The samples taken in [from_ms, to_ms): one per metric per resolution step."""
        first = from_ms + (-from_ms) % resolution_ms
        rows: list[dict[str, object]] = []
        for ts in range(first, to_ms, resolution_ms):
            for metric in self.metrics:
                value = self.values.get(metric, self.rng.uniform(10, 90))
                value = min(100.0, max(0.0, value + self.rng.gauss(0, 2)))
                self.values[metric] = value
                rows.append(
                    {
                        "server_id": self.server_id,
                        "metric_id": metric,
                        "ts_ms": ts,
                        "value": round(value, 3),
                    }
                )
        return rows


def metric_names(count: int) -> list[str]:
    return [METRIC_NAMES[i] if i < len(METRIC_NAMES) else f"metric.{i}" for i in range(count)]


async def run_server(
    server: SimulatedServer,
    session: aiohttp.ClientSession,
    url: str,
    *,
    interval_s: float,
    resolution_s: float,
    rounds: int,
    backoff: Backoff,
    stats: AgentStats,
) -> None:
    """Every interval, post what was sampled since the last post (after a random first
    delay, so that servers started together do not post together)."""
    await asyncio.sleep(server.rng.uniform(0, interval_s))
    collected_to = now_ms() - int(interval_s * 1000)
    due = time.monotonic()
    done = 0
    while rounds == 0 or done < rounds:
        wall = now_ms()
        rows = server.samples(collected_to, wall, max(int(resolution_s * 1000), 1))
        collected_to = wall
        if rows:
            body = b"\n".join(json.dumps(row).encode() for row in rows)
            await post_with_retries(
                session, url, body, backoff=backoff, rng=server.rng, stats=stats
            )
        done += 1
        due += interval_s
        await asyncio.sleep(max(due - time.monotonic(), 0.0))


async def run_agents(
    url: str,
    *,
    servers: int,
    metrics: int,
    interval_s: float,
    resolution_s: float,
    rounds: int,
    backoff: Backoff,
    seed: int,
    give_up_s: float = 60.0,
    report_every_s: float = 5.0,
    connections: int = 100,
    token: str = "",
) -> AgentStats:
    """`servers` simulated servers posting to `url` (with the bearer `token`, when given)
    until cancelled or `rounds` are done, or until batches have failed and none was delivered
    for `give_up_s`."""
    stats = AgentStats()
    names = metric_names(metrics)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=connections)
    headers = authorization(token) if token else {}
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, headers=headers
    ) as session:
        tasks = [
            asyncio.create_task(
                run_server(
                    SimulatedServer(f"server-{n:04d}", names, random.Random(seed * 100_003 + n)),
                    session,
                    url,
                    interval_s=interval_s,
                    resolution_s=resolution_s,
                    rounds=rounds,
                    backoff=backoff,
                    stats=stats,
                )
            )
            for n in range(servers)
        ]
        all_done = asyncio.gather(*tasks)
        try:
            while not all_done.done():
                await asyncio.wait([all_done], timeout=min(report_every_s, give_up_s))
                print(stats.line(), file=sys.stderr, flush=True)
                if stats.failing_for() >= give_up_s:
                    raise AgentGaveUp(
                        f"no batch was delivered for {stats.failing_for():.0f} s and "
                        f"{stats.failed:,} failed (last: {stats.last_problem})"
                    )
            await all_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return stats
