"""One schema registry for a whole deployment, kept on the broker: `TALLY_SCHEMA_REGISTRY=topic:`.

Every change (register, delete, set a level) is a record on one single-partition topic
(`<TALLY_APP_ID>-schemas`, kept forever), and every process (workers on any host, `tally
feed`, the ingest tier) applies the records in log order to a view of its own: a
`FileSchemaRegistry` in a private directory, rebuilt from the log at start. The rules are
deterministic (the same Avro checker everywhere), so every view agrees on every subject,
version and level, and the log decides between two registrations racing on one subject: the
one written first is version N, the other is checked against it. No leader, no election: a
process that changes something writes its record and waits until its own view has applied
it, and answers with what applying it gave (an id, a refusal).

Reads are served from the local view. What the view does not hold yet (a schema id, subject
or version another process has just registered) is looked for again after the view has read
the log to its end; an answer "not found" stays fresh for `FRESH_S` (a message naming a made-up
schema id costs one wait, not one per message).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tally.broker.admin import ensure_topics
from tally.codecs.compatibility import Level
from tally.codecs.registry import (
    FileSchemaRegistry,
    RegistryError,
    Schema,
    Version,
    schema_text,
)
from tally.core.errors import SchemaError

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: How long a change may take to be written and read back before the caller is told.
TIMEOUT_S = 15.0
#: How long "the view holds everything the log had" stays true after it was checked.
FRESH_S = 5.0
#: The consumer's wait on a Fetch with nothing new (also how stale a read may be).
FETCH_WAIT_MS = 100


class LogSchemaRegistry(FileSchemaRegistry):
    """The registry of a deployment, on one topic of its broker (see the module's doc)."""

    def __init__(
        self, bootstrap: list[str], topic: str, replication: int = 1, timeout: float = TIMEOUT_S
    ) -> None:
        self.bootstrap, self.topic, self.timeout = bootstrap, topic, timeout
        self.replication = replication
        self._view_dir = Path(tempfile.mkdtemp(prefix="tally-registry-view-"))
        atexit.register(shutil.rmtree, self._view_dir, True)
        super().__init__(self._view_dir)
        self._outcomes: dict[str, tuple[bool, Any]] = {}
        self._applied = threading.Condition()
        self._cycles = 0  # Fetch rounds completed by the reader
        self._offset = -1  # the last record applied
        self._fresh = (-2, 0.0)  # (offset, monotonic time) the view was last known complete at
        self._failure: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._producer: AIOKafkaProducer | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"registry-log:{topic}", daemon=True
        )
        self._thread.start()
        if not ready.wait(self.timeout) or self._failure is not None:
            raise SchemaError(
                f"the schema registry on topic {topic!r} ({', '.join(bootstrap)}) cannot be "
                f"read: {self._failure or 'no answer in time'}"
            )

    # --- the reader: applies the log to the view ---------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._follow(ready))
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:  # closed
            pass
        except Exception as exc:  # the registry is unusable: every caller is told why
            self._failure = exc
            logger.exception("schema registry log reader stopped")
        finally:
            ready.set()
            with self._applied:
                self._applied.notify_all()

    async def _follow(self, ready: threading.Event) -> None:
        # One partition (one order for every change), kept forever.
        await ensure_topics(
            self.bootstrap,
            [self.topic],
            partitions=1,
            replication=self.replication,
            configs={"retention.ms": "-1", "retention.bytes": "-1"},
        )
        self._producer = producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        await consumer.start()
        try:
            partition = TopicPartition(self.topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            while True:
                batches = await consumer.getmany(partition, timeout_ms=FETCH_WAIT_MS)
                for record in batches.get(partition, []):
                    self._apply(record.offset, record.value)
                highwater = consumer.highwater(partition)
                with self._applied:
                    self._cycles += 1
                    self._applied.notify_all()
                if highwater is not None and self._offset + 1 >= highwater:
                    ready.set()  # the view holds the log as it was at start
        finally:
            await consumer.stop()
            await producer.stop()

    def _apply(self, offset: int, value: bytes | None) -> None:
        """One change, as every process applies it; its outcome kept for its writer."""
        change: Any = {}
        try:
            change = json.loads(value or b"{}")
            result = self._change(change)
            outcome: tuple[bool, Any] = (True, result)
        except RegistryError as exc:
            outcome = (False, exc)
        except Exception as exc:  # a record this version cannot read: skipped, everywhere
            logger.warning("schema registry record %s skipped: %r", offset, exc)
            outcome = (False, SchemaError(f"registry record {offset} unreadable: {exc}"))
        with self._applied:
            self._offset = offset
            nonce = change.get("nonce") if isinstance(change, dict) else None
            if nonce in self._outcomes:
                self._outcomes[nonce] = outcome
            self._applied.notify_all()

    def _change(self, change: dict[str, Any]) -> Any:
        op, subject = change["op"], change.get("subject", "")
        if op == "register":
            return super().register(subject, change["schema"])
        if op == "delete_subject":
            return super().delete_subject(subject, change["permanent"])
        if op == "delete_version":
            return super().delete_version(subject, change["version"], change["permanent"])
        if op == "set_level":
            level = change["level"]
            return super().set_level(subject, None if level is None else Level(level))
        raise ValueError(f"unknown change {op!r}")

    # --- changes: written to the log, answered once applied -----------------------------

    def _submit(self, change: dict[str, Any]) -> Any:
        if self._failure is not None:
            raise SchemaError(
                f"the schema registry on topic {self.topic!r} failed: {self._failure}"
            )
        nonce = uuid.uuid4().hex
        value = json.dumps({**change, "nonce": nonce}).encode()
        with self._applied:
            self._outcomes[nonce] = (False, None)
        try:
            assert self._producer is not None
            send = self._producer.send_and_wait(self.topic, value, key=b"registry", partition=0)
            asyncio.run_coroutine_threadsafe(send, self._loop).result(self.timeout)
            deadline = time.monotonic() + self.timeout
            with self._applied:
                while self._outcomes[nonce] == (False, None):
                    left = deadline - time.monotonic()
                    if left <= 0 or self._failure is not None:
                        raise SchemaError(
                            f"the schema registry on topic {self.topic!r} did not apply a change "
                            f"within {self.timeout:.0f} s"
                        )
                    self._applied.wait(left)
                ok, result = self._outcomes[nonce]
        except TimeoutError:
            raise SchemaError(
                f"the schema registry on topic {self.topic!r} could not write within "
                f"{self.timeout:.0f} s (is the broker up?)"
            ) from None
        finally:
            with self._applied:
                self._outcomes.pop(nonce, None)
        if not ok:
            raise result
        return result

    def register(self, subject: str, schema: Schema | str) -> int:
        text = schema_text(schema)  # an invalid schema is refused here, not logged
        try:
            return self.lookup(subject, text).id  # (looked for again after catching up)
        except RegistryError as exc:
            if exc.status != 404:
                raise
        schema_id: int = self._submit({"op": "register", "subject": subject, "schema": text})
        return schema_id

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        versions: list[int] = self._submit(
            {"op": "delete_subject", "subject": subject, "permanent": permanent}
        )
        return versions

    def delete_version(self, subject: str, number: int | None, permanent: bool = False) -> int:
        version: int = self._submit(
            {"op": "delete_version", "subject": subject, "version": number, "permanent": permanent}
        )
        return version

    def set_level(self, subject: str | None, level: Level | None) -> None:
        level_name = None if level is None else level.value
        self._submit({"op": "set_level", "subject": subject, "level": level_name})

    # --- reads: from the view, looked for again after catching up -----------------------

    def _catch_up(self) -> bool:
        """Wait until the view holds what the log held when this was called (two Fetch rounds
        later); False if it was known to already and nothing came since."""
        with self._applied:
            offset, at = self._fresh
            if offset == self._offset and time.monotonic() - at < FRESH_S:
                return False
            target = self._cycles + 2
            deadline = time.monotonic() + self.timeout
            while self._cycles < target and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._applied.wait(left)
            self._fresh = (self._offset, time.monotonic())
        return True

    def _or_again(self, read: Callable[[], R]) -> R:
        """`read()`; if it finds nothing, once more after catching up (then its error)."""
        try:
            return read()
        except RegistryError as exc:
            if exc.status != 404 or not self._catch_up():
                raise
        return read()

    def schema_text(self, schema_id: int) -> str:
        return self._or_again(lambda: FileSchemaRegistry.schema_text(self, schema_id))

    def lookup(self, subject: str, schema: Schema | str, deleted: bool = False) -> Version:
        return self._or_again(lambda: FileSchemaRegistry.lookup(self, subject, schema, deleted))

    def versions(self, subject: str, deleted: bool = False) -> list[Version]:
        return self._or_again(lambda: FileSchemaRegistry.versions(self, subject, deleted))

    def version(self, subject: str, number: int | None, deleted: bool = False) -> Version:
        return self._or_again(lambda: FileSchemaRegistry.version(self, subject, number, deleted))

    def close(self) -> None:
        """Stop following the log and remove the view."""
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        shutil.rmtree(self._view_dir, ignore_errors=True)
