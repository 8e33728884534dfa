"""REST ingest through the real broker: accepted rows land once, every bad row is a dead letter
with its reason, a dead broker gives 503s, fuzzing finds no 5xx, and the tooling (agent, dlq)
works end to end."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tally.access.tokens import SCOPES
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter
from tests.conftest import WorkerFactory
from tests.harness import ACCESS, Worker, consume, headers_of, purchase_row, wait_until
from tests.strategies import mutated

ITEMS = [f"item-{n:02d}" for n in range(12)]


def letters_of(bootstrap: str, expect: int) -> list[tuple[Any, DeadLetter]]:
    records = consume(bootstrap, "dead-letters", expect=expect, timeout=30)
    return [(r, DeadLetter.from_headers(headers_of(r))) for r in records]


def ingested_purchases(bootstrap: str, codec: AvroCodec, expect: int) -> list[dict[str, Any]]:
    """Every purchase in the purchases topic (ingest writes PurchaseBatch envelopes)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(found) < expect and time.monotonic() < deadline:
        found = [
            purchase
            for record in consume(bootstrap, "purchases", expect=1, timeout=10)
            for purchase in codec.loads(record.value)["purchases"]
        ]
    return found


def test_accepted_rows_land_once_and_each_bad_row_is_a_dead_letter_with_its_reason(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_batch_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    worker = make_worker(TALLY_INGEST_MAX_BYTES="200000").start()
    wall = now_ms()
    rng = random.Random(5)
    good = [purchase_row(n, rng.choice(ITEMS), rng.randint(1, 4), wall - n) for n in range(300)]
    bad = {
        40: ({**good[0], "purchase_id": "b1", "item_id": None}, "wrong_type"),
        41: ({k: v for k, v in good[1].items() if k != "item_id"}, "missing_field"),
        42: ({**good[2], "quantity": "two"}, "wrong_type"),
        43: ({**good[3], "quantity": -2}, "out_of_range"),
        44: ({**good[4], "event_time_ms": wall // 1000}, "bad_time"),  # seconds, not ms
        45: ({**good[5], "event_time_ms": wall + 86_400_000}, "bad_time"),  # a day ahead
        46: ({**good[6], "qty": 1}, "unknown_field"),
        47: ("just a string", "not_object"),
    }
    rows: list[Any] = list(good)
    for index in sorted(bad):
        rows.insert(index, bad[index][0])
    status, answer, headers = worker.post("/api/ingest/purchases", json.dumps(rows).encode())
    assert status == 202, answer
    assert answer["accepted"] == len(good) and answer["rejected"] == len(bad)
    assert {r["index"]: r["rule"] for r in answer["rejections"]} == {
        i: rule for i, (_, rule) in bad.items()
    }
    assert all(r["reason"] for r in answer["rejections"])
    assert headers["X-Request-Id"] == answer["request_id"]

    # Metrics as gzip-compressed NDJSON: a NaN, a line that is not JSON, a wrong type.
    samples = [
        {"server_id": f"web-{s}", "metric_id": m, "ts_ms": wall - k * 100, "value": k + s}
        for s in range(3)
        for m in ("cpu", "mem")
        for k in range(10)
    ]
    lines = [json.dumps(x) for x in samples]
    lines[7:7] = [
        f'{{"server_id": "web-0", "metric_id": "cpu", "ts_ms": {wall}, "value": NaN}}',
        '{"server_id": "web-0", "metric_id": "cpu", "ts_ms": ',
        '{"server_id": "web-0", "metric_id": "cpu", "ts_ms": "now", "value": 1}',
    ]
    status, metrics_answer, _ = worker.post(
        "/api/ingest/metrics",
        gzip.compress("\n".join(lines).encode()),
        {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"},
    )
    assert status == 202, metrics_answer
    assert metrics_answer["accepted"] == len(samples)
    assert [(r["index"], r["rule"]) for r in metrics_answer["rejections"]] == [
        (7, "not_finite"),
        (8, "not_json"),
        (9, "wrong_type"),
    ]

    status, unreadable, _ = worker.post("/api/ingest/purchases", b"this is not json")
    assert status == 400 and unreadable["rule"] == "unreadable_body"
    assert "JSON" in unreadable["error"]
    status, too_large, _ = worker.post("/api/ingest/metrics", b"[" + b" " * 300_000 + b"]")
    assert status == 413 and "200,000 bytes" in too_large["error"]
    status, not_gzip, _ = worker.post(
        "/api/ingest/metrics", b"plain text", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "gzip" in not_gzip["error"]
    status, nested, _ = worker.post("/api/ingest/metrics", b"[" * 5000 + b"]" * 5000)
    assert status == 400 and nested["rule"] == "unreadable_body"
    status, missing, _ = worker.post("/api/ingest/orders", b"[]")
    assert status == 404 and "/api/ingest/purchases" in missing["error"]

    # Kafka holds each accepted row exactly once.
    landed = ingested_purchases(broker.bootstrap, purchase_batch_codec, len(good))
    assert sorted(p["purchase_id"] for p in landed) == sorted(p["purchase_id"] for p in good)
    batches = consume(broker.bootstrap, "metric-samples", expect=3, timeout=30)
    landed_samples = [
        (b["server_id"], s["metric_id"], s["ts_ms"], s["value"])
        for b in (metric_batch_codec.loads(r.value) for r in batches)
        for s in b["samples"]
    ]
    assert sorted(landed_samples) == sorted(
        (x["server_id"], x["metric_id"], x["ts_ms"], float(x["value"])) for x in samples
    )

    # Every rejected row and refused body is a dead letter: the row's bytes, rule, origin.
    expected_letters = len(bad) + 3 + 4  # rows, NDJSON rows, refused bodies
    letters = letters_of(broker.bootstrap, expected_letters)
    assert len(letters) == expected_letters
    by_request: dict[str, list[tuple[Any, DeadLetter]]] = {}
    for record, letter in letters:
        by_request.setdefault(letter.request.rsplit(" ", 1)[-1], []).append((record, letter))
    purchase_letters = by_request[answer["request_id"]]
    assert {letter.row: letter.rule for _, letter in purchase_letters} == {
        i: rule for i, (_, rule) in bad.items()
    }
    for record, letter in purchase_letters:
        assert json.loads(record.value) == bad[letter.row][0]
        assert letter.request.startswith("POST /api/ingest/purchases ")
        assert (letter.topic, letter.partition, letter.offset) == ("", -1, -1)
    metric_letters = {
        letter.row: record.value for record, letter in by_request[metrics_answer["request_id"]]
    }
    assert metric_letters[8] == lines[8].encode()  # the unreadable line, byte for byte
    (refused,) = by_request[unreadable["request_id"]]
    assert refused[0].value == b"this is not json" and refused[1].rule == "unreadable_body"
    (oversized,) = by_request[too_large["request_id"]]
    assert oversized[1].rule == "body_too_large" and "bytes are kept" in oversized[1].reason

    # The pipelines count what was accepted, equal to brute force.
    truth = Counter()
    for p in good:
        truth[p["item_id"]] += p["quantity"]
    for item in truth:
        wait_until(
            lambda item=item: worker.get(f"/api/sales/items/{item}")["quantity"] == truth[item],
            30,
            what=f"{item} totals {truth[item]}",
        )
    wait_until(
        lambda: (
            {m: v["count"] for m, v in worker.get("/api/servers/web-1/summary")["metrics"].items()}
            == {"cpu": 10, "mem": 10}
        ),
        30,
        what="web-1's 10 cpu and 10 mem samples rolled up",
    )

    stats = wait_until(
        lambda: (s := worker.get("/api/dead-letters/stats"))["total"] == expected_letters and s,
        30,
        what="dead-letter stats",
    )
    assert stats["by_rule"]["wrong_type"] == 3 and stats["by_rule"]["not_finite"] == 1
    assert stats["by_origin"]["POST /api/ingest/purchases"] == len(bad) + 1
    metrics = worker.text("/metrics")
    assert 'tally_ingest_rows_total{endpoint="purchases",outcome="accepted"} 300.0' in metrics
    assert 'tally_ingest_requests_total{endpoint="metrics",status="413"} 1.0' in metrics
    assert 'tally_dead_letters_total{destination="dead-letters",rule="bad_time"} 2.0' in metrics
    assert 'tally_consumer_lag{partition="0",topic="purchases"}' in metrics
    assert 'tally_table_keys{table="sales_panes"}' in metrics
    # Faust's message counts are published when scraped: the purchases the worker took show
    received = {
        sample.labels["topic"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "faust_messages_received_per_topic"
        for sample in family.samples
    }
    assert received.get("purchases", 0) > 0, received
    # a client polling one counter asks for it alone
    only = worker.text("/metrics?name[]=tally_ingest_rows_total&name[]=tally_events_total")
    assert 'tally_ingest_rows_total{endpoint="purchases",outcome="accepted"} 300.0' in only
    assert {f.name for f in text_string_to_metric_families(only)} == {
        "tally_ingest_rows",
        "tally_events",
    }

    def commit_flushes() -> float:
        """Flushes before commits, each timed (the benches time the put-off writes by them)."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(worker.text("/metrics"))
            for sample in family.samples
            if sample.name == "tally_write_out_seconds_count" and sample.labels["kind"] == "commit"
        )

    wait_until(lambda: commit_flushes() > 0, 15, what="a timed flush before a commit")
    assert worker.process is not None and worker.process.poll() is None


def test_the_ingest_tier_answers_503_while_the_broker_is_down_and_recovers(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    tier = make_worker("ingest", command=("ingest",), TALLY_INGEST_ACK_TIMEOUT_SECONDS="2").start()
    row = lambda n: json.dumps(purchase_row(n, "item-1", 1, now_ms())).encode()  # noqa: E731
    assert tier.post("/api/ingest/purchases", row(0))[0] == 202

    assert broker.process is not None
    broker.process.kill()  # SIGKILL: no goodbye to clients
    broker.stop()
    statuses = []
    for n in range(1, 6):
        started = time.monotonic()
        status, answer, headers = tier.post("/api/ingest/purchases", row(n))
        statuses.append(status)
        assert time.monotonic() - started < 10, "a 503 must come within the ack timeout"
        assert status == 503, answer
        assert headers["Retry-After"] == "5" and "retry" in answer["error"]
    assert tier.get_status("/api/health")[0] == 503
    assert tier.process is not None and tier.process.poll() is None

    broker.start()  # the same address, a new (empty) cluster
    wait_until(lambda: tier.post("/api/ingest/purchases", row(99))[0] == 202, 60, what="202 again")
    assert tier.get_status("/api/health")[0] == 200


def test_tally_agent_posts_batches_that_the_worker_rolls_up(
    make_worker: WorkerFactory,
) -> None:
    worker = make_worker().start()
    done = subprocess.run(
        [
            sys.executable, "-m", "tally", "agent",
            "--servers", "4", "--metrics", "2", "--interval", "1s", "--resolution", "250ms",
            "--rounds", "3", "--url", worker.url,
            "--token", ACCESS.token("default", ["ingest"]),  # a producer's: ingest only
        ],
        capture_output=True, text=True, timeout=120, env=worker_env(worker),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "failed 0" in done.stdout and "rejected rows 0" in done.stdout
    sent = int(done.stdout.rsplit("batches (", 1)[1].split(" samples")[0].replace(",", ""))
    assert sent >= 4 * 2 * 3 * 4  # 4 servers, 2 metrics, 3 posts of ~4 samples each

    def counted() -> int:
        return sum(
            point["count"]
            for n in range(4)
            for point in worker.get(f"/api/servers/server-{n:04d}/summary")["metrics"].values()
        )

    wait_until(lambda: counted() == sent, 30, what=f"{sent} samples rolled up")


def worker_env(worker: Worker) -> dict[str, str]:
    return {**os.environ, **worker.env}


def test_fuzzing_finds_no_5xx_and_every_rejected_row_is_accounted_for(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    worker = make_worker().start()
    wall = now_ms()
    base_purchase = purchase_row(0, "item-1", 1, wall)
    base_sample = {"server_id": "web-1", "metric_id": "cpu", "ts_ms": wall, "value": 1.5}
    seen: dict[str, Counter[str]] = {"accepted": Counter(), "rejected": Counter()}
    request_ids: set[str] = set()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        endpoint=st.sampled_from(["purchases", "metrics"]),
        data=st.data(),
        form=st.sampled_from(["array", "ndjson", "garbage"]),
    )
    def post_fuzzed(endpoint: str, data: st.DataObject, form: str) -> None:
        base = base_purchase if endpoint == "purchases" else base_sample
        rows = data.draw(st.lists(mutated(base), max_size=6))
        if form == "array":
            body = json.dumps(rows).encode()
        elif form == "ndjson":
            body = "\n".join(json.dumps(r) for r in rows).encode()
        else:
            body = data.draw(st.binary(max_size=64))
        headers = {"Content-Type": "application/x-ndjson"} if form == "ndjson" else {}
        status, answer, _ = worker.post(f"/api/ingest/{endpoint}", body, headers)
        assert status < 500, (status, answer, body)
        assert status in (202, 400), (status, answer)
        request_ids.add(answer["request_id"])
        if form != "garbage":  # every row is counted once, accepted or rejected
            assert status == (400 if form == "ndjson" and not rows else 202), answer
        if status == 202:
            assert form == "garbage" or answer["accepted"] + answer["rejected"] == len(rows)
            seen["accepted"][endpoint] += answer["accepted"]
            seen["rejected"][endpoint] += answer["rejected"]
        else:
            seen["rejected"]["whole bodies"] += 1

    post_fuzzed()
    rejected = sum(seen["rejected"].values())
    letters = letters_of(broker.bootstrap, rejected) if rejected else []
    assert len(letters) == rejected, "every rejected row or body must be a dead letter"
    assert {letter.request.rsplit(" ", 1)[-1] for _, letter in letters} <= request_ids

    # An operator's token and a tenant's (with every scope: its reads and writes of its own
    # tenant, and refusals of other tenants' and of operator-only views): no 5xx.
    for token in (worker.token, ACCESS.token("acme", SCOPES)):
        schemathesis = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", worker.url + "/api/openapi.json",
                "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "7",
                "--request-timeout", "30", "--no-color",
                # A live stream does not end while the client listens (test_live_e2e has them).
                "--exclude-path-regex", "^/api/stream/",
                "--header", f"Authorization: Bearer {token}",
            ],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert schemathesis.returncode == 0, schemathesis.stdout[-6000:]
        assert " 0 generated" not in schemathesis.stdout
    assert worker.process is not None and worker.process.poll() is None, "worker died"
    assert worker.get_status("/api/health")[0] == 200


def tally(worker: Worker, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_env(worker),
    )


def test_tally_dlq_lists_shows_and_replays_a_fixed_row(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_batch_codec: AvroCodec, tmp_path: Path
) -> None:
    worker = make_worker().start()
    wall = now_ms()
    bad = purchase_row(1, "item-7", -3, wall)
    status, answer, _ = worker.post("/api/ingest/purchases", json.dumps([bad]).encode())
    assert status == 202 and answer["rejected"] == 1
    letters_of(broker.bootstrap, 1)

    listed = tally(worker, "dlq", "list", "--json", "--request", answer["request_id"])
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["rule"] == "out_of_range" and "quantity must be > 0" in entry["reason"]
    assert entry["origin"].endswith(f"{answer['request_id']} row 0")

    shown = tally(worker, "dlq", "show", entry["id"])
    assert shown.returncode == 0, shown.stderr
    assert "out_of_range" in shown.stdout and '"quantity": -3' in shown.stdout
    raw = tally(worker, "dlq", "show", entry["id"], "--raw")
    assert json.loads(raw.stdout) == bad

    missing = tally(worker, "dlq", "show", "3:999")
    assert missing.returncode == 1 and "no dead letter 3:999" in missing.stderr
    assert "Traceback" not in missing.stderr

    again = tally(worker, "dlq", "replay", entry["id"])  # unchanged: rejected again
    assert again.returncode == 0 and "rejected again" in again.stdout, again.stdout
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({**bad, "quantity": 3}))
    replayed = tally(worker, "dlq", "replay", entry["id"], "--value", str(fixed))
    assert replayed.returncode == 0 and "accepted" in replayed.stdout, replayed.stdout
    landed = ingested_purchases(broker.bootstrap, purchase_batch_codec, 1)
    assert [(p["purchase_id"], p["quantity"]) for p in landed] == [("p1", 3)]
    wait_until(lambda: worker.get("/api/sales/items/item-7")["quantity"] == 3, 30, what="3 counted")
    # The first replay's rejection is a new letter naming the replay.
    relisted = json.loads(tally(worker, "dlq", "list", "--json").stdout)
    assert [e["origin"].split(" ")[2] for e in relisted] == [
        answer["request_id"],
        f"replay-{entry['id']}",
    ]
