"""Fixtures: a real local broker per test, worker processes with unique app ids and data dirs."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, load_schema, validate_metric_batch, validate_purchase
from tally.codecs.registry import FileSchemaRegistry
from tests.harness import ACCESS, Worker

# Modules importing tally.app in this process verify with (and never create) the test key.
os.environ.setdefault("TALLY_AUTH_KEY_FILE", str(ACCESS.key_file))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A fresh, empty local broker on a free port (memory-only: nothing leaks between tests)."""
    local = LocalBroker("127.0.0.1", free_port(), log_path=tmp_path / "broker.log").start()
    asyncio.run(
        ensure_topics(
            [local.bootstrap], ["purchases", "metric-samples"], partitions=4, replication=1
        )
    )
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return tmp_path / "schema-registry"


def codec_in(registry_dir: Path, subject: str, schema: str, validate=None) -> AvroCodec:  # type: ignore[no-untyped-def]
    return AvroCodec(FileSchemaRegistry(registry_dir), subject, load_schema(schema), validate)


@pytest.fixture
def purchase_codec(registry_dir: Path) -> AvroCodec:
    return codec_in(registry_dir, "purchases-value", "purchase", validate_purchase)


@pytest.fixture
def purchase_batch_codec(registry_dir: Path) -> AvroCodec:
    return codec_in(registry_dir, "tally.sales.PurchaseBatch", "purchase_batch")


@pytest.fixture
def metric_batch_codec(registry_dir: Path) -> AvroCodec:
    return codec_in(registry_dir, "metric-samples-value", "metric_batch", validate_metric_batch)


@pytest.fixture
def app_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def make_worker(
    broker: LocalBroker,
    tmp_path: Path,
    app_id: str,
    registry_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerFactory]:
    """Build workers (not started) sharing this test's broker, app id and registry."""
    workers: list[Worker] = []

    def factory(name: str = "w1", command: tuple[str, ...] | None = None, **env: str) -> Worker:
        worker = Worker(
            env={
                "TALLY_BROKER": broker.url,
                "TALLY_APP_ID": app_id,
                "TALLY_DATA_DIR": str(tmp_path / name),
                "TALLY_SCHEMA_REGISTRY": registry_dir.resolve().as_uri(),
                "TALLY_PARTITIONS": "4",
                "TALLY_STANDBY_REPLICAS": "0",
                **env,
            },
            log_path=tmp_path / f"{name}.log",
        )
        if command is not None:
            worker.command = command
        workers.append(worker)
        return worker

    yield factory
    failed = request.node.stash.get(FAILED, False)
    if failed:  # before any stops: a stop rebalances the others
        for worker in workers:
            print(f"--- health of {worker.log_path.stem}: {worker.health_summary()}")
    for worker in workers:
        worker.stop()
        if failed:
            print(f"--- log of {worker.log_path.name} ---\n{worker.tail(80, tables=False)}")


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report
