"""The embedded schema registry: schemas kept as registered, Confluent's versions and deletes,
and compatibility levels checked against Avro's resolution rules (a table of cases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tally.codecs.avro import load_schema
from tally.codecs.compatibility import Level, incompatibilities
from tally.codecs.registry import (
    FileSchemaRegistry,
    IncompatibleSchema,
    InvalidSchema,
    LevelNotConfigured,
    SchemaNotFound,
    SubjectNotFound,
    SubjectNotSoftDeleted,
    SubjectSoftDeleted,
    Version,
    VersionNotSoftDeleted,
    VersionSoftDeleted,
    deterministic_id,
    schema_text,
)
from tally.core.errors import SchemaError, UnknownSchemaError


def record(*fields: dict[str, Any], name: str = "Thing") -> str:
    return json.dumps({"type": "record", "name": name, "fields": list(fields)})


A = {"name": "a", "type": "int"}
B_DEFAULT = {"name": "b", "type": "string", "default": "none"}
B = {"name": "b", "type": "string"}
COLOUR = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}
MORE_COLOURS = {**COLOUR, "symbols": ["RED", "GREEN", "BLUE"]}

#: (case, old schema, new schema, {level: accepted?}) by Avro's resolution rules: BACKWARD
#: = the new schema reads old data, FORWARD = the old schema reads new data, FULL = both.
CASES = [
    ("add a field with a default", record(A), record(A, B_DEFAULT), (True, True, True)),
    ("add a field without a default", record(A), record(A, B), (False, True, False)),
    ("remove a field that had a default", record(A, B_DEFAULT), record(A), (True, True, True)),
    ("remove a field without a default", record(A, B), record(A), (True, False, False)),
    ("string to int", record(B), record({"name": "b", "type": "int"}), (False, False, False)),
    ("promote int to long", record(A), record({**A, "type": "long"}), (True, False, False)),
    ("promote int to double", record(A), record({**A, "type": "double"}), (True, False, False)),
    (
        "add an enum symbol",
        record({"name": "c", "type": COLOUR}),
        record({"name": "c", "type": MORE_COLOURS}),
        (True, False, False),
    ),
    (
        "make a field nullable",
        record(B),
        record({"name": "b", "type": ["null", "string"], "default": None}),
        (True, False, False),
    ),
    ("rename the record", record(A), record(A, name="Other"), (False, False, False)),
    (
        "rename the record, old name as an alias",
        record(A),
        json.dumps({"type": "record", "name": "Other", "aliases": ["Thing"], "fields": [A]}),
        (True, False, False),
    ),
    (
        "add a timestamp-millis and a decimal field with defaults",
        record(A),
        record(
            A,
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"},
             "default": 0},
            {
                "name": "price",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
                "default": "\u0000",
            },
        ),
        (True, True, True),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "old", "new", "accepted"), CASES, ids=[c[0] for c in CASES])
def test_each_level_accepts_what_avro_resolution_allows(
    case: str, old: str, new: str, accepted: tuple[bool, bool, bool]
) -> None:
    for level, expected in zip((Level.BACKWARD, Level.FORWARD, Level.FULL), accepted, strict=True):
        reasons = incompatibilities(new, [(1, old)], level)
        assert (not reasons) is expected, f"{case} at {level}: {reasons}"
    assert incompatibilities(new, [(1, old)], Level.NONE) == []


def test_transitive_levels_check_every_live_version_not_only_the_latest() -> None:
    """v3 drops b's default: it reads v2's data (b is there), not v1's (b is missing)."""
    live = [(1, record(A)), (2, record(A, B_DEFAULT))]
    assert incompatibilities(record(A, B), live, Level.BACKWARD) == []
    (reason,) = incompatibilities(record(A, B), live, Level.BACKWARD_TRANSITIVE)
    assert "version 1" in reason and "no default" in reason
    assert incompatibilities(record(A, B), live, Level.FULL_TRANSITIVE)


@pytest.fixture
def registry(tmp_path: Path) -> FileSchemaRegistry:
    return FileSchemaRegistry(tmp_path)


def test_a_schema_is_kept_and_served_as_registered(registry: FileSchemaRegistry) -> None:
    """Defaults, docs, logical types and aliases survive (Avro's canonical form drops them)."""
    schema = {
        "type": "record",
        "name": "Thing",
        "doc": "a thing",
        "aliases": ["Old"],
        "fields": [
            {"name": "tag", "type": "string", "default": "none", "doc": "its tag"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        ],
    }
    schema_id = registry.register("things-value", schema)
    assert registry.schema(schema_id) == schema
    assert FileSchemaRegistry(registry.root).schema(schema_id) == schema


def test_schemas_differing_only_in_a_default_are_two_versions(registry: FileSchemaRegistry) -> None:
    first = registry.register("s", record(A, B_DEFAULT))
    second = registry.register("s", record(A, {**B_DEFAULT, "default": "other"}))
    assert first != second
    assert [v.version for v in registry.versions("s")] == [1, 2]
    # The same schema again (other spacing and key order) is the same version.
    assert registry.register("s", json.dumps(json.loads(record(A, B_DEFAULT)), indent=2)) == first


def test_ids_are_deterministic_across_registries(tmp_path: Path) -> None:
    schema = load_schema("purchase")
    a = FileSchemaRegistry(tmp_path / "a").register("s", schema)
    b = FileSchemaRegistry(tmp_path / "b").register("other-subject", schema)
    assert a == b == deterministic_id(schema)
    assert deterministic_id(load_schema("metric_batch")) != a


def test_an_incompatible_schema_is_refused_with_the_reason(registry: FileSchemaRegistry) -> None:
    registry.register("s", record(B))
    with pytest.raises(IncompatibleSchema, match=r"BACKWARD.*types differ") as refused:
        registry.register("s", record({"name": "b", "type": "int"}))
    assert (refused.value.status, refused.value.code) == (409, 409)
    assert len(registry.versions("s")) == 1
    registry.set_level("s", Level.NONE)
    registry.register("s", record({"name": "b", "type": "int"}))
    assert len(registry.versions("s")) == 2


def test_levels_global_and_per_subject(registry: FileSchemaRegistry) -> None:
    assert registry.level() is Level.BACKWARD
    registry.set_level(None, Level.FULL)
    assert registry.level("s") is Level.FULL
    with pytest.raises(LevelNotConfigured):
        registry.level("s", default_to_global=False)
    registry.set_level("s", Level.FORWARD_TRANSITIVE)
    assert registry.level("s", default_to_global=False) is Level.FORWARD_TRANSITIVE
    registry.set_level("s", None)
    assert registry.level("s") is Level.FULL


def test_soft_then_hard_deletes_as_confluent_does(registry: FileSchemaRegistry) -> None:
    one = registry.register("s", record(A))
    two = registry.register("s", record(A, B_DEFAULT))
    with pytest.raises(VersionNotSoftDeleted):
        registry.delete_version("s", 2, permanent=True)
    assert registry.delete_version("s", None) == 2  # latest
    with pytest.raises(VersionSoftDeleted):
        registry.delete_version("s", 2)
    assert [v.version for v in registry.versions("s")] == [1]
    assert registry.version("s", 2, deleted=True) == Version("s", 2, two, deleted=True)
    assert registry.delete_version("s", 2, permanent=True) == 2
    # Version numbers are never reused; a soft-deleted schema registered again is new.
    assert registry.register("s", record(A, B_DEFAULT)) == two
    assert [v.version for v in registry.versions("s")] == [1, 3]
    with pytest.raises(SubjectNotSoftDeleted):
        registry.delete_subject("s", permanent=True)
    assert registry.delete_subject("s") == [1, 3]
    with pytest.raises(SubjectSoftDeleted):
        registry.delete_subject("s")
    with pytest.raises(SubjectNotFound):
        registry.versions("s")
    assert registry.subjects() == [] and registry.subjects(deleted=True) == ["s"]
    assert registry.delete_subject("s", permanent=True) == [1, 3]
    assert registry.subjects(deleted=True) == []
    assert registry.schema(one)  # ids stay readable: old messages still decode


def test_lookup_and_uses(registry: FileSchemaRegistry) -> None:
    schema_id = registry.register("a-value", record(A))
    registry.register("b-value", record(A))
    assert registry.lookup("a-value", record(A)) == Version("a-value", 1, schema_id)
    with pytest.raises(SchemaNotFound):
        registry.lookup("a-value", record(A, B_DEFAULT))
    with pytest.raises(SubjectNotFound):
        registry.lookup("nobody", record(A))
    assert sorted((v.subject, v.version) for v in registry.uses(schema_id)) == [
        ("a-value", 1),
        ("b-value", 1),
    ]
    with pytest.raises(UnknownSchemaError):
        registry.schema(1)


def test_invalid_schemas_are_refused(registry: FileSchemaRegistry) -> None:
    for bad in ('{"type": "record"}', "not json", '{"type": "nope"}'):
        with pytest.raises(InvalidSchema):
            registry.register("s", bad)
    with pytest.raises(InvalidSchema):
        schema_text({"type": "record", "name": "R", "fields": [{"name": "x"}]})


def test_a_colliding_id_is_refused(registry: FileSchemaRegistry, tmp_path: Path) -> None:
    schema_id = registry.register("a", load_schema("purchase"))
    (tmp_path / "ids" / f"{schema_id}.avsc").write_text('"string"')
    fresh = FileSchemaRegistry(tmp_path)
    fresh.delete_subject("a")
    with pytest.raises(SchemaError, match="collides"):
        fresh.register("a", load_schema("purchase"))


def test_subject_files_of_earlier_versions_are_read_in_the_current_layout(tmp_path: Path) -> None:
    schema = load_schema("purchase")
    schema_id = FileSchemaRegistry(tmp_path).register("purchases-value", schema)
    (path,) = (tmp_path / "subjects").glob("*.json")  # as the previous version wrote it
    path.write_text(json.dumps({"subject": "purchases-value", "ids": [schema_id]}))
    (tmp_path / "subjects" / "a%2Fb.json").write_text(json.dumps([schema_id]))  # and the first
    upgraded = FileSchemaRegistry(tmp_path)
    assert upgraded.subjects() == ["a/b", "purchases-value"]
    assert upgraded.versions("purchases-value") == [Version("purchases-value", 1, schema_id)]
    assert upgraded.versions("a/b") == [Version("a/b", 1, schema_id)]
    long_subject = "s" * 255  # too long to be a file name quoted; fine as a digest
    assert upgraded.register(long_subject, schema) == schema_id
    assert upgraded.versions(long_subject) == [Version(long_subject, 1, schema_id)]
