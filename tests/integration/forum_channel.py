"""A channel adapter a deployment adds without touching Tally (TALLY_SOCIAL_CHANNELS names
this module): a forum's export format, which Tally does not ship. What a new network takes:
`CHANNEL`, and `adapt(document) -> list of standard posts`."""

from __future__ import annotations

from typing import Any

from tally.core.errors import ValidationError

CHANNEL = "forum"


def adapt(document: Any) -> list[dict[str, Any]]:
    try:
        message = document["message"]
        return [
            {
                "post_id": f"{document['thread']}-{message['msg_id']}",
                "channel": CHANNEL,
                "author": message["user"]["name"],
                "text": message["body"],
                "likes": message.get("upvotes", 0),
                "shares": message.get("reposts", 0),
                "created_at_ms": message["posted"],
            }
        ]
    except (KeyError, TypeError) as exc:
        raise ValidationError(f"forum message without {exc}", "bad_post") from None


def document(post: dict[str, Any]) -> dict[str, Any]:
    """A standard post as the forum exports it (for the test that feeds it)."""
    thread, _, msg_id = post["post_id"].partition("-")
    return {
        "thread": thread,
        "message": {
            "msg_id": int(msg_id),
            "user": {"name": post["author"]},
            "body": post["text"],
            "upvotes": post["likes"],
            "reposts": post["shares"],
            "posted": post["created_at_ms"],
        },
    }
