"""The shipped answer cache (docker/nginx.conf, run by Debian's nginx) in front of a real
worker: repeats are the cache's; a changed answer reaches the cache's readers, and a revoked
token is refused by it, within the answer's max-age plus stale-while-revalidate (plus one
second: nginx counts whole seconds); and a crowd of readers sends the worker one request per
expiry, not one per reader arriving while the copy is refreshed."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tally.access.tokens import OPERATOR, SCOPES
from tally.broker.local import LocalBroker
from tally.core.clock import now_ms
from tally.http.caching import cache_control
from tally.settings import Settings
from tests.answer_cache import start_cache
from tests.conftest import WorkerFactory
from tests.harness import ACCESS, Worker, bearer, purchase_row, sample_value, wait_until
from tests.integration.test_access_e2e import revoke

TOP = "/api/sales/top"
DEFAULTS = Settings()
#: How long after the worker a reader of the cache may still get the worker's previous answer:
#: max-age + stale-while-revalidate, +1 s (nginx counts whole seconds), +1 s for the polling
#: and a busy machine.
BOUND_S = DEFAULTS.cache_max_age_seconds + DEFAULTS.cache_stale_seconds + 1 + 1
#: Concurrent readers of the cache, and for how long, in the crowd.
READERS, CROWD_S = 64, 3.0


def leader(client: Worker) -> tuple[int, str | None]:
    """The status of the top-10 and its first item (None: no items, or not a 200)."""
    status, _, body = client.fetch(TOP)
    items = json.loads(body)["items"] if status == 200 else []
    return status, items[0]["item_id"] if items else None


def bought(worker: Worker, n: int, item: str, quantity: int) -> None:
    row = json.dumps([purchase_row(n, item, quantity, now_ms())]).encode()
    assert worker.post("/api/ingest/purchases", row)[0] == 202


def first_seen(clients: dict[str, Worker], seen: object, timeout_s: float) -> dict[str, float]:
    """When each client first answered `seen` ((status, leader)), polled in turn."""
    at: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(at) < len(clients):
        assert time.monotonic() < deadline, f"only {sorted(at)} answered {seen} in {timeout_s} s"
        for name, client in clients.items():
            if name not in at and leader(client) == seen:
                at[name] = time.monotonic()
        time.sleep(0.05)
    return at


async def crowd(url: str, token: str) -> Counter[str]:
    """READERS concurrent readers of `url` for CROWD_S seconds: how the cache answered them
    (X-Cache-Status)."""
    statuses = Counter[str]()
    stop = time.monotonic() + CROWD_S
    async with aiohttp.ClientSession(headers=bearer(token)) as session:

        async def reader() -> None:
            while time.monotonic() < stop:
                async with session.get(url) as answer:
                    await answer.read()
                    assert answer.status == 200, answer.status
                    statuses[answer.headers["X-Cache-Status"]] += 1

        await asyncio.gather(*(reader() for _ in range(READERS)))
    return statuses


def sales_answers(worker: Worker) -> float:
    """Query answers of the sales pipeline the worker has sent so far (304s too)."""
    return sum(
        sample_value(worker, "tally_query_answers_total", pipeline="sales", status=status)
        for status in ("200", "304")
    )


def test_the_cache_answers_repeats_passes_changes_and_revocations_on_in_time_and_spares_the_worker(
    broker: LocalBroker, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = make_worker(TALLY_PIPELINES="sales").start()
    bought(worker, 1, "item-a", 5)
    wait_until(lambda: leader(worker) == (200, "item-a"), 60, what="item-a on top")
    cache = start_cache(tmp_path, worker, TOP)
    try:
        # Repeats: the cache's own copy (one Vary variant per token).
        repeats = [cache.client.fetch(TOP)[1]["X-Cache-Status"] for _ in range(20)]
        assert repeats.count("HIT") >= 15, repeats
        policy = cache.client.fetch(TOP)[1]["Cache-Control"]
        assert policy == cache_control(
            DEFAULTS.cache_max_age_seconds, DEFAULTS.cache_stale_seconds, authenticated=True
        )
        assert DEFAULTS.cache_stale_seconds > 0, "the crowd below needs stale-while-revalidate"

        # A change: the cache's readers have it at most BOUND_S after the worker's.
        bought(worker, 2, "item-b", 50)
        at = first_seen({"worker": worker, "cache": cache.client}, (200, "item-b"), 60)
        assert at["cache"] - at["worker"] <= BOUND_S, at

        # A crowd: the readers get the cache's copies, the expired one while it is refreshed
        # in the background (the reader whose request started the refresh waits for it on its
        # next request, nginx's way); one request per expiry reaches the worker. Without
        # stale-while-revalidate, every reader arriving during a refresh went to the worker:
        # 8 to 44 answers came from it in such a crowd.
        before = sales_answers(worker)
        statuses = asyncio.run(crowd(cache.url + TOP, worker.token))
        sent = sales_answers(worker) - before
        from_worker = sum(n for s, n in statuses.items() if s not in ("HIT", "STALE", "UPDATING"))
        assert from_worker <= 1, statuses  # one refresh slower than S on a starved machine
        assert 1 <= sent <= statuses["STALE"] + from_worker, (sent, statuses)

        # A revoked token: refused by the cache at most BOUND_S after the worker refuses it,
        # and never answered again.
        token = ACCESS.token(OPERATOR, SCOPES)
        direct, cached = (
            Worker(env={}, log_path=tmp_path / "unused.log", port=client.port, token=token)
            for client in (worker, cache.client)
        )
        assert leader(cached) == (200, "item-b")
        revoke(worker, token)
        at = first_seen({"worker": direct, "cache": cached}, (401, None), 30)
        assert at["cache"] - at["worker"] <= BOUND_S, at
        assert {leader(cached)[0] for _ in range(20)} == {401}
    finally:
        cache.stop()
