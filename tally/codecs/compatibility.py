"""Schema compatibility levels, as Confluent's registry defines them, checked by Apache Avro.

Which pairs a level checks is the registry's rule (BACKWARD: the new schema reads what the
latest wrote; FORWARD: the latest reads what the new one writes; FULL: both; `_TRANSITIVE`:
against every live version, not only the latest). Whether a reader can read a writer is
Avro's schema-resolution rule, asked of the Apache Avro project's own checker
(`avro.compatibility`), not re-implemented here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
)
from avro.errors import AvroException

from tally.core.errors import SchemaError


class Level(StrEnum):
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def backward(self) -> bool:
        return self.name.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        return self.name.startswith(("FORWARD", "FULL"))

    @property
    def transitive(self) -> bool:
        return self.name.endswith("_TRANSITIVE")


#: A registry's level until one is set, as in Confluent's.
DEFAULT_LEVEL = Level.BACKWARD


def parse_level(text: object) -> Level | None:
    """A level named by `text` (any case), or None."""
    if not isinstance(text, str):
        return None
    try:
        return Level(text.upper())
    except ValueError:
        return None


def parsed(text: str) -> avro.schema.Schema:
    """The schema as Avro reads it; `SchemaError` saying why it is not one."""
    try:
        return avro.schema.parse(text)
    except (AvroException, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise SchemaError(f"not a valid Avro schema: {exc}") from None


#: Avro's kinds of incompatibility, said for a person.
KINDS = {
    SchemaIncompatibilityType.name_mismatch: "names differ",
    SchemaIncompatibilityType.fixed_size_mismatch: "fixed sizes differ",
    SchemaIncompatibilityType.missing_enum_symbols: "the reader lacks enum symbols",
    SchemaIncompatibilityType.reader_field_missing_default_value: (
        "a field the writer does not have has no default"
    ),
    SchemaIncompatibilityType.type_mismatch: "types differ",
    SchemaIncompatibilityType.missing_union_branch: "the reader's union lacks a writer's branch",
}


def reads(reader: str, writer: str) -> str | None:
    """Why data written with the `writer` schema cannot be read with `reader` (None: it can)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(parsed(reader), parsed(writer))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    kinds = sorted({KINDS.get(kind, str(kind)) for kind in result.incompatibilities})
    details = "; ".join(sorted(result.messages))
    where = ", ".join(sorted(named(reader, location) for location in result.locations))
    return f"{', '.join(kinds) or 'incompatible'} at {where} ({details})"


def named(schema: str, location: str) -> str:
    """A checker's location ("/fields/1/type") said with field names ("field units"), for the
    schema it points into; the location itself where the walk does not fit."""
    node: Any = json.loads(schema)
    names = []
    try:
        for token in location.strip("/").split("/"):
            if not token:
                continue
            node = node[int(token)] if isinstance(node, list) else node[token]
            if isinstance(node, dict) and token.isdecimal() and "name" in node:
                names.append(str(node["name"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return location
    return f"field {'.'.join(names)}" if names else location


def incompatibilities(new: str, live: Sequence[tuple[int, str]], level: Level) -> list[str]:
    """Why `new` may not follow the `live` (version, schema) pairs, oldest first, at `level`
    (empty: it may)."""
    if level is Level.NONE or not live:
        return []
    parsed(new)
    reasons = []
    for version, old in live if level.transitive else live[-1:]:
        if level.backward and (why := reads(new, old)):
            reasons.append(f"the new schema cannot read data written with version {version}: {why}")
        if level.forward and (why := reads(old, new)):
            reasons.append(f"version {version} cannot read data written with the new schema: {why}")
    return reasons
