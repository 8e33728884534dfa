"""What one event may hold (tally.core.limits): ids, metadata, record sizes, message chunks."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.core.errors import ValidationError
from tally.core.limits import (
    MAX_ID_BYTES,
    MAX_RECORD_BYTES,
    REFUSED_CATEGORIES,
    RecordTooLarge,
    bounded_chunks,
    check_id,
    check_metadata,
    check_record_size,
    id_problem,
)
from tests.strategies import HOSTILE_IDS


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "must not be empty"),
        ("x" * (MAX_ID_BYTES + 1), "257 bytes in UTF-8"),
        ("€" * 86, "258 bytes in UTF-8"),  # 86 characters, 3 bytes each
        ("a|b", "must not contain '|'"),
        ("a\x00b", "found U+0000"),
        ("line\nbreak", "found U+000A"),
        ("del\x7f", "found U+007F"),
        ("c1\x85", "found U+0085"),
        ("sep\u2029", "found U+2029"),
        ("\udc80", "unpaired surrogate"),
    ],
)
def test_an_unusable_id_is_named_with_what_is_wrong(value: str, says: str) -> None:
    problem = id_problem(value)
    assert problem is not None and says in problem
    with pytest.raises(ValidationError, match="item_id") as raised:
        check_id("item_id", value)
    assert raised.value.rule == "bad_id"
    assert len(str(raised.value)) < 300, "a reason quotes a long id only in part"


@pytest.mark.parametrize(
    "value", ["item-00042", "x" * MAX_ID_BYTES, "größe/ü", "web-1.example.com", "a b", "😀"]
)
def test_usable_ids(value: str) -> None:
    assert id_problem(value) is None


@given(HOSTILE_IDS)
def test_an_accepted_id_fits_a_key_and_the_limit(value: str) -> None:
    if id_problem(value) is None:
        encoded = value.encode("utf-8")  # has a UTF-8 form
        assert 0 < len(encoded) <= MAX_ID_BYTES
        assert "|" not in value
        assert not {unicodedata.category(c) for c in value} & REFUSED_CATEGORIES


def test_metadata_limits() -> None:
    check_metadata({f"k{n}": "v" * 1024 for n in range(32)})
    for bad, says in [
        ({f"k{n}": "v" for n in range(33)}, "33 entries"),
        ({"k": "v" * 1025}, "at most 1,024"),
        ({"k" * 257: "v"}, "1 to 256 bytes"),
        ({"": "v"}, "1 to 256 bytes"),
        ({"k": "\ud800"}, "unpaired surrogate"),
    ]:
        with pytest.raises(ValidationError, match=says) as raised:
            check_metadata(bad)
        assert raised.value.rule == "bad_metadata"


def test_a_record_over_the_limit_is_refused_with_its_size() -> None:
    check_record_size("x", b"k", b"v" * (MAX_RECORD_BYTES - 1))
    with pytest.raises(RecordTooLarge, match=f"{MAX_RECORD_BYTES + 1:,} bytes") as raised:
        check_record_size("table t record k", b"k", b"v" * MAX_RECORD_BYTES)
    assert raised.value.rule == "too_large"


@given(
    st.lists(st.integers(min_value=0, max_value=50)),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=60),
)
def test_chunks_keep_order_and_bounds(sizes: list[int], max_items: int, max_bytes: int) -> None:
    chunks = bounded_chunks(list(enumerate(sizes)), lambda item: item[1], max_items, max_bytes)
    assert [item for chunk in chunks for item in chunk] == list(enumerate(sizes))
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_items
        assert len(chunk) == 1 or sum(size for _, size in chunk) <= max_bytes
