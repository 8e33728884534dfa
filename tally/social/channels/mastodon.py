"""Mastodon statuses (`GET /api/v1/statuses/:id`, timelines, streaming `update` payloads):
one status object or a list of them. The content is HTML: Tally scores its text."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from tally.social.channels import Post, count, field, one_or_many, posted_at

CHANNEL = "mastodon"
WHAT = "mastodon status"


class TextOf(HTMLParser):
    """The text of a status's HTML: paragraphs and line breaks as line ends, entities
    resolved, tags dropped (a link's text stays: '#tag', '@user', the URL)."""

    BREAKS = frozenset({"br", "p"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BREAKS and self.parts:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def text(self) -> str:
        return "".join(self.parts).strip()


def plain_text(html: str) -> str:
    parser = TextOf()
    parser.feed(html)
    parser.close()
    return parser.text()


def adapt(document: Any) -> list[Post]:
    posts = []
    for status in one_or_many(document, WHAT):
        posts.append(
            {
                "post_id": field(status, "id", str, WHAT),
                "channel": CHANNEL,
                "author": field(status, "account.acct", str, WHAT),
                "text": plain_text(field(status, "content", str, WHAT)),
                "likes": count(status, "favourites_count", WHAT),
                "shares": count(status, "reblogs_count", WHAT),
                "created_at_ms": posted_at(field(status, "created_at", str, WHAT), WHAT),
            }
        )
    return posts
