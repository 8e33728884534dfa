"""A steady load of purchases and metric batches for failover tests and benchmarks, with
every acknowledged event remembered for brute force."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer

from tally.broker.admin import read_topic
from tally.codecs.avro import AvroCodec
from tally.core.partitioning import partition_for
from tally.core.topk import rank_key
from tests.harness import Worker, purchase_record, wait_until

PARTITIONS = 4
ITEMS = [f"item-{n:03d}" for n in range(40)]
SERVERS = [f"srv-{n:02d}" for n in range(8)]
METRICS = ["cpu", "mem", "disk"]
MINUTE_MS = 60_000


class Load:
    """Purchases (one message each) and metric batches, sent at a steady rate from a thread;
    remembers every event the broker acknowledged."""

    def __init__(self, bootstrap: str, purchases: AvroCodec, batches: AvroCodec) -> None:
        self.bootstrap = bootstrap
        self.purchase_codec, self.batch_codec = purchases, batches
        self.purchases: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.rng = random.Random(6)
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Load:
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            while not self._stop.is_set():
                await self._tick(producer)
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()

    async def _tick(self, producer: AIOKafkaProducer) -> None:
        """20 purchases and one batch per server: ~200 purchases/s, 80 batches/s."""
        now = int(time.time() * 1000)
        sends = []
        purchases = []
        for _ in range(20):
            self.sent += 1
            item = ITEMS[min(int(self.rng.paretovariate(1.2)) - 1, len(ITEMS) - 1)]
            purchase = purchase_record(f"p{self.sent}", item, now, self.rng.randint(1, 5))
            purchases.append(purchase)
            value = self.purchase_codec.dumps(purchase)
            sends.append(await producer.send("purchases", value, key=item.encode()))
        samples = []
        for server in SERVERS:
            batch_samples = [
                {"metric_id": m, "ts_ms": now, "value": round(self.rng.uniform(0, 100), 2)}
                for m in METRICS
            ]
            batch = {"server_id": server, "sent_at_ms": now, "samples": batch_samples}
            samples += [{"server_id": server, **s} for s in batch_samples]
            value = self.batch_codec.dumps(batch)
            sends.append(await producer.send("metric-samples", value, key=server.encode()))
        await asyncio.gather(*sends)  # acknowledged: from now on they must be counted
        self.purchases += purchases
        self.samples += samples


def answers_every_query(worker: Worker) -> bool:
    """Health, the top-K, and an item and a server of every partition answer 200."""
    paths = ["/api/health", "/api/sales/top"]
    for partition in range(PARTITIONS):
        paths.append(f"/api/sales/items/{next(i for i in ITEMS if owner(i) == partition)}")
        server = next((s for s in SERVERS if owner(s) == partition), None)
        if server is not None:
            paths.append(f"/api/servers/{server}/metrics")
    try:
        return all(worker.get_status(path)[0] == 200 for path in paths)
    except (OSError, ValueError):  # not listening yet; a body that is not JSON
        return False


def owner(key: str) -> int:
    return partition_for(key, PARTITIONS)


def kill_after(seconds: float, victim: Worker, survivor: Worker, timeout: float) -> float:
    """SIGKILL `victim` after `seconds`; the seconds until `survivor` answers every query."""
    time.sleep(seconds)
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: answers_every_query(survivor), timeout, interval=0.2, what="survivor")
    return time.monotonic() - killed


# --- brute force over what a Load sent ---------------------------------------------------


def expected_top(load: Load) -> list[list[Any]]:
    totals: Counter[str] = Counter()
    for p in load.purchases:
        totals[p["item_id"]] += p["quantity"]
    return [[item, qty] for item, qty in sorted(totals.items(), key=rank_key)[:10]]


def item_totals(load: Load) -> Counter[str]:
    totals: Counter[str] = Counter()
    for p in load.purchases:
        totals[p["item_id"]] += p["quantity"]
    return totals


def minute_rollups(load: Load, server: str | None) -> dict[str, dict[int, list[float]]]:
    """metric → minute → values, of one server (or of all servers)."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in load.samples:
        if server is None or s["server_id"] == server:
            values[s["metric_id"]][s["ts_ms"] // MINUTE_MS * MINUTE_MS].append(s["value"])
    return values


Points = dict[str, tuple[float, float, int, float]]


def points(answered: list[dict[str, Any]]) -> Points:
    return {p["t"]: (p["min"], p["max"], p["count"], p["avg"]) for p in answered}


def brute_points(minutes: dict[int, list[float]]) -> Points:
    return {iso_minute(m): (min(v), max(v), len(v), sum(v) / len(v)) for m, v in minutes.items()}


def same(got: Points, want: Points) -> bool:
    """Equal minutes, min, max and count; averages equal but for float summation order."""
    return got.keys() == want.keys() and all(
        got[t][:3] == want[t][:3] and math.isclose(got[t][3], want[t][3], rel_tol=1e-9) for t in got
    )


def iso_minute(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(ms / 1000))


def disagreements(worker: Worker, load: Load, since_ms: int) -> list[str]:
    """Where the worker's answers differ from brute force (empty: all equal)."""
    wrong = []
    top = [[i["item_id"], i["quantity"]] for i in worker.get("/api/sales/top")["items"]]
    if top != expected_top(load):
        wrong.append(f"top-10 {top} != {expected_top(load)}")
    totals = item_totals(load)
    for item in ITEMS[:12]:
        got = worker.get(f"/api/sales/items/{item}")["quantity"]
        if got != totals[item]:
            wrong.append(f"{item}: {got} != {totals[item]}")
    window = f"from={since_ms - 2 * MINUTE_MS}&to={int(time.time() * 1000) + MINUTE_MS}"
    for server in SERVERS:
        answer = worker.get(f"/api/servers/{server}/metrics?{window}")["metrics"]
        for metric, minutes in minute_rollups(load, server).items():
            got, want = points(answer.get(metric, [])), brute_points(minutes)
            if not same(got, want):
                wrong.append(f"{server}/{metric}: {got} != {want}")
    for metric, minutes in minute_rollups(load, None).items():  # across servers
        got = points(worker.get(f"/api/metrics/{metric}?{window}")["series"])
        if not same(got, brute_points(minutes)):
            wrong.append(f"all servers/{metric}: {got} != {brute_points(minutes)}")
    return wrong


def agree(worker: Worker, load: Load, since_ms: int, timeout: float = 45) -> None:
    """Wait until the worker's answers equal brute force; fail with what still differs."""
    deadline = time.monotonic() + timeout
    while (wrong := disagreements(worker, load, since_ms)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if wrong:
        try:
            topics = logged_twice(load)
        except Exception as exc:  # the comparison's message must survive a broken read
            topics = f"(the topics could not be read back: {exc!r})"
        raise AssertionError(
            f"{worker.log_path.name} differs from brute force: {wrong[:5]}; {topics}"
        )


def logged_twice(load: Load) -> str:
    """What the input topics hold more than once (a producer retry appends a message again)."""

    async def read(topic: str) -> list[Any]:
        return [r async for r in read_topic([load.bootstrap], topic)]

    purchases = Counter(
        load.purchase_codec.loads(r.value)["purchase_id"] for r in asyncio.run(read("purchases"))
    )
    batches = Counter(
        (b["server_id"], b["sent_at_ms"])
        for b in (load.batch_codec.loads(r.value) for r in asyncio.run(read("metric-samples")))
    )
    twice = [k for k, n in purchases.items() if n > 1][:10]
    batches_twice = [k for k, n in batches.items() if n > 1][:10]
    return (
        f"the topics hold {sum(purchases.values())} purchases "
        f"({len(load.purchases)} acknowledged), twice: {twice}; "
        f"{sum(batches.values())} metric batches, twice: {batches_twice}"
    )
