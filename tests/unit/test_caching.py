"""Validators and freshness of query answers (tally.http.caching)."""

from __future__ import annotations

from tally.http.caching import KeptAnswers, cache_control, matches, named_tag, strong_etag


def test_an_etag_names_the_bytes_and_the_generation() -> None:
    assert strong_etag(b'{"a":1}', "1") == strong_etag(b'{"a":1}', "1")
    assert strong_etag(b'{"a":1}', "1") != strong_etag(b'{"a":2}', "1")
    assert strong_etag(b'{"a":1}', "1") != strong_etag(b'{"a":1}', "2")
    assert strong_etag(b"", "1").startswith('"') and strong_etag(b"", "1").endswith('"')


def test_if_none_match_is_honoured_for_one_tag_compared_weakly() -> None:
    """One tag only: a worker relaying the owner's 304 must know which ETag it carries."""
    tag = strong_etag(b"x", "1")
    assert matches(tag, tag) and matches(f" W/{tag} ", tag)
    assert named_tag(f"W/{tag}") == tag
    for other in (None, "", '"other"', "*", f'"other", {tag}'):
        assert not matches(other, tag), other
        assert other == '"other"' or named_tag(other) is None


def test_cache_control_says_how_long_how_much_longer_while_revalidating_or_to_revalidate() -> None:
    assert cache_control(1, 0, authenticated=False) == "public, max-age=1"
    assert cache_control(1, 0, authenticated=True) == "max-age=1"  # never handed to another token
    assert cache_control(2, 1, authenticated=True) == "max-age=2, stale-while-revalidate=1"
    assert cache_control(1, 1, authenticated=False) == "public, max-age=1, stale-while-revalidate=1"
    assert cache_control(0, 1, authenticated=True) == "no-cache"


def test_a_kept_answer_is_built_again_only_for_another_version_or_after_invalidation() -> None:
    built: list[int] = []

    def build(n: int) -> bytes:
        built.append(n)
        return str(n).encode()

    kept = KeptAnswers(limit=2)
    assert kept.get("a", 1, lambda: build(1)) == b"1"
    assert kept.get("a", 1, lambda: build(2)) == b"1"
    assert kept.get("a", 2, lambda: build(3)) == b"3"  # the state changed
    assert kept.get("a", 1, lambda: build(4)) == b"4"  # only the newest build is kept
    kept.invalidate()
    assert kept.get("a", 1, lambda: build(5)) == b"5"
    assert built == [1, 3, 4, 5]


def test_kept_answers_keep_the_most_recently_used_up_to_their_limit() -> None:
    kept = KeptAnswers(limit=2)
    kept.get("a", 0, lambda: b"a")
    kept.get("b", 0, lambda: b"b")
    kept.get("a", 0, lambda: b"rebuilt a")  # used: "b" is now the least recent
    kept.get("c", 0, lambda: b"c")
    assert len(kept) == 2
    assert kept.get("a", 0, lambda: b"rebuilt a") == b"a"
    assert kept.get("b", 0, lambda: b"rebuilt b") == b"rebuilt b"
