"""Channel adapters: each network's post JSON → standard posts (the SocialPost schema's
fields). No Faust.

An adapter is a module with `CHANNEL` (its name: the `tally.channel` header of a raw post
names it) and `adapt(document) -> list of posts` (a message may hold one post or a page of
them), raising `ValidationError` with a reason a person can act on. A new network is one such
module plus one line in `BUILT_IN`; a deployment adds its own without touching Tally by
naming modules in TALLY_SOCIAL_CHANNELS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from tally.core.errors import ConfigurationError, ValidationError

#: A standard post (the SocialPost schema's fields, tenant aside).
Post = dict[str, Any]
Adapter = Callable[[Any], list[Post]]

#: The adapters Tally ships: one module each.
BUILT_IN = (
    "tally.social.channels.x",
    "tally.social.channels.mastodon",
)


def load_channels(modules: Iterable[str]) -> dict[str, Adapter]:
    """channel name → adapter, from modules with `CHANNEL` and `adapt`; `ConfigurationError`
    naming the module when one cannot be used."""
    adapters: dict[str, Adapter] = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"channel adapter module {name!r} cannot be imported: {exc}"
            ) from None
        channel = getattr(module, "CHANNEL", None)
        adapt = getattr(module, "adapt", None)
        if not isinstance(channel, str) or not callable(adapt):
            raise ConfigurationError(
                f"channel adapter module {name!r} must define CHANNEL (its name) and "
                "adapt(document) -> list of posts"
            )
        if channel in adapters:
            raise ConfigurationError(f"two channel adapters are named {channel!r}")
        adapters[channel] = adapt
    return adapters


# --- what adapters share -------------------------------------------------------------------


#: What `lookup` finds where a document has nothing.
MISSING = object()


def lookup(document: Mapping[str, Any], path: str) -> Any:
    """`document`'s value at the dotted `path`, or MISSING."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def field(document: Mapping[str, Any], path: str, kind: type | tuple[type, ...], what: str) -> Any:
    """`document`'s value at the dotted `path`, of type `kind`; a `ValidationError` naming
    the path and the channel's post (`what`) when it is missing or of another type."""
    value = lookup(document, path)
    if value is MISSING:
        raise ValidationError(f"{what} without {path}", "bad_post")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValidationError(
            f"{what}: {path} must be {kind_name(kind)}, got {type(value).__name__}", "bad_post"
        )
    return value


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "a whole number", dict: "an object", list: "a list"}
    return " or ".join(names.get(each, each.__name__) for each in kinds)


def count(document: Mapping[str, Any], path: str, what: str) -> int:
    """A count that may be absent (0): networks leave out counts they do not know."""
    if lookup(document, path) is MISSING:
        return 0
    return int(field(document, path, int, what))


def posted_at(text: str, what: str) -> int:
    """An ISO 8601 time with its zone (networks give UTC, "Z") as epoch ms."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{what}: created_at {text[:40]!r} is not an ISO 8601 time", "bad_time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def as_object(document: Any, what: str) -> Mapping[str, Any]:
    """The document a message holds, if it is a JSON object."""
    if not isinstance(document, Mapping):
        raise ValidationError(
            f"{what}: expected a JSON object, got {type(document).__name__}", "bad_post"
        )
    return document


def one_or_many(value: Any, what: str) -> list[Mapping[str, Any]]:
    """A page's posts: one object, or a list of them."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, Mapping) for item in items):
        raise ValidationError(f"{what}: expected a post object or a list of them", "bad_post")
    return items
