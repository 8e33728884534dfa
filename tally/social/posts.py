"""One raw message → its standard posts, scored: what the social pipeline's first stage does
with each message, with no Faust (the feed, tests and benchmarks use it as the agent does).

A raw message is either a network's post JSON (one post or a page), its adapter named by
the `tally.channel` header, or a standard post already (Avro SocialPost, Confluent framing:
an in-house collector that normalised it itself). Its key names the brand (tenant) it is
about; no key: the deployment's default tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import orjson
from fastavro import parse_schema
from fastavro.validation import validate
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tally.codecs.avro import MAGIC_BYTE, Record, load_schema
from tally.core.errors import DecodeError, ValidationError
from tally.core.social import check_post, mine, sentiment_of
from tally.core.tenancy import check_tenant_name
from tally.social.channels import Adapter

#: The header naming a raw post's network (its adapter).
CHANNEL_HEADER = "tally.channel"
#: The standard post's fields, in the schema's order.
POST_FIELDS = tuple(field["name"] for field in load_schema("social_post")["fields"])
#: What the first stage adds to a standard post: its score and what was mined.
SCORED_FIELDS = (*POST_FIELDS, "compound", "sentiment", "reach", "hashtags", "mentions", "links")


@cache
def analyzer() -> SentimentIntensityAnalyzer:
    """VADER, its lexicon loaded once (from its wheel: nothing is downloaded)."""
    return SentimentIntensityAnalyzer()


@cache
def post_schema() -> Any:
    return parse_schema(load_schema("social_post"))


def score(text: str) -> float:
    """VADER's compound score of `text`, -1 (most negative) to 1."""
    return float(analyzer().polarity_scores(text)["compound"])


def scored(post: Mapping[str, Any]) -> Record:
    """A standard post with its score, sentiment class and mined attributes."""
    compound = score(post["text"])
    mined = mine(post["text"], post["likes"], post["shares"])
    return {
        **post,
        "compound": compound,
        "sentiment": sentiment_of(compound),
        "reach": mined.reach,
        "hashtags": list(mined.hashtags),
        "mentions": list(mined.mentions),
        "links": list(mined.links),
    }


def checked(post: Record) -> Record:
    """The post if it fits the SocialPost schema and Tally's rules; `ValidationError` else."""
    if not validate(post, post_schema(), raise_errors=False):
        fields = ", ".join(f"{name}: {type(post.get(name)).__name__}" for name in POST_FIELDS)
        raise ValidationError(f"post does not fit tally.social.SocialPost ({fields})", "bad_post")
    check_post(post)
    check_tenant_name(post["tenant"])
    return post


def standard_posts(
    value: bytes | None,
    key: bytes | None,
    channel: str | None,
    adapters: Mapping[str, Adapter],
    decode_avro: Callable[[bytes], Record],
) -> list[Record]:
    """The standard posts of one raw message, each checked; `DecodeError` or
    `ValidationError` (with a reason a person can act on) when it has none usable."""
    if not value:
        raise DecodeError("message has no value")
    if channel is None and value[:1] == bytes([MAGIC_BYTE]):
        return [checked(decode_avro(value))]
    if channel is None:
        raise ValidationError(
            f"no {CHANNEL_HEADER} header: set it to the post's network "
            f"({', '.join(sorted(adapters))}), or send an Avro tally.social.SocialPost",
            "unknown_channel",
        )
    adapt = adapters.get(channel)
    if adapt is None:
        raise ValidationError(
            f"{CHANNEL_HEADER} {channel[:60]!r} names no channel adapter; known: "
            f"{', '.join(sorted(adapters))} (TALLY_SOCIAL_CHANNELS adds more)",
            "unknown_channel",
        )
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not a JSON {channel} post: {exc}") from None
    brand = brand_of(key)
    return [checked({**post, "tenant": brand}) for post in adapt(document)]


def brand_of(key: bytes | None) -> str:
    """The brand a raw post's key names ("" for none: the default tenant's)."""
    if not key:
        return ""
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise ValidationError(
            "the message key (the brand) is not UTF-8 text", "bad_tenant"
        ) from None
