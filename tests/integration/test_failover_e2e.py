"""Failover and scale-out through the real broker: real worker processes, real SIGKILL.

A worker dies under steady load; the survivor answers every query within 15 s, and once the
load ends the top-K, items and minute rollups equal brute force over every event sent:
nothing lost (offsets committed after the changelog), nothing counted twice (the offsets kept
with the state skip what is redelivered). The killed worker comes back and agrees. With three
workers, any of them answers for keys it does not own, exactly as the owner does.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from typing import Any

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.tables.topk import rank_key
from tests.conftest import WorkerFactory
from tests.harness import Worker, rewind, start_all, wait_until
from tests.load import ITEMS, MINUTE_MS, SERVERS, Load, kill_after


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
    assert not wrong, f"{worker.log_path.name} differs from brute force: {wrong[:5]}"


def test_a_worker_killed_under_load_loses_nothing_and_counts_nothing_twice(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    first, second = start_all(
        make_worker("w1", TALLY_STANDBY_REPLICAS="1"),
        make_worker("w2", TALLY_STANDBY_REPLICAS="1"),
    )
    assert second.get("/api/health")["standby"], "standby replicas are on"
    started_ms = int(time.time() * 1000)
    load = Load(broker.bootstrap, purchase_codec, metric_batch_codec).start()
    failover_s = kill_after(8, first, second, timeout=30)
    print(f"failover: kill -> every query answered by the survivor in {failover_s:.1f} s")
    assert failover_s <= 15
    time.sleep(6)  # the survivor under load alone
    load.stop()
    agree(second, load, started_ms)

    # The killed worker rejoins, catches up, and answers the same, under load again.
    first.start()
    wait_until(lambda: all(w.get_status("/api/health")[0] == 200 for w in (first, second)), 90)
    load.start()
    time.sleep(5)
    load.stop()
    for worker in (first, second):
        agree(worker, load, started_ms)
    health = first.get("/api/health")
    assert health["recovery"]["completed"] and set(health["lag"]) <= {
        "purchases",
        "metric-samples",
        "sales-topk-candidates",
        "metric-rollups-by-metric",
        "metric-ticks",
        "metric-rollups-1m",
    }


def test_any_of_three_workers_answers_for_keys_it_does_not_own(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    workers = start_all(*(make_worker(f"w{n}") for n in range(1, 4)))
    load = Load(broker.bootstrap, purchase_codec, metric_batch_codec).start()
    time.sleep(3)
    load.stop()
    started_ms = min(p["event_time_ms"] for p in load.purchases)
    agree(workers[0], load, started_ms)
    owners = {w.url: {a for a in w.get("/api/health")["active"]} for w in workers}
    assert all(owners.values()), f"every worker owns partitions: {owners}"
    window = f"from={started_ms - 2 * MINUTE_MS}&to={started_ms + 5 * MINUTE_MS}"
    for path in [f"/api/sales/items/{i}" for i in ITEMS[:8]] + [
        f"/api/servers/{s}/metrics?{window}" for s in SERVERS
    ]:
        answers = [w.get(path) for w in workers]
        for answer in answers:
            answer.pop("as_of", None)
        assert answers[0] == answers[1] == answers[2], path
    for worker in workers:
        assert not disagreements(worker, load, started_ms)


def test_every_message_delivered_again_changes_no_answer(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    app_id: str,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    """The whole history redelivered (the group rewound to offset 0 after a clean stop):
    every message comes again with its offset, and every record already holds it."""
    worker = make_worker().start()
    load = Load(broker.bootstrap, purchase_codec, metric_batch_codec).start()
    time.sleep(4)
    load.stop()
    started_ms = min(p["event_time_ms"] for p in load.purchases)
    agree(worker, load, started_ms)
    worker.stop()
    rewind(broker.bootstrap, app_id, ["purchases", "metric-samples"])
    worker.start()
    wait_until(
        lambda: (
            redelivered_count(worker, "purchases") >= len(load.purchases)
            and redelivered_count(worker, "metric-samples") >= len(load.samples)
        ),
        60,
        what="the history redelivered",
    )
    agree(worker, load, started_ms, timeout=10)


def redelivered_count(worker: Worker, topic: str) -> float:
    for line in worker.text("/metrics").splitlines():
        if line.startswith(f'tally_events_total{{outcome="redelivered",topic="{topic}"}}'):
            return float(line.split()[1])
    return 0.0
