"""Real processes for the tests: a worker subprocess, and plain Kafka produce/consume helpers."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata

from tally.access.tokens import OPERATOR, SCOPES, issue, signing_key
from tally.access.tokens import authorization as bearer
from tally.broker.admin import end_offsets
from tally.broker.local import die_with_parent, free_port


class TestAccess:
    """One signing key per test process (every worker it starts verifies with it) and tokens
    signed with it; the harness's requests carry an operator token with every scope."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tally-test-auth-"))
        atexit.register(shutil.rmtree, self.directory, ignore_errors=True)
        self.key_file = self.directory / "signing-key.jwk"
        key = signing_key(self.key_file, create=True)
        assert key is not None
        self.key = key
        self.operator_token = self.token(OPERATOR, SCOPES)

    def token(self, tenant: str, scopes: Iterable[str], lifetime_s: float = 86_400.0) -> str:
        return issue(self.key, f"test-{tenant}", tenant, frozenset(scopes), lifetime_s)[0]


ACCESS = TestAccess()


@dataclass
class Worker:
    """`tally worker` (or another serving command, e.g. `tally ingest`) as a child process
    with its own data dir and web port."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    command: tuple[str, ...] = ("worker", "--loglevel", "info")
    #: The token its requests carry (unless a request names its own Authorization).
    token: str = ACCESS.operator_token
    #: The tree whose `tally` runs (default: this checkout's; bench.reads_against runs
    #: another commit's): `python -m` finds the working directory's first.
    cwd: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 90.0) -> Worker:
        env = {
            **os.environ,
            "TALLY_AUTH_KEY_FILE": str(ACCESS.key_file),
            **self.env,
            "TALLY_WEB_PORT": str(self.port),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tally", *self.command],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                cwd=self.cwd,
            )
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode}:\n{self.tail()}"
                )
            try:
                if self.get_status("/api/health")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.tail()}")

    def request(
        self, path: str, headers: Mapping[str, str] | None = None, **options: Any
    ) -> urllib.request.Request:
        """A request to this worker carrying its token (unless `headers` name another)."""
        given = dict(headers or {})
        if self.token and not any(name.lower() == "authorization" for name in given):
            given.update(bearer(self.token))
        return urllib.request.Request(self.url + path, headers=given, **options)

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.request(path), timeout=timeout) as response:
            return json.loads(response.read())

    def text(self, path: str) -> str:
        with urllib.request.urlopen(self.request(path), timeout=10) as response:
            return response.read().decode()

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any, Mapping[str, str]]:
        """(status, JSON answer, headers) of a POST (JSON unless `headers` say otherwise);
        HTTP errors are answers too."""
        request = self.request(
            path,
            {"Content-Type": "application/json", **(headers or {})},
            data=body,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)

    def fetch(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of a GET as it came; HTTP errors (and 304s) are answers."""
        request = self.request(path, headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def get_status(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.request(path), timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40, tables: bool = True) -> str:
        """The log's last `lines`; without Faust's tables of partitions and offsets if not
        `tables` (a failed test's report is cut short: the lines that say what happened first)."""
        kept = [
            line
            for line in self.log().splitlines()
            if tables or not line.startswith(("|", "+", "〃"))
        ]
        return "\n".join(kept[-lines:])

    def health_summary(self) -> str:
        """Status, lag and stalled partitions from `/api/health`, or why there is none."""
        try:
            with urllib.request.urlopen(self.url + "/api/health", timeout=5) as response:
                health = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503 while starting: the body says why
            health = json.loads(exc.read())
        except (OSError, ValueError) as exc:
            return f"no answer ({exc!r})"
        keys = ("status", "reason", "group_generation", "lag", "stalled")
        summary = {key: health[key] for key in keys if key in health}
        sources: dict[str, list[int]] = {}
        for tp in health.get("active", []):
            topic, _, partition = tp.rstrip("]").rpartition("[")
            if not topic.endswith("-changelog"):
                sources.setdefault(topic, []).append(int(partition))
        return json.dumps({**summary, "sources": sources})


def start_all(*workers: Worker, timeout: float = 90.0) -> tuple[Worker, ...]:
    """Start workers one after another, then wait until every one is ready again: each join
    rebalances the group, and a worker answers 503 while that is under way."""
    for worker in workers:
        worker.start(timeout)
    for worker in workers:
        worker.wait_ready(timeout)
    return workers


class Verdict:
    """Truthy when a view equals brute force; otherwise its repr names the first difference, so
    a timed-out `wait_until` says what was wrong, not just `False`."""

    def __init__(self, difference: str | None = None) -> None:
        self.difference = difference

    def __bool__(self) -> bool:
        return self.difference is None

    def __repr__(self) -> str:
        return self.difference or "equal"


def wait_until(predicate: Any, timeout: float, interval: float = 0.3, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


#: (key, value), or (key, value, partition): a message to produce.
Produced = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int | None]


async def _produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[Produced],
    headers: list[tuple[str, bytes]] | None = None,
) -> list[RecordMetadata]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, m[1], key=m[0], partition=m[2] if len(m) > 2 else None, headers=headers
            )
            for m in messages
        ]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[Produced],
    headers: list[tuple[str, bytes]] | None = None,
) -> list[RecordMetadata]:
    """Send and wait for the acks; returns where each message landed (partition, offset).
    Keyed messages go where Kafka's default partitioner (murmur2) puts them, unless the
    message names its partition; every message carries `headers`."""
    return asyncio.run(_produce(bootstrap, topic, list(messages), headers))


async def _consume(bootstrap: str, topic: str, expect: int, timeout: float) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


def consume(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning, waiting until `expect` have arrived."""
    return asyncio.run(_consume(bootstrap, topic, expect, timeout))


@asynccontextmanager
async def group_partitions(
    bootstrap: str, group: str, topics: list[str]
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A consumer of `group` that joins nothing, and every partition of `topics`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        yield (
            consumer,
            [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ],
        )
    finally:
        await consumer.stop()


async def _rewind(bootstrap: str, group: str, topics: list[str]) -> None:
    async with group_partitions(bootstrap, group, topics) as (consumer, tps):
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})


def rewind(bootstrap: str, group: str, topics: list[str]) -> None:
    """Commit offset 0 for the group on every partition of `topics`: all comes again."""
    asyncio.run(_rewind(bootstrap, group, topics))


async def _uncommitted(bootstrap: str, group: str, topics: list[str]) -> int:
    async with group_partitions(bootstrap, group, topics) as (consumer, tps):
        ends = await end_offsets(consumer, tps)  # the local broker's ListOffsets is off
        behind = 0
        for tp in tps:
            behind += max(0, ends[tp] - (await consumer.committed(tp) or 0))
        return behind


def uncommitted(bootstrap: str, group: str, topics: list[str]) -> int:
    """Messages of `topics` the group has not committed: what a rebalance would deliver again
    (0: a worker paused or stopped now reads nothing twice)."""
    return asyncio.run(_uncommitted(bootstrap, group, topics))


def purchase_row(n: int, item: str, quantity: int, at_ms: int) -> dict[str, Any]:
    """An ingest row (the Purchase schema's fields) with id `p<n>`."""
    return {
        "purchase_id": f"p{n}",
        "item_id": item,
        "quantity": quantity,
        "unit_price_cents": 250,
        "event_time_ms": at_ms,
    }


def purchase_record(purchase_id: str, item: str, at_ms: int, quantity: int = 1) -> dict[str, Any]:
    """A Purchase as producers send it (Avro): an ingest row with its metadata."""
    return {**purchase_row(0, item, quantity, at_ms), "purchase_id": purchase_id, "metadata": {}}


def headers_of(record: ConsumerRecord) -> Mapping[str, bytes]:
    return dict(record.headers or ())


def events_total(worker: Worker, topic: str, outcome: str) -> float:
    """The worker's tally_events_total of `topic`'s events with `outcome` (0: none yet)."""
    return sample_value(worker, "tally_events_total", outcome=outcome, topic=topic)


def sample_value(worker: Worker, sample: str, **labels: str) -> float:
    """A sample of the worker's /metrics with these labels, in prometheus_client's order
    (sorted by name; 0: none yet)."""
    named = ",".join(f'{name}="{value}"' for name, value in sorted(labels.items()))
    for line in worker.text(f"/metrics?name[]={sample}").splitlines():
        if line.startswith(f"{sample}{{{named}}} "):
            return float(line.split()[-1])
    return 0.0


@dataclass
class ServerSentEvent:
    id: str
    event: str
    data: Any


class EventStream:
    """A plain SSE client over http.client: `next()` returns the next event (comments and the
    `retry` field skipped), or raises TimeoutError."""

    def __init__(
        self,
        url: str,
        path: str,
        last_event_id: str = "",
        timeout: float = 10.0,
        token: str = ACCESS.operator_token,
    ):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        headers = {"Accept": "text/event-stream", **(bearer(token) if token else {})}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type", "")

    def next(self, timeout: float = 10.0) -> ServerSentEvent:
        if self.connection.sock is None or self.response.fp is None:
            raise ConnectionError("the stream is closed")
        self.connection.sock.settimeout(timeout)
        fields: dict[str, str] = {}
        while True:
            try:
                raw = self.response.fp.readline()
            except OSError as exc:  # socket.timeout is a TimeoutError (an OSError)
                raise TimeoutError(f"no event within {timeout} s") from exc
            if not raw:
                raise ConnectionError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if "event" in fields or "data" in fields:
                    return ServerSentEvent(
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        json.loads(fields.get("data", "null")),
                    )
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    def until(
        self, predicate: Any, timeout: float, what: str = ""
    ) -> tuple[ServerSentEvent, list[ServerSentEvent]]:
        """Read until an event satisfies `predicate`; returns it and every event read."""
        deadline = time.monotonic() + timeout
        seen: list[ServerSentEvent] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                last = [(e.event, e.data) for e in seen[-5:]]
                raise AssertionError(f"no event {what} within {timeout} s; last: {last}")
            try:
                event = self.next(left)
            except TimeoutError:
                continue
            seen.append(event)
            if predicate(event):
                return event, seen

    def close(self) -> None:
        self.connection.close()


async def serve(application: web.Application) -> tuple[web.AppRunner, str]:
    """`application` served on a free port of 127.0.0.1; its runner and base URL."""
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def raw_exchange(url: str, request: bytes, read_timeout: float) -> tuple[bytes, float]:
    """Send raw bytes to the server at `url`, read until it closes or `read_timeout` passes
    without a byte; returns what came back and how long the connection stayed open."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        sock.settimeout(read_timeout)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received, time.monotonic() - started


@contextmanager
def cpu_hog() -> Iterator[subprocess.Popen[bytes]]:
    """A process spinning on one core while the block runs: a busy machine (the role of
    `stress-ng --cpu 1`, which is not installed here)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=die_with_parent
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()
