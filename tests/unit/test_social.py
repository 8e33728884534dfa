"""The social pipeline's pure parts: mining, sentiment classes, the alert rule, a minute's
figures (merged in any order = counted at once), alert transitions, channel adapters and the
first stage's checks."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tally.codecs.avro import AvroCodec, load_schema
from tally.codecs.registry import FileSchemaRegistry
from tally.core.errors import ConfigurationError, DecodeError, ValidationError
from tally.core.social import (
    TOP_NEGATIVE,
    AlertConflict,
    AlertPolicy,
    MinuteFigures,
    mine,
    open_alert,
    sentiment_of,
    transition,
)
from tally.feed import social_posts
from tally.social.channels import BUILT_IN, load_channels
from tally.social.channels.mastodon import plain_text
from tally.social.posts import scored, standard_posts

ADAPTERS = load_channels(BUILT_IN)


def test_mining_finds_tags_mentions_links_once_each_and_weighs_shares() -> None:
    mined = mine(
        "Broken again @Acme @acme #Fail #fail see https://acme.example/help, mail a@b.c #2day",
        likes=10,
        shares=3,
    )
    assert mined.hashtags == ("fail", "2day")
    assert mined.mentions == ("acme",)  # an e-mail address is not a mention
    assert mined.links == ("https://acme.example/help",)
    assert mined.reach == 10 + 5 * 3


def test_sentiment_classes_are_vaders_cut_offs() -> None:
    assert [sentiment_of(c) for c in (0.05, 0.0499, -0.0499, -0.05)] == [
        "positive",
        "neutral",
        "neutral",
        "negative",
    ]


def test_an_alert_needs_a_negative_score_weighted_by_reach() -> None:
    policy = AlertPolicy(-1.0)
    assert policy.alerts(-1.0, 0) and not policy.alerts(-0.9, 0)
    assert policy.alerts(-0.26, 999)  # 1 + log10(1000) = 4
    assert not policy.alerts(-0.24, 999)
    assert not policy.alerts(0.9, 10**9)  # never a positive post, whatever its reach
    assert not AlertPolicy(0.5).alerts(0.0, 0)  # nor a neutral one, whatever the threshold


post_strategy = st.fixed_dictionaries(
    {
        "post_id": st.text("abc123", min_size=1, max_size=4),
        "author": st.sampled_from(["ann", "bob"]),
        "text": st.sampled_from(["bad", "good", "meh"]),
        "shares": st.integers(0, 20),
        "compound": st.integers(-10_000, 10_000).map(lambda units: units / 10_000),
    }
).map(lambda post: {**post, "sentiment": sentiment_of(post["compound"])})


@given(st.lists(post_strategy, max_size=40, unique_by=lambda p: p["post_id"]), st.randoms())
def test_a_minute_merged_from_any_split_equals_the_minute_counted_at_once(
    posts: list[dict[str, Any]], rng: random.Random
) -> None:
    whole = MinuteFigures()
    for post in posts:
        whole.add(post)
    parts = [MinuteFigures() for _ in range(3)]
    for post in posts:
        rng.choice(parts).add(post)
    rng.shuffle(parts)
    merged = MinuteFigures()
    for part in parts:
        merged.merge(MinuteFigures.from_record(orjson.loads(orjson.dumps(part.to_record()))))
    assert merged == whole
    negative = sorted(
        (p for p in posts if p["sentiment"] == "negative"),
        key=lambda p: (-p["shares"], p["post_id"]),
    )
    assert [entry[1] for entry in whole.top_negative] == [
        p["post_id"] for p in negative[:TOP_NEGATIVE]
    ]
    answer = whole.answer()
    assert answer["posts"] == len(posts)
    if posts:
        exact = sum(round(p["compound"] * 10_000) for p in posts) / len(posts) / 10_000
        assert answer["mean_score"] == round(exact, 4)


def alert() -> dict[str, Any]:
    post = {
        "channel": "x",
        "post_id": "1",
        "author": "ann",
        "text": "awful",
        "compound": -0.8,
        "reach": 3,
        "created_at_ms": 1,
    }
    return open_alert(post, -1.3, "acme", at_ms=10)


def test_an_alert_is_acked_then_resolved_and_each_step_is_kept() -> None:
    acked = transition(alert(), "ack", "care-1", 20, "looking")
    resolved = transition(acked, "resolve", "care-2", 30)
    assert resolved["status"] == "resolved"
    assert [(h["status"], h["by"], h["at_ms"]) for h in resolved["history"]] == [
        ("open", "tally", 10),
        ("acked", "care-1", 20),
        ("resolved", "care-2", 30),
    ]
    assert transition(alert(), "resolve", "care-1", 20)["status"] == "resolved"
    with pytest.raises(AlertConflict, match="resolved"):
        transition(resolved, "ack", "care-1", 40)
    with pytest.raises(AlertConflict):
        transition(acked, "ack", "care-1", 40)
    with pytest.raises(ValidationError, match="not one of"):
        transition(alert(), "delete", "care-1", 40)
    with pytest.raises(ValidationError, match="note"):
        transition(alert(), "ack", "care-1", 40, "x" * 1001)


X_PAGE = {
    "data": [
        {
            "id": "1",
            "text": "Terrible support @acme #fail",
            "author_id": "7",
            "created_at": "2026-12-05T14:00:00.250Z",
            "public_metrics": {"like_count": 4, "retweet_count": 2, "quote_count": 1},
        },
        {"id": "2", "text": "ok", "author_id": "8", "created_at": "2026-12-05T14:01:00Z"},
    ],
    "includes": {"users": [{"id": "7", "username": "ann"}]},
}


def test_an_x_page_becomes_standard_posts() -> None:
    posts = ADAPTERS["x"](X_PAGE)
    assert posts == [
        {
            "post_id": "1",
            "channel": "x",
            "author": "ann",
            "text": "Terrible support @acme #fail",
            "likes": 4,
            "shares": 3,
            "created_at_ms": 1_796_479_200_250,
        },
        {  # no handle in includes: the author id; no metrics: zero
            "post_id": "2",
            "channel": "x",
            "author": "8",
            "text": "ok",
            "likes": 0,
            "shares": 0,
            "created_at_ms": 1_796_479_260_000,
        },
    ]


def test_a_mastodon_status_is_read_as_its_text() -> None:
    html = (
        '<p>So slow &amp; rude <span class="h-card"><a href="https://m.example/@acme">@<span>acme'
        '</span></a></span> <a href="https://m.example/tags/fail" rel="tag">#<span>fail</span>'
        "</a></p><p>never again<br>bye</p>"
    )
    assert plain_text(html) == "So slow & rude @acme #fail\nnever again\nbye"
    status = {
        "id": "109",
        "created_at": "2026-12-05T14:00:00.000Z",
        "content": html,
        "account": {"acct": "bob@mastodon.example"},
        "favourites_count": 2,
        "reblogs_count": 1,
    }
    (post,) = ADAPTERS["mastodon"](status)
    assert (post["author"], post["likes"], post["shares"]) == ("bob@mastodon.example", 2, 1)


@pytest.mark.parametrize(
    ("channel", "document", "says"),
    [
        ("x", {"data": {"id": "1"}}, "x post without author_id"),
        ("x", {"data": {"id": 1, "author_id": "2"}}, "id must be a string"),
        ("x", [], "expected a JSON object"),
        ("mastodon", {"id": "1", "content": "<p>x</p>"}, "without account.acct"),
        (
            "mastodon",
            {"id": "1", "content": "", "account": {"acct": "a"}, "created_at": "yesterday"},
            "not an ISO 8601 time",
        ),
        (
            "mastodon",
            {
                "id": "1",
                "content": "",
                "account": {"acct": "a"},
                "created_at": "2026-12-05T14:00:00Z",
                "favourites_count": "many",
            },
            "favourites_count must be a whole number",
        ),
    ],
)
def test_a_malformed_post_is_refused_with_what_is_wrong(
    channel: str, document: Any, says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        ADAPTERS[channel](document)


def test_a_raw_message_without_a_known_channel_or_json_is_refused_clearly(tmp_path: Any) -> None:
    value = orjson.dumps(X_PAGE)
    with pytest.raises(ValidationError, match=r"no tally\.channel header"):
        standard_posts(value, b"acme", None, ADAPTERS, lambda data: {})
    with pytest.raises(ValidationError, match="names no channel adapter; known: mastodon, x"):
        standard_posts(value, b"acme", "myspace", ADAPTERS, lambda data: {})
    with pytest.raises(DecodeError, match="not a JSON x post"):
        standard_posts(b"{nope", b"acme", "x", ADAPTERS, lambda data: {})
    with pytest.raises(ValidationError, match="not a tenant name"):
        standard_posts(value, b"a|b", "x", ADAPTERS, lambda data: {})
    negative = {**X_PAGE["data"][0], "public_metrics": {"like_count": -1}}
    with pytest.raises(ValidationError, match="likes must be >= 0"):
        standard_posts(orjson.dumps({"data": negative}), b"acme", "x", ADAPTERS, lambda d: {})
    # A standard post already, as Avro: taken as it is (no channel header needed).
    codec = AvroCodec(FileSchemaRegistry(tmp_path), "social-raw-value", load_schema("social_post"))
    post = {**ADAPTERS["x"](X_PAGE)[0], "tenant": "acme"}
    assert standard_posts(codec.dumps(post), None, None, ADAPTERS, codec.loads) == [post]


def test_channel_modules_must_name_themselves_and_adapt() -> None:
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        load_channels(["tally.social.channels.nowhere"])
    with pytest.raises(ConfigurationError, match="must define CHANNEL"):
        load_channels(["tally.social.posts"])
    with pytest.raises(ConfigurationError, match="two channel adapters are named 'x'"):
        load_channels([*BUILT_IN, "tally.social.channels.x"])


def test_the_feeds_network_documents_read_back_as_the_posts_it_made() -> None:
    """The sample feed writes each network's format; its adapter reads back the same posts,
    scored as VADER scores their text."""
    vader = SentimentIntensityAnalyzer()
    feed = social_posts(random.Random(3), clock_ms=lambda: 1_796_479_200_123, brands=("a", "b"))
    for raw in (next(feed) for _ in range(300)):
        posts = standard_posts(raw.value, raw.brand.encode(), raw.channel, ADAPTERS, dict)
        assert posts == [{**post, "tenant": raw.brand} for post in raw.posts]
        for post in posts:
            assert scored(post)["compound"] == vader.polarity_scores(post["text"])["compound"]
