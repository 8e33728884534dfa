"""Ingest rows: bodies split into rows, each row judged alone, every reason a person can act on."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.access.tokens import OPERATOR
from tally.codecs.avro import load_schema
from tally.core.errors import BodyTooLarge, UnreadableBody, ValidationError
from tally.ingest.gateway import Accepted, endpoints, sample_row_schema, tenant_stamp
from tally.ingest.rows import WINDOW, Row, conform_record, split_rows
from tally.settings import Settings
from tests.strategies import JSON, mutated

NOW = 1_795_000_000_000
#: Every rule a row can be rejected by (docs/operations.md lists them).
RULES = {
    "not_json", "not_object", "missing_field", "wrong_type", "unknown_field", "out_of_range",
    "not_finite", "bad_id", "bad_time", "row_too_large", "bad_tenant",
}  # fmt: skip
SETTINGS = Settings()
ENDPOINTS = endpoints(SETTINGS, lambda: None, lambda: None)  # type: ignore[arg-type,return-value]


def purchase(**changes: Any) -> dict[str, Any]:
    row = {
        "purchase_id": "p1",
        "item_id": "item-1",
        "quantity": 2,
        "unit_price_cents": 150,
        "event_time_ms": NOW,
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def sample(**changes: Any) -> dict[str, Any]:
    row = {"server_id": "web-1", "metric_id": "cpu", "ts_ms": NOW, "value": 0.5}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def judge(endpoint: str, value: Any) -> dict[str, Any]:
    shape = ENDPOINTS[endpoint].shape
    return shape.check(Row(0, b"", value), NOW)


def rejection(endpoint: str, value: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        judge(endpoint, value)
    return caught.value


# --- bodies -----------------------------------------------------------------------------


def test_a_json_array_is_one_row_per_element() -> None:
    rows = split_rows(json.dumps([purchase(), purchase(purchase_id="p2")]).encode())
    assert [r.index for r in rows] == [0, 1]
    assert rows[1].value["purchase_id"] == "p2"
    assert json.loads(rows[0].raw) == purchase()


def test_ndjson_is_one_row_per_non_blank_line_and_a_bad_line_is_rejected_alone() -> None:
    body = b'{"a": 1}\n\n  \n{"a": 2\n{"a": 3}\n'
    rows = split_rows(body)
    assert [r.index for r in rows] == [0, 1, 2]
    assert rows[1].unreadable.startswith("line is not JSON")
    assert rows[1].raw == b'{"a": 2'
    assert rows[2].value == {"a": 3}
    with pytest.raises(ValidationError) as caught:
        ENDPOINTS["purchases"].shape.check(rows[1], NOW)
    assert caught.value.rule == "not_json"


@given(st.lists(JSON, max_size=20), st.sampled_from([",", ", ", " ,\n\t"]))
def test_an_array_read_element_by_element_equals_the_whole_parse(
    values: list[Any], separator: str
) -> None:
    body = "[" + separator.join(json.dumps(v) for v in values) + "]"
    rows = split_rows(body.encode(), max_rows=20)
    assert [json.dumps(row.value) for row in rows] == [json.dumps(v) for v in values]


@pytest.mark.parametrize("ndjson", [False, True])
def test_more_rows_than_the_limit_are_refused_before_they_are_all_read(ndjson: bool) -> None:
    many = ("\n" if ndjson else ",").join(["1"] * 2_000_000)
    body = (many if ndjson else f"[{many}]").encode()
    assert len(split_rows(b"[" + b",".join([b"1"] * 10) + b"]", max_rows=10)) == 10
    with pytest.raises(BodyTooLarge, match="more than 10,000 rows") as raised:
        split_rows(body, ndjson=ndjson, max_rows=10_000)
    assert "TALLY_INGEST_MAX_ROWS" in str(raised.value)


def test_a_single_object_is_one_row() -> None:
    (row,) = split_rows(json.dumps(purchase()).encode())
    assert row.value == purchase()


def test_declared_ndjson_is_read_by_lines_even_when_a_line_is_an_array() -> None:
    body = b"[]\n{}"
    assert [r.value for r in split_rows(body, ndjson=True)] == [[], {}]
    assert [r.value for r in split_rows(b"[]")] == []


def test_declared_ndjson_splits_on_newlines_only() -> None:
    line = json.dumps({"note": "a\u2028b"}, ensure_ascii=False)
    (row,) = split_rows(line.encode(), ndjson=True)
    assert row.value == {"note": "a\u2028b"}


@pytest.mark.parametrize("depth", range(900, 1000, 5))
def test_deep_nesting_is_refused_or_rejected_never_an_error(depth: int) -> None:
    """Around the recursion limit, parsing may succeed where re-serialising fails."""
    body = ("[" * depth + "]" * depth).encode()
    try:
        rows = split_rows(body)
    except UnreadableBody:
        return
    for row in rows:
        with pytest.raises(ValidationError) as caught:
            ENDPOINTS["purchases"].shape.check(row, NOW)
        assert caught.value.rule in ("not_json", "not_object")


def test_a_huge_row_alone_or_on_its_line_is_rejected_by_size_unparsed() -> None:
    huge = json.dumps(purchase(metadata={"blob": "x" * 300_000}))
    good = json.dumps(purchase())
    ndjson_body = f"{good}\n{huge}\n{good}"
    for body, ndjson in [(huge, False), (ndjson_body, True), (ndjson_body, False)]:
        rows = split_rows(body.encode(), ndjson=ndjson)
        too_large = [row for row in rows if len(row.raw) > 300_000]
        (row,) = too_large
        assert row.value is None and not row.unreadable  # never parsed
        assert len(rows) == (1 if body is huge else 3)
        with pytest.raises(ValidationError) as caught:
            ENDPOINTS["purchases"].shape.check(row, NOW)
        assert caught.value.rule == "row_too_large"


@pytest.mark.parametrize(
    "element",
    [
        json.dumps(purchase(metadata={"blob": "x" * 300_000})),  # a long string
        "[" + ",".join(["1"] * 200_000) + "]",  # many numbers
        '{"a": "' + "y" * 300_000,  # never ends
    ],
)
def test_an_array_element_longer_than_a_row_refuses_the_body_unparsed(element: str) -> None:
    body = f"[{json.dumps(purchase())}, {element}, {json.dumps(purchase())}]"
    with pytest.raises(BodyTooLarge, match="row 2 of the array is longer than 262,144 char"):
        split_rows(body.encode())


CUT_VALUES = [
    "123456789",
    "12.5",
    "-1.5e+10",
    "true",
    "false",
    "null",
    '"\\u00e9t\\u00e9"',
    "[1, 2.5]",
]


@pytest.mark.parametrize("value", CUT_VALUES)
@pytest.mark.parametrize("shift", range(-40, 4))
def test_a_value_cut_by_the_window_end_is_read_whole(value: str, shift: int) -> None:
    # '["xxx…", "yyy…", <value>, 7]': the value starts `shift` characters from the first
    # window's end; each filler is a row of its own, shorter than a row may be.
    first = "x" * (WINDOW // 2)
    second = "y" * (WINDOW - len(first) - 9 + shift)
    body = f'["{first}", "{second}", {value}, 7]'
    assert body.index(value, len(first) + len(second)) == WINDOW + shift
    rows = split_rows(body.encode())
    assert [row.value for row in rows] == [first, second, json.loads(value), 7]
    assert rows[2].raw.decode() == value


@given(
    st.lists(st.sampled_from([1, "é", {"k": [1, 2]}, "x" * 70_000, 123456789]), max_size=12),
    st.sampled_from([",", " , ", ",\n  "]),
)
def test_elements_across_window_boundaries_read_as_sent(values: list[Any], separator: str) -> None:
    """Elements are parsed in windows of the body: one that crosses a window's end (a number
    cut short parses too) is read again in the next window, whole."""
    texts = [json.dumps(v, ensure_ascii=False) for v in values]
    body = "[" + separator.join(texts) + "]"
    rows = split_rows(body.encode())
    assert [row.value for row in rows] == values
    assert [row.raw.decode() for row in rows] == texts


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"   \n ", "empty"),
        (b"hello", "the body is not JSON"),
        (b"[1, 2", "the body is not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "the body is not JSON"),  # nesting deeper than the parser goes
    ],
)
def test_a_body_without_a_readable_row_is_refused_whole(body: bytes, says: str) -> None:
    with pytest.raises(UnreadableBody, match=says):
        split_rows(body)


# --- rows ---------------------------------------------------------------------------------


def test_a_good_purchase_takes_the_schema_default_for_metadata() -> None:
    defaults = {"metadata": {}, "tenant": "", "customer_id": ""}
    assert judge("purchases", purchase()) == {**purchase(), **defaults}


@pytest.mark.parametrize(
    ("row", "rule", "says"),
    [
        (purchase(item_id=...), "missing_field", "missing required field 'item_id'"),
        (purchase(quantity="2"), "wrong_type", "field 'quantity' must be a whole number"),
        (purchase(quantity=True), "wrong_type", "field 'quantity' must be a whole number"),
        (purchase(quantity=1.5), "wrong_type", "got number 1.5"),
        (purchase(quantity=2**31), "out_of_range", "32-bit int"),
        (purchase(quantity=0), "out_of_range", "quantity must be > 0"),
        (purchase(quantity=-3), "out_of_range", "quantity must be > 0, got -3"),
        (purchase(unit_price_cents=-1), "out_of_range", "unit_price_cents must be >= 0"),
        (purchase(item_id=""), "bad_id", "item_id must not be empty"),
        (purchase(qty=2), "unknown_field", "unknown field 'qty'; expected: purchase_id"),
        (purchase(metadata={"a": 1}), "wrong_type", "field 'metadata.a' must be a string"),
        (purchase(event_time_ms=NOW // 1000), "bad_time", "hours old"),
        (purchase(event_time_ms=NOW * 1000), "bad_time", "in the future"),
        (purchase(event_time_ms=-5), "bad_time", "is not a time"),
        ([purchase()], "not_object", "must be a JSON object, got array"),
        (sample(value=float("nan")), "not_finite", "value must be finite, got nan"),
        (sample(value=float("inf")), "not_finite", "value must be finite"),
        (sample(value="0.5"), "wrong_type", "field 'value' must be a number"),
        (sample(value=10**400), "out_of_range", "too large for a double"),
        (sample(server_id="a|b"), "bad_id", "server_id must not contain '|'"),
        (sample(metric_id=""), "bad_id", "metric_id must not be empty"),
        (purchase(item_id="x" * 257), "bad_id", "item_id is 257 bytes in UTF-8; an id may"),
        (purchase(item_id="é" * 129), "bad_id", "is 258 bytes in UTF-8"),
        (purchase(item_id="a|b"), "bad_id", "item_id must not contain '|'"),
        (purchase(item_id="a\x00b"), "bad_id", "control characters (found U+0000)"),
        (purchase(item_id="a\r\nb"), "bad_id", "control characters (found U+000D)"),
        (purchase(item_id="a\u2028b"), "bad_id", "control characters (found U+2028)"),
        (purchase(purchase_id="p" * 300), "bad_id", "purchase_id is 300 bytes"),
        (purchase(item_id="\ud800"), "bad_text", "field 'item_id' is not valid Unicode"),
        (purchase(metadata={"k": "\udfff"}), "bad_text", "field 'metadata.k' is not valid"),
        (purchase(metadata={"k": "v" * 1025}), "bad_metadata", "a value may have at most 1,024"),
        (purchase(metadata={"": "v"}), "bad_metadata", "a metadata key must be 1 to 256"),
        (
            purchase(metadata={str(n): "v" for n in range(33)}),
            "bad_metadata",
            "metadata has 33 entries; at most 32",
        ),
        (sample(server_id="s" * 300), "bad_id", "server_id is 300 bytes"),
        (sample(metric_id="cpu\tutil"), "bad_id", "control characters (found U+0009)"),
        (sample(ts_ms=None), "wrong_type", "field 'ts_ms' must be a whole number"),
    ],
)
def test_each_bad_row_is_rejected_with_its_rule_and_a_readable_reason(
    row: Any, rule: str, says: str
) -> None:
    endpoint = "metrics" if isinstance(row, dict) and "server_id" in row else "purchases"
    exc = rejection(endpoint, row)
    assert exc.rule == rule
    assert says in str(exc)


def test_whole_floats_are_whole_numbers_and_integers_are_doubles() -> None:
    assert judge("purchases", purchase(quantity=3.0))["quantity"] == 3
    assert judge("metrics", sample(value=7))["value"] == 7.0


def test_a_metrics_row_is_a_server_id_and_a_sample() -> None:
    names = [f["name"] for f in sample_row_schema()["fields"]]
    assert names == ["server_id", "metric_id", "ts_ms", "value", "tenant"]


# --- property: whatever is accepted encodes as the Avro schema says ------------------------


def roundtrips(schema: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    parsed = parse_schema(schema)
    buffer = BytesIO()
    schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    return schemaless_reader(buffer, parsed, None)  # type: ignore[return-value]


@settings(max_examples=400)
@given(
    st.sampled_from(["purchases", "metrics"]).flatmap(
        lambda e: st.tuples(st.just(e), mutated(purchase() if e == "purchases" else sample()))
    )
)
def test_a_row_is_either_rejected_with_a_rule_or_encodes_exactly(case: tuple[str, Any]) -> None:
    endpoint, value = case
    try:
        record = judge(endpoint, value)
    except ValidationError as exc:
        assert exc.rule in RULES and str(exc)
        return
    schema = load_schema("purchase") if endpoint == "purchases" else sample_row_schema()
    assert roundtrips(schema, record) == record
    assert conform_record(schema, record) == record  # what was accepted is accepted again


# --- the tenant of a row -----------------------------------------------------------------


def stamped(sender: str, named: str) -> str:
    stamp = tenant_stamp(sender, "default")
    record = judge_stamped(stamp, purchase(tenant=named))
    return str(record["tenant"])


def judge_stamped(stamp: Any, value: Any) -> dict[str, Any]:
    return ENDPOINTS["purchases"].shape.check(Row(0, b"", value), NOW, stamp)


def test_a_row_gets_its_senders_tenant_and_may_not_name_another() -> None:
    assert stamped("default", "") == stamped("default", "default") == "default"
    assert stamped(OPERATOR, "") == "default"  # an operator's row naming none: the default
    assert stamped(OPERATOR, "acme") == "acme"  # an operator may name any tenant
    assert stamped("acme", "") == stamped("acme", "acme") == "acme"
    with pytest.raises(ValidationError, match="is not a tenant name") as unusable:
        stamped(OPERATOR, "ac|me")
    assert unusable.value.rule == "bad_tenant"
    with pytest.raises(ValidationError, match="token is tenant 'default'") as other:
        stamped("default", "acme")
    assert other.value.rule == "tenant_mismatch"


def test_metric_rows_are_batched_per_tenant_and_server() -> None:
    codec = FakeCodec()
    encode = endpoints(SETTINGS, lambda: codec, lambda: codec)["metrics"].encode  # type: ignore[arg-type,return-value]
    rows = [Accepted({**sample(metric_id=m), "tenant": "default"}, 10) for m in ("cpu", "mem")]
    (message,) = encode(rows, NOW)
    (batch,) = codec.dumped
    assert message.key == b"web-1" and batch["tenant"] == "default"
    assert [set(s) for s in batch["samples"]] == [{"metric_id", "ts_ms", "value"}] * 2


class FakeCodec:
    """Keeps what it was asked to encode (the messages' bytes do not matter here)."""

    def __init__(self) -> None:
        self.dumped: list[dict[str, Any]] = []

    def dumps(self, record: dict[str, Any]) -> bytes:
        self.dumped.append(record)
        return b""
