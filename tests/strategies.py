"""Hypothesis strategies the ingest tests share: any JSON, and good rows made bad."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond int64 both ways
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """`base` as it is, with one field dropped, one replaced by any JSON or one added; or any
    JSON at all."""
    keys = sorted(base)
    return st.one_of(
        st.just(base),
        st.sampled_from(keys).map(lambda k: {n: v for n, v in base.items() if n != k}),
        st.tuples(st.sampled_from(keys), JSON).map(lambda kv: {**base, kv[0]: kv[1]}),
        st.tuples(st.text(max_size=6), JSON).map(lambda kv: {**base, kv[0]: kv[1]}),
        JSON,
    )


#: Ids as a hostile producer sends them: any code point (unpaired surrogates, controls, the
#: key separator, line separators), any length up to twice the limit, or one far over it.
HOSTILE_IDS = st.one_of(
    st.text(st.characters(blacklist_categories=()), max_size=40),
    st.text(st.characters(max_codepoint=0x7F), min_size=250, max_size=520),
    st.sampled_from(["a|b", "a\x00b", "a\r\nb", "a\u2028b", "\ud800", "", "x" * 250_000]),
)
