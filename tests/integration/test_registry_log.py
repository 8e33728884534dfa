"""The deployment's registry on the broker (`TALLY_SCHEMA_REGISTRY=topic:`): processes that
share nothing but the broker agree on every subject, version and level, also when they race."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from tally.broker.local import LocalBroker
from tally.codecs.compatibility import Level
from tally.codecs.log_registry import LogSchemaRegistry
from tally.codecs.registry import IncompatibleSchema, SchemaNotFound, Version
from tests.harness import produce, wait_until

TOPIC = "t-schemas"


def record(*fields: str, default: str | None = None) -> str:
    columns = [{"name": name, "type": "string"} for name in fields]
    if default is not None:
        columns[-1]["default"] = default
    return json.dumps({"type": "record", "name": "Thing", "fields": columns})


@pytest.fixture
def registries(broker: LocalBroker) -> Iterator[list[LogSchemaRegistry]]:
    opened = [LogSchemaRegistry([broker.bootstrap], TOPIC) for _ in range(2)]
    yield opened
    for registry in opened:
        registry.close()


def test_two_processes_agree_through_the_log(
    broker: LocalBroker, registries: list[LogSchemaRegistry]
) -> None:
    one, two = registries
    first = one.register("s", record("a"))
    # The other process finds it (after reading the log to its end), with the same version.
    assert two.lookup("s", record("a")) == Version("s", 1, first)
    assert json.loads(two.schema_text(first)) == json.loads(record("a"))
    # Its compatibility level and refusals are the deployment's.
    two.set_level("s", Level.FULL)
    with pytest.raises(IncompatibleSchema, match="FULL"):
        one.register("s", record("a", "b"))  # no default: FULL refuses
    second = one.register("s", record("a", "b", default="x"))
    # Reads are served from each view: the other one has it once it read the log that far.
    wait_until(lambda: [v.id for v in two.versions("s")] == [first, second], 5, 0.05, "v2")
    assert one.level("s") is Level.FULL

    # Racing registrations of two new versions: the log orders them; both views agree.
    ids: dict[str, int] = {}
    schemas = {"c": record("a", "b", "c", default="y"), "d": record("a", "b", "d", default="z")}

    def register(registry: LogSchemaRegistry, name: str) -> None:
        ids[name] = registry.register("s", schemas[name])

    racing = [
        threading.Thread(target=register, args=(registry, name))
        for registry, name in zip(registries, schemas, strict=True)
    ]
    for thread in racing:
        thread.start()
    for thread in racing:
        thread.join(30)
    assert sorted(ids) == ["c", "d"]
    # Both views agree once both have read the log's end.
    wait_until(lambda: one.versions("s") == two.versions("s"), 5, 0.05, "the views agree")
    assert {v.id for v in one.versions("s")[2:]} == set(ids.values())

    # Deletes reach every view; a process started later rebuilds the same state from the log.
    one.delete_version("s", 1)
    late = LogSchemaRegistry([broker.bootstrap], TOPIC)
    try:
        wait_until(lambda: one.versions("s") == two.versions("s"), 5, 0.05, "the delete")
        assert late.versions("s") == one.versions("s")
        assert late.versions("s", deleted=True)[0] == Version("s", 1, first, deleted=True)
        assert late.level("s") is Level.FULL
        with pytest.raises(SchemaNotFound):
            late.schema_text(12345)
    finally:
        late.close()


def test_an_unreadable_record_on_the_log_is_skipped_by_every_process(
    broker: LocalBroker, registries: list[LogSchemaRegistry]
) -> None:
    """A record no version can read (written by hand, or by a newer Tally) stops no reader."""
    one, _ = registries
    produce(broker.bootstrap, TOPIC, [(b"registry", b"not json"), (b"registry", b'{"op": 1}')])
    schema_id = one.register("s", record("a"))
    late = LogSchemaRegistry([broker.bootstrap], TOPIC)
    try:
        assert late.versions("s") == [Version("s", 1, schema_id)]
    finally:
        late.close()
