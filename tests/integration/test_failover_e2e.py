"""Failover and scale-out through the real broker: real worker processes, real SIGKILL.

A worker dies under steady load; the survivor answers every query within 15 s, and once the
load ends the top-K, items and minute rollups equal brute force over every event sent:
nothing lost (offsets committed after the changelog), nothing counted twice (the offsets kept
with the state skip what is redelivered). The killed worker comes back and agrees. With three
workers, any of them answers for keys it does not own, exactly as the owner does.
"""

from __future__ import annotations

import time
from typing import Any

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tests.conftest import WorkerFactory
from tests.harness import (
    Worker,
    events_total,
    produce,
    purchase_row,
    rewind,
    start_all,
    wait_until,
)
from tests.load import ITEMS, MINUTE_MS, SERVERS, Load, agree, disagreements, kill_after


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
        "purchases-routed",
        "metric-samples-routed",
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

        def same_answer(path: str = path) -> bool:
            """All three forward to the owner; an idle partition's watermark follows the
            wall clock (a step per second), so three requests in a row may straddle a step:
            they must agree whole when asked within one step."""
            answers = [w.get(path) for w in workers]
            for answer in answers:
                answer.pop("as_of", None)
            return answers[0] == answers[1] == answers[2]

        wait_until(same_answer, 10, 0.1, f"the three workers' answers to {path} agree")
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
            events_total(worker, "purchases", "redelivered") >= len(load.purchases)
            and events_total(worker, "metric-samples", "redelivered") >= len(load.samples)
        ),
        60,
        what="the history redelivered",
    )
    agree(worker, load, started_ms, timeout=10)


def test_a_worker_that_loses_and_regains_partitions_answers_from_fresh_state(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    """w1 counts alone, w2 joins and counts some partitions (and maybe the merge), w2 leaves:
    w1 must answer from what the tables hold now, not from the windows it kept before it
    lost those partitions (each window's totals are kept incrementally in memory)."""
    first = make_worker("w1").start()
    sent: list[dict[str, Any]] = []

    def send(count: int) -> None:
        wall = int(time.time() * 1000)
        batch = [
            {
                **purchase_row(len(sent) + n, f"item-{n % 13:02d}", 1 + n % 7, wall - n),
                "metadata": {},
            }
            for n in range(count)
        ]
        produce(
            broker.bootstrap,
            "purchases",
            [(p["item_id"].encode(), purchase_codec.dumps(p)) for p in batch],
        )
        sent.extend(batch)

    def counted(worker: Worker) -> bool:
        totals: dict[str, int] = {}
        for purchase in sent:
            item = purchase["item_id"]
            totals[item] = totals.get(item, 0) + purchase["quantity"]
        top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        answer = [(i["item_id"], i["quantity"]) for i in worker.get("/api/sales/top")["items"]]
        return answer == top and all(
            worker.get(f"/api/sales/items/{item}")["quantity"] == total
            for item, total in totals.items()
        )

    send(300)
    wait_until(lambda: counted(first), 30, what="w1 alone counted the first purchases")
    second = make_worker("w2").start()
    first.wait_ready(60)
    moved = [a for a in second.get("/api/health")["active"] if a.startswith("purchases[")]
    assert moved, "w2 took purchases partitions from w1"
    send(300)
    wait_until(lambda: counted(second), 30, what="both counted the second purchases")
    second.stop()
    first.wait_ready(60)
    send(300)  # w1 uses its windows of the partitions it regained
    wait_until(lambda: counted(first), 30, what="w1 counted all three batches, from fresh state")
