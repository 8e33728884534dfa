"""Faust's Table, refusing a record too large for its changelog before anything is written.

Faust writes a table record to RocksDB and hands its changelog record to the producer buffer,
which sends it later; a record the producer refuses there (too large) crashes the worker, and
after a restart the same event crashes it again. Here the record is serialized once, checked,
and handed over already serialized: an oversized record raises `RecordTooLarge` inside the
agent, which dead-letters the event that caused it (`agents.intake`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import CodecArg, FutureMessage

from tally.core.limits import check_record_size

#: Called with a table before it stops and closes its databases (runtime.cells writes out
#: what it holds for the table).
before_stop: list[Callable[[faust.Table], Awaitable[None]]] = []


class BoundedTable(faust.Table):
    async def on_stop(self) -> None:
        for hook in before_stop:
            await hook(self)
        await super().on_stop()

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: CodecArg | None = None,
        value_serializer: CodecArg | None = None,
    ) -> FutureMessage:
        if value is None:  # a deletion: a tombstone
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        topic = self.changelog_topic
        key_bytes, _ = topic.prepare_key(key, key_serializer or self.key_serializer)
        value_bytes, _ = topic.prepare_value(value, value_serializer or self.value_serializer)
        check_record_size(f"table {self.name} record {str(key)[:80]}", key_bytes, value_bytes)
        return self.send_encoded(partition, key_bytes, value_bytes)

    def send_encoded(self, partition: int | None, key: bytes, value: bytes | None) -> FutureMessage:
        """A changelog record already serialized and size-checked (runtime.cells checks a
        cell when it is written, and sends it at the next flush); None: a tombstone."""
        return super().send_changelog(partition, key, value, "raw", "raw")
