"""Social posts as the sentiment pipeline sees them: what is mined from a post, its sentiment
class, whether it is an alert, a brand's figures of a minute, and an alert's life. No Faust.

Scores are VADER compound scores, which VADER rounds to four decimals: figures keep them as
integers of 1/10,000 (`score_units`), so a minute's sum is exact whatever order its posts
came in, and a mean read from the tables equals one computed over the same posts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tally.core.errors import StateConflict, ValidationError
from tally.core.limits import id_problem

#: VADER's own cut-offs of its compound score (its README): positive from 0.05, negative
#: up to -0.05, neutral between.
POSITIVE_FROM = 0.05
NEGATIVE_TO = -0.05
SENTIMENTS = ("positive", "neutral", "negative")
#: Compound scores as integers: VADER rounds them to four decimals.
SCORE_SCALE = 10_000
#: The most-shared negative posts a minute's figures keep (per brand and channel).
TOP_NEGATIVE = 5
#: How much of a post's text an alert or a minute's figures keep.
EXCERPT_CHARS = 280
#: The longest post text a pipeline takes (characters): networks allow far less.
MAX_TEXT_CHARS = 20_000

HASHTAG = re.compile(r"(?<![\w&/])#(\w+)")
MENTION = re.compile(r"(?<![\w/])@(\w+(?:@[\w.-]+\w)?)")
LINK = re.compile(r"https?://[^\s<>\"']+")


def sentiment_of(compound: float) -> str:
    """VADER's class of a compound score."""
    if compound >= POSITIVE_FROM:
        return "positive"
    if compound <= NEGATIVE_TO:
        return "negative"
    return "neutral"


def score_units(compound: float) -> int:
    return round(compound * SCORE_SCALE)


@dataclass(frozen=True)
class Mined:
    """What a post says beyond its text: tags, people named, links, and how far it went."""

    hashtags: tuple[str, ...]
    mentions: tuple[str, ...]
    links: tuple[str, ...]
    reach: int


#: What one share counts for in a post's reach.
SHARE_WEIGHT = 5


def reach_of(likes: int, shares: int) -> int:
    """How many people a post reached, as far as its counts tell: a share puts it in front of
    the sharer's audience, a like only counts itself, so a share weighs more."""
    return likes + SHARE_WEIGHT * shares


def mine(text: str, likes: int, shares: int) -> Mined:
    """Hashtags and mentions (lower-cased, each once, in order of appearance), links, reach."""
    return Mined(
        hashtags=tuple(dict.fromkeys(tag.lower() for tag in HASHTAG.findall(text))),
        mentions=tuple(dict.fromkeys(name.lower() for name in MENTION.findall(text))),
        links=tuple(dict.fromkeys(link.rstrip(".,;:!?)") for link in LINK.findall(text))),
        reach=reach_of(likes, shares),
    )


@dataclass(frozen=True)
class AlertPolicy:
    """Which posts customer care must see: a negative score weighted by reach (a post few
    saw must be very negative, a widely shared one only somewhat) at or below `threshold`."""

    threshold: float = -1.0

    def weighted(self, compound: float, reach: int) -> float:
        """The compound score times 1 + log10(1 + reach): reach 0 leaves it as it is, each
        tenfold reach adds the score once more."""
        return compound * (1.0 + math.log10(1 + max(reach, 0)))

    def alerts(self, compound: float, reach: int) -> bool:
        return compound <= NEGATIVE_TO and self.weighted(compound, reach) <= self.threshold


def check_post(post: Mapping[str, Any]) -> None:
    """`ValidationError` unless a standard post (the SocialPost schema's fields) can be
    scored and keyed: ids usable in keys, counts not negative, a text of bounded size."""
    for name in ("post_id", "channel", "author"):
        problem = id_problem(post[name])
        if problem is not None:
            raise ValidationError(f"{name} {problem}", f"bad_{name}")
    for name in ("likes", "shares"):
        if post[name] < 0:
            raise ValidationError(f"{name} must be >= 0, got {post[name]}", f"bad_{name}")
    if len(post["text"]) > MAX_TEXT_CHARS:
        raise ValidationError(
            f"text has {len(post['text']):,} characters; at most {MAX_TEXT_CHARS:,}",
            "bad_text",
        )
    if post["created_at_ms"] < 0:
        raise ValidationError("created_at_ms must be >= 0 (ms since the Unix epoch)", "bad_time")


def excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


#: A negative post as a minute keeps it: [shares, post_id, author, excerpt, score units].
NegativePost = list[Any]


def negative_rank(post: NegativePost) -> tuple[int, str]:
    """Most shared first; among equals, by post id (the same order whatever came first)."""
    return -post[0], post[1]


@dataclass
class MinuteFigures:
    """One brand's posts of one channel in one minute (or, merged, of several): counts by
    sentiment, the sum of their scores, and the most-shared negative posts."""

    positive: int = 0
    neutral: int = 0
    negative: int = 0
    score_units: int = 0
    top_negative: list[NegativePost] = field(default_factory=list)

    @property
    def posts(self) -> int:
        return self.positive + self.neutral + self.negative

    def add(self, post: Mapping[str, Any]) -> None:
        """A scored post in (its `compound` and `sentiment`)."""
        sentiment = post["sentiment"]
        setattr(self, sentiment, getattr(self, sentiment) + 1)
        units = score_units(post["compound"])
        self.score_units += units
        if sentiment == "negative":
            self.keep_negative(
                [[post["shares"], post["post_id"], post["author"], excerpt(post["text"]), units]]
            )

    def keep_negative(self, posts: Iterable[NegativePost]) -> None:
        kept = {entry[1]: entry for entry in [*self.top_negative, *posts]}
        self.top_negative = sorted(kept.values(), key=negative_rank)[:TOP_NEGATIVE]

    def merge(self, other: MinuteFigures) -> None:
        self.positive += other.positive
        self.neutral += other.neutral
        self.negative += other.negative
        self.score_units += other.score_units
        self.keep_negative(other.top_negative)

    def to_record(self) -> dict[str, Any]:
        return {
            "positive": self.positive,
            "neutral": self.neutral,
            "negative": self.negative,
            "score_units": self.score_units,
            "top_negative": self.top_negative,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> MinuteFigures:
        if not record:
            return cls()
        return cls(
            record["positive"],
            record["neutral"],
            record["negative"],
            record["score_units"],
            [list(entry) for entry in record["top_negative"]],
        )

    def answer(self) -> dict[str, Any]:
        posts = self.posts
        mean = None if posts == 0 else round(self.score_units / posts / SCORE_SCALE, 4)
        return {
            "posts": posts,
            "positive": self.positive,
            "neutral": self.neutral,
            "negative": self.negative,
            "mean_score": mean,
            "top_negative": [
                {
                    "post_id": post_id,
                    "author": author,
                    "shares": shares,
                    "compound": units / SCORE_SCALE,
                    "text": text,
                }
                for shares, post_id, author, text, units in self.top_negative
            ],
        }


# --- alerts ------------------------------------------------------------------------------

#: An alert's states: opened by the pipeline, acknowledged by a person, then resolved
#: (an open one may be resolved at once).
OPEN, ACKED, RESOLVED = "open", "acked", "resolved"
ALERT_STATES = (OPEN, ACKED, RESOLVED)
#: action → (the states it may be taken in, the state it leads to).
ACTIONS = {"ack": ((OPEN,), ACKED), "resolve": ((OPEN, ACKED), RESOLVED)}
#: The longest note a transition keeps (characters).
MAX_NOTE_CHARS = 1000


class AlertConflict(StateConflict):
    """The action does not apply to the alert in its state (resolving a resolved one)."""

    rule = "alert_conflict"


def alert_id(channel: str, post_id: str) -> str:
    """One alert per post: a post id is unique within its network."""
    return f"{channel}:{post_id}"


def open_alert(post: Mapping[str, Any], weighted: float, brand: str, at_ms: int) -> dict[str, Any]:
    """A new alert of a scored post, its opening the first entry of its history."""
    return {
        "id": alert_id(post["channel"], post["post_id"]),
        "brand": brand,
        "channel": post["channel"],
        "post_id": post["post_id"],
        "author": post["author"],
        "text": excerpt(post["text"]),
        "compound": post["compound"],
        "reach": post["reach"],
        "weighted_score": round(weighted, 4),
        "created_at_ms": post["created_at_ms"],
        "status": OPEN,
        "history": [{"status": OPEN, "at_ms": at_ms, "by": "tally", "note": ""}],
    }


def transition(
    alert: Mapping[str, Any], action: str, by: str, at_ms: int, note: str = ""
) -> dict[str, Any]:
    """The alert after `action` by `by`, the transition appended to its history;
    `AlertConflict` when its state does not allow it, `ValidationError` for an unknown action."""
    if action not in ACTIONS:
        raise ValidationError(f"action {action!r} is not one of {', '.join(ACTIONS)}", "bad_action")
    allowed, after = ACTIONS[action]
    if alert["status"] not in allowed:
        raise AlertConflict(
            f"alert {alert['id']!r} is {alert['status']}: {action} applies to "
            f"{' or '.join(allowed)} alerts only"
        )
    if len(note) > MAX_NOTE_CHARS:
        raise ValidationError(
            f"note has {len(note):,} characters; at most {MAX_NOTE_CHARS:,}", "bad_note"
        )
    entry = {"status": after, "at_ms": at_ms, "by": by, "note": note}
    return {**alert, "status": after, "history": [*alert["history"], entry]}
