"""Validators and freshness of query answers (tally.http.caching)."""

from __future__ import annotations

from tally.http.caching import LastAnswer, cache_control, matches, strong_etag


def test_an_etag_names_the_bytes() -> None:
    assert strong_etag(b'{"a":1}') == strong_etag(b'{"a":1}')
    assert strong_etag(b'{"a":1}') != strong_etag(b'{"a":2}')
    assert strong_etag(b"").startswith('"') and strong_etag(b"").endswith('"')


def test_if_none_match_is_compared_weakly_and_takes_a_list_or_a_star() -> None:
    tag = strong_etag(b"x")
    assert matches(tag, tag)
    assert matches(f'"other", W/{tag}', tag)
    assert matches("*", tag)
    assert not matches(None, tag) and not matches("", tag) and not matches('"other"', tag)


def test_cache_control_says_how_long_or_to_revalidate() -> None:
    assert cache_control(1) == "public, max-age=1"
    assert cache_control(0) == "no-cache"


def test_the_last_answer_is_built_again_only_for_other_parameters_or_new_state() -> None:
    built: list[int] = []

    def build(n: int) -> bytes:
        built.append(n)
        return str(n).encode()

    last = LastAnswer()
    assert last.get(("k", 10), lambda: build(1)) == (b"1", strong_etag(b"1"))
    assert last.get(("k", 10), lambda: build(2))[0] == b"1"
    assert last.get(("k", 3), lambda: build(3))[0] == b"3"
    last.invalidate()
    assert last.get(("k", 3), lambda: build(4))[0] == b"4"
    assert built == [1, 3, 4]
