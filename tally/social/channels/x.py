"""X (Twitter) API v2 posts: a lookup or search answer, `{"data": post or [posts],
"includes": {"users": [...]}}`, with `public_metrics` (the `tweet.fields` Tally needs:
created_at, author_id, public_metrics; the `author_id` expansion for handles)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tally.social.channels import Post, as_object, count, field, one_or_many, posted_at

CHANNEL = "x"
WHAT = "x post"


def adapt(document: Any) -> list[Post]:
    answer = as_object(document, WHAT)
    handles = {
        user["id"]: user["username"]
        for user in users_of(answer)
        if isinstance(user, Mapping)
        and isinstance(user.get("id"), str)
        and isinstance(user.get("username"), str)
    }
    posts = []
    for item in one_or_many(field(answer, "data", (dict, list), WHAT), WHAT):
        author_id = field(item, "author_id", str, WHAT)
        posts.append(
            {
                "post_id": field(item, "id", str, WHAT),
                "channel": CHANNEL,
                "author": handles.get(author_id, author_id),
                "text": field(item, "text", str, WHAT),
                "likes": count(item, "public_metrics.like_count", WHAT),
                # Retweets and quotes both put the post before another audience.
                "shares": count(item, "public_metrics.retweet_count", WHAT)
                + count(item, "public_metrics.quote_count", WHAT),
                "created_at_ms": posted_at(field(item, "created_at", str, WHAT), WHAT),
            }
        )
    return posts


def users_of(answer: Mapping[str, Any]) -> list[Any]:
    """The `includes.users` of an answer, if it has a list of them (handles are optional:
    without one, a post's author is its author id)."""
    includes = answer.get("includes")
    users = includes.get("users") if isinstance(includes, Mapping) else None
    return users if isinstance(users, list) else []
