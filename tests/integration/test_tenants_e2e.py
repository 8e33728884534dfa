"""Two tenants side by side through the real broker, on two workers, with the same server,
metric and item ids: each tenant's every view (top-10, items, servers, summaries, metrics
across servers, live streams, final minutes) equals brute force over its own events only, and
an operator's cross-tenant views equal brute force over both."""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from itertools import islice
from typing import Any

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, Record
from tally.core.topk import rank_key
from tally.feed import historical_purchases
from tests.conftest import WorkerFactory
from tests.harness import (
    ACCESS,
    EventStream,
    Worker,
    consume,
    produce,
    purchase_row,
    start_all,
    wait_until,
)
from tests.integration.test_metrics_e2e import (
    METRICS,
    MINUTE,
    SERVERS,
    T0,
    batches,
    iso,
    same,
    samples,
    truth,
)
from tests.integration.test_sales_e2e import HOUR_MS, T_END, messages, produce_to_partitions

TENANTS = ("acme", "globex")
#: Late purchases per tenant: each tenant's answer counts its own.
LATE = {"acme": 30, "globex": 20}


def as_caller(worker: Worker, token: str) -> Worker:
    """The same worker, asked with another token."""
    return Worker(env={}, log_path=worker.log_path, port=worker.port, token=token)


def ranked(totals: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    """The top-10 of (tenant, item) totals as the API ranks them (by quantity, then the
    tenant-scoped key), each naming its tenant."""
    keyed = sorted(((f"{t}|{i}", q) for (t, i), q in totals.items()), key=rank_key)[:10]
    return [
        {"tenant": key.split("|")[0], "item_id": key.split("|")[1], "quantity": q, "rank": n}
        for n, (key, q) in enumerate(keyed, start=1)
    ]


def window_totals(events: list[Record], last_pane: int) -> dict[tuple[str, str], int]:
    totals: Counter[tuple[str, str]] = Counter()
    for e in events:
        if last_pane - 23 <= e["event_time_ms"] // HOUR_MS <= last_pane:
            totals[(e["tenant"], e["item_id"])] += e["quantity"]
    return dict(totals)


def test_two_tenants_with_the_same_ids_each_see_their_own_data_only(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    purchase_batch_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    first, second = start_all(make_worker("w1"), make_worker("w2"))
    readers = {
        t: [as_caller(w, ACCESS.token(t, ["read"])) for w in (first, second)] for t in TENANTS
    }

    # Sales: each tenant's purchases over the same item ids (its own popularity), out of order
    # and with repeated times, the two tenants' taking turns; envelopes mix both tenants'.
    by_tenant = [
        [
            {**e, "purchase_id": f"{tenant}-{e['purchase_id']}", "tenant": tenant}
            for e in historical_purchases(
                random.Random(seed), count=3000, items=40, end_ms=T_END, span_ms=30 * HOUR_MS
            )
        ]
        for seed, tenant in enumerate(TENANTS)
    ]
    events: list[Record] = [e for pair in zip(*by_tenant, strict=True) for e in pair]
    produce_to_partitions(broker.bootstrap, messages(events, purchase_codec, purchase_batch_codec))

    # Metrics: the same servers and metrics in both tenants, other values; the tenants'
    # batches take turns (event time is a partition's, whoever's events move it).
    data = {tenant: samples(random.Random(40 + n)) for n, tenant in enumerate(TENANTS)}
    turns = zip(*([(t, b) for b in batches(data[t])] for t in TENANTS), strict=True)
    produce(
        broker.bootstrap,
        "metric-samples",
        [
            (
                server.encode(),
                metric_batch_codec.dumps(
                    {
                        "server_id": server,
                        "sent_at_ms": s[-1]["ts_ms"],
                        "samples": s,
                        "tenant": tenant,
                    }
                ),
            )
            for turn in turns
            for tenant, (server, s) in turn
        ],
    )

    last_pane = T_END // HOUR_MS
    totals = window_totals(events, last_pane)
    own = {t: {k: q for k, q in totals.items() if k[0] == t} for t in TENANTS}
    assert ranked(own["acme"]) != ranked(own["globex"])  # the two tenants rank differently
    for tenant in TENANTS:
        for reader in readers[tenant]:
            answer = wait_until(
                lambda r=reader, t=tenant: (
                    (a := r.get("/api/sales/top"))["items"] == ranked(own[t]) and a
                ),
                120,
                what=f"{tenant}'s top-10 to equal brute force over its own purchases",
            )
            assert answer["tenant"] == tenant and not answer["stale"], answer
    operator = first.get("/api/sales/top")
    assert (operator["tenant"], operator["items"]) == ("*", ranked(totals))
    assert second.get("/api/sales/top?tenant=globex")["items"] == ranked(own["globex"])

    # Items: one id, two tenants, two different counts, pane by pane, from either worker.
    for item in ("item-000000", "item-000007", "never-sold"):
        for tenant in TENANTS:
            panes: dict[int, int] = defaultdict(int)
            for e in events:
                if (e["tenant"], e["item_id"]) == (tenant, item):
                    panes[e["event_time_ms"] // HOUR_MS] += e["quantity"]
            for reader in readers[tenant]:
                body = reader.get(f"/api/sales/items/{item}")
                assert (body["tenant"], body["quantity"]) == (tenant, totals.get((tenant, item), 0))
                assert [p["quantity"] for p in body["panes"]] == [
                    panes[h] for h in range(last_pane - 23, last_pane + 1)
                ]
    # A tenant's token cannot name another tenant; an operator's can.
    assert readers["acme"][0].get_status("/api/sales/items/item-000000?tenant=globex")[0] == 403
    assert readers["acme"][1].get_status("/api/sales/top?tenant=globex")[0] == 403
    as_operator = first.get("/api/sales/items/item-000000?tenant=globex")
    assert as_operator["quantity"] == totals[("globex", "item-000000")]

    # Late purchases: each tenant's answer counts its own, the operator's counts all.
    late = [
        {**e, "purchase_id": f"late-{n}", "event_time_ms": T_END - 26 * HOUR_MS}
        for tenant in TENANTS
        for n, e in enumerate(islice((e for e in events if e["tenant"] == tenant), LATE[tenant]))
    ]
    produce(
        broker.bootstrap,
        "purchases",
        [(e["item_id"].encode(), purchase_codec.dumps(e)) for e in late],
    )
    for tenant in TENANTS:
        wait_until(
            lambda t=tenant: readers[t][1].get("/api/sales/top")["late_events"] == LATE[t],
            60,
            what=f"{tenant}'s late purchases counted",
        )
    assert first.get("/api/sales/top")["late_events"] == sum(LATE.values())
    assert readers["acme"][0].get("/api/sales/top")["items"] == ranked(own["acme"])

    # A live stream of a tenant's top-10: that tenant's items only.
    stream = EventStream(first.url, "/api/stream/sales/top", token=readers["globex"][0].token)
    snapshot, _ = stream.until(lambda e: e.event == "snapshot", 15, "the snapshot")
    stream.close()
    assert snapshot.data["tenant"] == "globex"
    assert [(i["item_id"], i["quantity"]) for i in snapshot.data["items"]] == [
        (i["item_id"], i["quantity"]) for i in ranked(own["globex"])
    ]

    # Dead letters: each tenant's rejected records (from Kafka, and from its ingest token)
    # are counted for it alone; an operator counts them all.
    bad = [
        (b"item-000001", purchase_codec.dumps({**events[0], "tenant": t, "quantity": 0}))
        for t in TENANTS
    ]
    produce(broker.bootstrap, "purchases", bad)
    for n, tenant in enumerate(TENANTS):
        sender = {"Authorization": f"Bearer {ACCESS.token(tenant, ['ingest'])}"}
        rows = [{**purchase_row(n, "item-000001", 1, T_END), "quantity": -n - 1}] * (n + 1)
        status, answer, _ = first.post("/api/ingest/purchases", json.dumps(rows).encode(), sender)
        assert status == 202 and answer["rejected"] == n + 1, answer
    for n, tenant in enumerate(TENANTS):
        stats = wait_until(
            lambda t=tenant, n=n: (
                (s := readers[t][n % 2].get("/api/dead-letters/stats"))["total"] == n + 2 and s
            ),
            30,
            what=f"{tenant}'s dead letters counted",
        )
        assert stats["tenant"] == tenant and {x["tenant"] for x in stats["latest"]} == {tenant}
        assert stats["by_rule"] == {"out_of_range": n + 2}, stats
    assert first.get("/api/dead-letters/stats")["total"] == 5
    assert first.get("/api/dead-letters/stats?tenant=globex")["total"] == 3

    # Metrics, per tenant: every server's minutes, each metric across the tenant's servers
    # (and by server), each server's summary; on both workers (one forwards to the owner).
    window = f"from={iso(T0)}&to={iso(T0 + 30 * MINUTE)}"
    for tenant in TENANTS:
        mine = data[tenant]
        for server in SERVERS:
            want = truth(mine, MINUTE, lambda s, m, server=server: m if s == server else None)
            for reader in readers[tenant]:
                wait_until(
                    lambda r=reader, server=server, want=want: same(
                        r.get(f"/api/servers/{server}/metrics?{window}")["metrics"], want
                    ),
                    60,
                    what=f"{tenant}'s {server} to equal brute force over its own samples",
                )
            summary = readers[tenant][0].get(f"/api/servers/{server}/summary?{window}")
            whole = truth(mine, 10**12, lambda s, m, server=server: m if s == server else None)
            assert same(
                {m: [{**p, "t": "x"}] for m, p in summary["metrics"].items()},
                {m: [{**p[0], "t": "x"}] for m, p in whole.items()},
            )
        for metric in METRICS[:2]:
            across = truth(
                mine, 5 * MINUTE, lambda s, m, metric=metric: "all" if m == metric else None
            )
            body = readers[tenant][1].get(f"/api/metrics/{metric}?{window}&step=5m")
            assert body["tenant"] == tenant and same({"all": body["series"]}, across)
            by_server = truth(mine, MINUTE, lambda s, m, metric=metric: s if m == metric else None)
            body = readers[tenant][0].get(f"/api/metrics/{metric}?{window}&by=server")
            assert same(body["servers"], by_server)

    # The operator's metric across every tenant's servers: brute force over both tenants;
    # by server, each series is a tenant's server.
    both = [(f"{t}|{s}", m, ts, v) for t in TENANTS for s, m, ts, v in data[t]]
    for metric in METRICS:
        across = truth(both, 5 * MINUTE, lambda s, m, metric=metric: "all" if m == metric else None)
        body = second.get(f"/api/metrics/{metric}?{window}&step=5m")
        assert body["tenant"] == "*" and same({"all": body["series"]}, across), metric
        by_server = truth(both, 5 * MINUTE, lambda s, m, metric=metric: s if m == metric else None)
        body = first.get(f"/api/metrics/{metric}?{window}&step=5m&by=server")
        assert same(body["servers"], by_server), metric

    # Final minutes: one record per (tenant, server, minute), each naming its tenant, equal
    # to brute force over that tenant's samples.
    expected = len(TENANTS) * len(SERVERS) * 30  # every server has samples in every minute
    consume(broker.bootstrap, "metric-rollups-1m", expect=expected, timeout=120)
    time.sleep(2)  # a minute emitted twice would have arrived by now
    emitted = consume(broker.bootstrap, "metric-rollups-1m", expect=expected + 1, timeout=5)
    assert len({r.key for r in emitted}) == len(emitted) == expected
    minutes_truth = {
        t: {
            (s, m, p["t"]): p
            for s in SERVERS
            for m, points in truth(data[t], MINUTE, lambda x, y, s=s: y if x == s else None).items()
            for p in points
        }
        for t in TENANTS
    }
    for record in emitted:
        value = json.loads(record.value)
        tenant, server = value["tenant"], value["server_id"]
        assert record.key == f"{tenant}|{server}|{value['minute_ms']}".encode()
        for metric, rollup in value["metrics"].items():
            want = minutes_truth[tenant][(server, metric, iso(value["minute_ms"]))]
            assert (rollup["min"], rollup["max"], rollup["count"]) == (
                want["min"],
                want["max"],
                want["count"],
            )
