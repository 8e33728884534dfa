"""JSON rows in, Avro records out: what the ingest endpoints accept, judged one row at a time.

A body is a JSON array of objects, or NDJSON (one object per line; a single object is one
line). Each row is checked against the shape its Avro schema gives (required fields, types,
no unknown fields), then against the rules the schema cannot say (ranges, finite values, time
skew). A bad row is rejected alone, with its index and a reason a person can act on; only a
body with no readable row at all is refused as a whole. No Faust here: plain functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tally.codecs.avro import Record
from tally.codecs.registry import Schema
from tally.core.errors import BodyTooLarge, UnreadableBody, ValidationError
from tally.core.limits import utf8_size

#: A row larger than this is rejected: it would not fit a Kafka message with its neighbours.
MAX_ROW_BYTES = 256 * 1024
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
#: How much of a value a reason quotes.
PREVIEW_CHARS = 60


@dataclass(frozen=True)
class Row:
    """One row of a body: its index, its own bytes (what a dead letter keeps), and its JSON
    value, or the reason it is not JSON."""

    index: int
    raw: bytes
    value: Any = None
    unreadable: str = ""


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


#: One element of an array is parsed within a window of this many characters of the body:
#: no single parse (which holds the interpreter) reads more JSON than one row may hold, so a
#: body of one huge element costs the event loop no more than a row does.
WINDOW = MAX_ROW_BYTES + 64
#: A parse that ends or fails this close to a window's end may have met the cut, not the
#: element's end: `12.5` cut to `12.`, `true` to `tr`, `\u00e9` to `\u0`.
CUT_MARGIN = 32


def too_many_rows(max_rows: int) -> BodyTooLarge:
    """A body of more rows than one request may hold (413)."""
    return BodyTooLarge(
        f"the body holds more than {max_rows:,} rows; one request may hold at most "
        f"{max_rows:,} (TALLY_INGEST_MAX_ROWS): send the rows in several requests"
    )


def element_too_large(row_number: int) -> BodyTooLarge:
    """An array element no window holds whole: longer than any row may be (413)."""
    return BodyTooLarge(
        f"row {row_number} of the array is longer than {MAX_ROW_BYTES:,} characters, more "
        "than a row may hold: nothing of this body was accepted"
    )


class _Window:
    """A window of `text` that array elements are parsed in, moved forward (copied anew)
    when an element may run past its end."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.base = 0
        self.chunk = text[:WINDOW]

    def decode(self, index: int, row_number: int) -> tuple[Any, int]:
        """The JSON value at `index` of the text and the index after it."""
        while True:
            near_cut = len(self.chunk) - CUT_MARGIN
            cut = self.base + len(self.chunk) < len(self.text)
            try:
                value, end = _DECODER.raw_decode(self.chunk, index - self.base)
                if not (cut and end >= near_cut):
                    return value, self.base + end
            except json.JSONDecodeError as exc:
                if not (cut and (exc.pos >= near_cut or exc.msg.startswith("Unterminated"))):
                    raise
            if self.base == index:  # a whole window from the element's start: still cut
                raise element_too_large(row_number)
            self.base, self.chunk = index, self.text[index : index + WINDOW]


def array_elements(text: str, max_rows: int) -> Iterator[tuple[Any, str]]:
    """The elements of a JSON array, one at a time, each with its text as sent: a body of a
    million tiny elements is refused after `max_rows`, not parsed whole first, and an element
    longer than a row may be refuses the body. `ValueError` if it is not one array."""
    window = _Window(text)
    index = _SPACE.match(text, 1).end()  # type: ignore[union-attr]
    if text.startswith("]", index):
        index += 1
    else:
        count = 0
        while True:
            count += 1
            if count > max_rows:
                raise too_many_rows(max_rows)
            value, end = window.decode(index, row_number=count)
            yield value, text[index:end]
            index = _SPACE.match(text, end).end()  # type: ignore[union-attr]
            if text.startswith(",", index):
                index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
            elif text.startswith("]", index):
                index += 1
                break
            else:
                raise ValueError(f"expected ',' or ']' at character {index}")
    if _SPACE.match(text, index).end() != len(text):  # type: ignore[union-attr]
        raise ValueError(f"extra data after the array at character {index}")


def split_rows(body: bytes, ndjson: bool = False, max_rows: int = 10_000) -> list[Row]:
    """The rows of a body: a JSON array (each element a row) or one JSON value (one row);
    else, or when `ndjson`, one row per non-blank line. More than `max_rows` rows:
    `BodyTooLarge`. Nothing longer than a row may be is parsed in one go (`array_elements`;
    a longer single value or line is a row rejected by its size).

    NaN and Infinity literals are read (Python's json does) so that the row is rejected for a
    non-finite value by name, not as unreadable.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableBody(
            f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    stripped = text.strip()
    if not stripped:
        raise UnreadableBody("the body is empty: send a JSON array of rows, or NDJSON")
    whole_error = ""
    if not ndjson and stripped.startswith("["):
        try:
            return [
                Row(i, raw.encode(), value)
                for i, (value, raw) in enumerate(array_elements(stripped, max_rows))
            ]
        except (ValueError, RecursionError) as exc:
            whole_error = str(exc) or type(exc).__name__
    elif not ndjson and len(stripped) <= MAX_ROW_BYTES:
        try:
            return [Row(0, stripped.encode(), json.loads(stripped))]
        except (ValueError, RecursionError) as exc:
            whole_error = str(exc) or type(exc).__name__
    elif not ndjson and "\n" not in stripped:
        return [Row(0, stripped.encode())]  # one row, rejected by its size unparsed
    elif not ndjson:
        whole_error = "longer than one row may be, so read as lines"
    rows = []
    for index, line in enumerate(line for line in lines(stripped) if line.strip()):
        if index >= max_rows:
            raise too_many_rows(max_rows)
        if len(line) > MAX_ROW_BYTES:  # rejected by its size: not parsed
            rows.append(Row(index, line.encode()))
            continue
        try:
            rows.append(Row(index, line.encode(), json.loads(line)))
        except (ValueError, RecursionError) as exc:
            rows.append(Row(index, line.encode(), unreadable=f"line is not JSON: {exc}"))
    if all(row.unreadable for row in rows):
        whole = f"the body is not JSON ({whole_error}), nor NDJSON" if whole_error else "no line"
        raise UnreadableBody(
            f"{whole} (line 1: {rows[0].unreadable}); send a JSON array of rows, or NDJSON: "
            "one JSON object per line"
        )
    return rows


def lines(text: str) -> Iterator[str]:
    """The lines of `text`, one at a time (a list of a million lines would cost more than the
    body). Only "\n" ends a line: JSON strings may hold U+2028 and friends raw."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def preview(value: Any) -> str:
    try:
        text = json.dumps(value)
    except RecursionError:
        return "(deeply nested)"
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def _wrong_type(path: str, wanted: str, value: Any) -> ValidationError:
    return ValidationError(
        f"field {path!r} must be {wanted}, got {json_type(value)} {preview(value)}", "wrong_type"
    )


def conform(schema: Any, value: Any, path: str) -> Any:
    """`value` as the Avro type `schema` takes it, or `ValidationError` naming the field.

    Covers the Avro types Tally's schemas use: primitives, records, maps, arrays, unions.
    JSON has one number type: a whole number is accepted for a double, never the reverse.
    """
    if isinstance(schema, list):  # a union: the first branch that takes the value
        for branch in schema:
            try:
                return conform(branch, value, path)
            except ValidationError:
                continue
        names = " or ".join(_describe(branch) for branch in schema)
        raise _wrong_type(path, names, value)
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "null":
        if value is not None:
            raise _wrong_type(path, "null", value)
        return None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _wrong_type(path, "true or false", value)
        return value
    if kind in ("int", "long"):
        low, high = INT32 if kind == "int" else INT64
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and low <= value <= high:
                return int(value)  # 3.0 is 3; JSON writers may emit either
            raise _wrong_type(path, f"a whole number ({kind})", value)
        if not low <= value <= high:
            raise ValidationError(
                f"field {path!r} = {value} does not fit a 64-bit {kind}"
                if kind == "long"
                else f"field {path!r} = {value} does not fit a 32-bit int",
                "out_of_range",
            )
        return value
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type(path, "a number", value)
        try:
            return float(value)
        except OverflowError:  # a whole number beyond any double
            raise ValidationError(
                f"field {path!r} is too large for a double", "out_of_range"
            ) from None
    if kind == "string":
        if not isinstance(value, str):
            raise _wrong_type(path, "a string", value)
        if utf8_size(value) is None:
            raise ValidationError(
                f"field {path!r} is not valid Unicode text (an unpaired surrogate \\uD800-\\uDFFF)",
                "bad_text",
            )
        return value
    if kind == "map":
        if not isinstance(value, dict):
            raise _wrong_type(path, "an object", value)
        return {
            key: conform(schema["values"], item, f"{path}.{key}") for key, item in value.items()
        }
    if kind == "array":
        if not isinstance(value, list):
            raise _wrong_type(path, "an array", value)
        return [conform(schema["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind == "record":
        return conform_record(schema, value, path)
    raise ValidationError(
        f"field {path!r} has Avro type {kind!r}, which ingest cannot take", "wrong_type"
    )


def _describe(schema: Any) -> str:
    kind = schema["type"] if isinstance(schema, dict) else schema
    return {"long": "a whole number", "int": "a whole number", "double": "a number"}.get(
        kind, str(kind)
    )


def conform_record(schema: Schema, value: Any, path: str = "") -> Record:
    """A JSON object as the Avro record `schema`: every field present (or defaulted), of its
    type, and nothing else."""
    where = f"field {path!r}" if path else "a row"
    if not isinstance(value, dict):
        raise ValidationError(
            f"{where} must be a JSON object, got {json_type(value)} {preview(value)}",
            "not_object",
        )
    names = [field["name"] for field in schema["fields"]]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValidationError(
            f"unknown field{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(name) for name in unknown)}; expected: {', '.join(names)}",
            "unknown_field",
        )
    record: Record = {}
    for field in schema["fields"]:
        name = field["name"]
        inner = f"{path}.{name}" if path else name
        if name not in value:
            if "default" in field:
                record[name] = json.loads(json.dumps(field["default"]))  # a fresh copy
                continue
            raise ValidationError(
                f"missing required field {inner!r} ({_describe(field['type'])})", "missing_field"
            )
        record[name] = conform(field["type"], value[name], inner)
    return record


@dataclass(frozen=True)
class RowShape:
    """What one row of an endpoint is: its Avro record, and the rules beyond the types.

    `rules(record, wall_ms)` raises `ValidationError`; it sees a record of the right shape.
    """

    schema: Schema
    rules: Callable[[Record, int], None]

    def check(
        self, row: Row, wall_ms: int, stamp: Callable[[Record], None] = lambda record: None
    ) -> Record:
        """The row's record, `stamp`ed (with who sent it) before the rules judge it."""
        if row.unreadable:
            raise ValidationError(row.unreadable, "not_json")
        if len(row.raw) > MAX_ROW_BYTES:
            raise ValidationError(
                f"the row is {len(row.raw):,} bytes; a row may have at most {MAX_ROW_BYTES:,}",
                "row_too_large",
            )
        record = conform_record(self.schema, row.value)
        stamp(record)
        self.rules(record, wall_ms)
        return record


def json_schema(schema: Any) -> dict[str, Any]:
    """The JSON Schema of what `conform` accepts for this Avro type: one contract, so the
    OpenAPI document cannot drift from the checks."""
    if isinstance(schema, list):
        return {"anyOf": [json_schema(branch) for branch in schema]}
    kind = schema["type"] if isinstance(schema, dict) else schema
    described: dict[str, Any]
    if kind in ("int", "long"):
        low, high = INT32 if kind == "int" else INT64
        described = {"type": "integer", "minimum": low, "maximum": high}
    elif kind in ("double", "float"):
        described = {"type": "number"}
    elif kind == "map":
        described = {"type": "object", "additionalProperties": json_schema(schema["values"])}
    elif kind == "array":
        described = {"type": "array", "items": json_schema(schema["items"])}
    elif kind == "record":
        described = {
            "type": "object",
            "properties": {
                f["name"]: {**json_schema(f["type"]), **_doc(f)} for f in schema["fields"]
            },
            "required": [f["name"] for f in schema["fields"] if "default" not in f],
            "additionalProperties": False,
        }
    else:
        described = {"type": {"null": "null", "boolean": "boolean", "string": "string"}[kind]}
    return {**described, **_doc(schema)} if isinstance(schema, dict) else described


def _doc(node: Any) -> dict[str, str]:
    return {"description": node["doc"]} if isinstance(node, dict) and "doc" in node else {}
