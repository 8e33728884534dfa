"""The commands a new user runs: `tally dev` (the main job) and `tally feed`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tally.broker.local import LocalBroker, free_port, port_accepts
from tally.codecs.avro import AvroCodec
from tests.conftest import codec_in
from tests.harness import EventStream, Worker, consume, headers_of, wait_until


def test_dev_runs_broker_worker_and_feed_then_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    broker_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "TALLY_BROKER": f"tansu://127.0.0.1:{broker_port}",
        "TALLY_WEB_PORT": str(web_port),
        "TALLY_DATA_DIR": str(tmp_path / "data"),
    }
    output = tmp_path / "dev.out"
    with output.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "tally", "dev", "--sales-rate", "200"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: "Ctrl-C stops everything" in output.read_text(),
            120,
            what=f"the dev banner; output so far in {output}",
        )
        text = output.read_text()
        assert f"dashboard        http://127.0.0.1:{web_port}/#token=" in text
        # A dashboard link per demo tenant, with a read token of that tenant.
        tenant_tokens = dict(re.findall(r"tenant (\w+) +http://\S+/#token=(\S+)", text))
        assert sorted(tenant_tokens) == ["acme", "globex"], text
        probe = Worker(env={}, log_path=tmp_path / "unused.log", port=web_port)
        assert probe.get("/")["service"] == "tally"
        page = urllib.request.Request(probe.url + "/", headers={"Accept": "text/html"})
        with urllib.request.urlopen(page, timeout=10) as response:
            assert b"/static/dashboard.js" in response.read()
        health = probe.get("/api/health")
        assert health["status"] == "ready"
        # The feed is flowing into the pipeline, both tenants': each tenant's best-selling
        # item gets counted, and each tenant's own token sees its own top-10 only.
        for tenant, token in tenant_tokens.items():
            reader = Worker(env={}, log_path=tmp_path / "unused.log", port=web_port, token=token)
            wait_until(
                lambda r=reader: r.get("/api/sales/items/item-00000")["quantity"] > 0,
                60,
                what=f"the sample feed counted for {tenant}",
            )
            top = wait_until(
                lambda r=reader: (a := r.get("/api/sales/top"))["items"] and a,
                30,
                what=f"{tenant}'s top-10",
            )
            assert top["tenant"] == tenant, top
            assert {item["tenant"] for item in top["items"]} == {tenant}
            assert reader.get("/api/servers/server-0000/summary")["tenant"] == tenant
            posts = wait_until(
                lambda r=reader: (
                    (a := r.get("/api/social/summary"))["totals"]["all"]["posts"] and a
                ),
                60,
                what=f"{tenant}'s social posts summed up",
            )
            assert posts["brand"] == tenant
            # The demo campaign pushes coupons to the feed's shoppers, who redeem some.
            wait_until(
                lambda r=reader: any(
                    c["redeemed"] for c in r.get("/api/coupons/campaigns")["campaigns"]
                ),
                90,
                what=f"{tenant}'s demo campaign's coupons redeemed",
            )
        # The orders of the feed are decided (by the default model, published at start).
        wait_until(
            lambda: 'tally_fraud_decisions_total{by="model"' in probe.text("/metrics"),
            60,
            what="the feed's orders decided",
        )
        # ... and shown live: the dashboard's stream has it.
        stream = EventStream(probe.url, "/api/stream/sales/top")
        shown, _ = stream.until(lambda e: len(e.data["items"]) > 0, 30, "items in the top-K")
        stream.close()
        assert shown.data["state"] == "provisional" and shown.data["tenant"] == "*"
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(60)
    assert code == 0, output.read_text()[-3000:]
    assert "stopped: feed, worker, broker" in output.read_text()
    assert not port_accepts("127.0.0.1", broker_port), "broker still running after Ctrl-C"
    assert not port_accepts("127.0.0.1", web_port), "worker still running after Ctrl-C"


def test_feed_creates_its_topic_with_the_configured_partitions_and_sends_count(
    tmp_path: Path, purchase_codec: AvroCodec
) -> None:
    with LocalBroker("127.0.0.1", free_port(), log_path=tmp_path / "broker.log") as broker:
        env = {
            **os.environ,
            "TALLY_BROKER": broker.url,
            "TALLY_PARTITIONS": "6",
            "TALLY_DATA_DIR": str(tmp_path / "feed"),
            "TALLY_SCHEMA_REGISTRY": (tmp_path / "schema-registry").resolve().as_uri(),
        }
        command = [sys.executable, "-m", "tally", "feed", "sales", "--rate", "0", "--count", "500"]
        tenants = ["--tenant", "acme", "--tenant", "globex"]
        result = subprocess.run(
            [*command, "--seed", "3", *tenants],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "sent 500" in result.stdout
        records = consume(broker.bootstrap, "purchases", expect=500)
    assert len(records) == 500
    decoded = [purchase_codec.loads(r.value) for r in records]
    assert all(r.key == d["item_id"].encode() for r, d in zip(records, decoded, strict=True))
    assert {r.partition for r in records} == set(range(6))
    by_tenant = {t: sum(d["tenant"] == t for d in decoded) for t in ("acme", "globex")}
    assert by_tenant == {"acme": 250, "globex": 250}


def test_feed_sends_social_posts_in_each_networks_format(tmp_path: Path) -> None:
    with LocalBroker("127.0.0.1", free_port(), log_path=tmp_path / "broker.log") as broker:
        env = {**os.environ, "TALLY_BROKER": broker.url, "TALLY_DATA_DIR": str(tmp_path / "f")}
        command = [sys.executable, "-m", "tally", "feed", "social", "--rate", "0", "--count", "40"]
        result = subprocess.run(
            [*command, "--tenant", "acme"], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "sent 40 messages to social-raw" in result.stdout
        records = consume(broker.bootstrap, "social-raw", expect=40)
    assert {r.key for r in records} == {b"acme"}
    channels = Counter(headers_of(r)["tally.channel"] for r in records)
    assert channels == {b"x": 20, b"mastodon": 20}
    assert all(json.loads(r.value) for r in records)


def test_feed_sends_orders_and_a_bad_model_file_is_refused_with_why(
    tmp_path: Path, registry_dir: Path
) -> None:
    with LocalBroker("127.0.0.1", free_port(), log_path=tmp_path / "broker.log") as broker:
        env = {
            **os.environ,
            "TALLY_BROKER": broker.url,
            "TALLY_DATA_DIR": str(tmp_path / "f"),
            "TALLY_SCHEMA_REGISTRY": registry_dir.resolve().as_uri(),
        }
        command = [sys.executable, "-m", "tally", "feed", "fraud", "--rate", "0", "--count", "30"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "sent 30 messages to orders" in result.stdout
        records = consume(broker.bootstrap, "orders", expect=30)
        codec = codec_in(registry_dir, "orders-value", "order")
        placed = [codec.loads(r.value) for r in records]
        assert all(r.key == o["customer_id"].encode() for r, o in zip(records, placed, strict=True))
        model = tmp_path / "model.json"
        model.write_text(json.dumps({"format": "tally-fraud-model/1", "version": "v9"}))
        publish = [sys.executable, "-m", "tally", "fraud", "publish-model", str(model)]
        refused = subprocess.run(publish, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "model without a usable 'features'" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("TALLY_PARTITIONS", "zero", "must be a whole number"),
        # (read before Faust is imported, to choose its event loop)
        ("TALLY_EVENT_LOOP", "tokio", "must be one of uvloop, asyncio"),
    ],
)
def test_bad_setting_is_a_clear_error(variable: str, value: str, why: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tally", "feed", "sales"],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"tally: {variable}={value!r}: {why}"


def test_no_broker_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tally", "feed", "sales", "--count", "5"],
        env={**os.environ, "TALLY_BROKER": f"tansu://127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no broker answers" in result.stderr and "tally broker" in result.stderr
    assert "Traceback" not in result.stderr


def event_loop_module(**env: str) -> str:
    """The module of the event loop a `tally` process gets with `env`: chosen as its main()
    chooses, then set up by importing Faust."""
    probe = (
        "import asyncio, tally.__main__ as cli; cli.choose_event_loop(); import faust; "
        "print(type(asyncio.new_event_loop()).__module__)"
    )
    chosen_elsewhere = ("FAUST_LOOP", "F_LOOP", "TALLY_EVENT_LOOP")
    inherited = {k: v for k, v in os.environ.items() if k not in chosen_elsewhere}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_processes_run_on_uvloop_unless_the_setting_or_faust_loop_says_otherwise() -> None:
    assert event_loop_module() == "uvloop"
    assert event_loop_module(TALLY_EVENT_LOOP="asyncio").startswith("asyncio.")
    assert event_loop_module(TALLY_EVENT_LOOP="uvloop", FAUST_LOOP="aio").startswith("asyncio.")
