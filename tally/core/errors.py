"""Tally's errors: one root, one line each on when it is raised."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TallyError(Exception):
    """Root of every error Tally raises on purpose.

    `rule` is a short, stable code of what was wrong (the message has the details): dead
    letters, rejected rows and Prometheus count by it, so its values must stay few.
    """

    rule = "error"


class ConfigurationError(TallyError):
    """A setting or command-line value is unusable; the message names it and the rule."""


class BrokerError(TallyError):
    """The local broker could not be started, reached or stopped."""


class SchemaError(TallyError):
    """A schema is invalid, unknown, or incompatible with a registered one."""

    rule = "schema"


class UnknownSchemaError(SchemaError):
    """A message names a schema id that the registry does not hold."""


class DecodeError(TallyError):
    """A message's bytes do not decode as expected: a Confluent-framed Avro record of the
    expected schema (what producers send), or a JSON list of records (codecs.handover)."""

    rule = "undecodable"


class ValidationError(TallyError):
    """A record breaks a rule: its shape (missing field, wrong type) or one the schema cannot
    express (ranges, finiteness, time); `rule` says which kind."""

    def __init__(self, message: str, rule: str = "invalid") -> None:
        super().__init__(message)
        self.rule = rule
        #: The decoded record that broke it, when there is one (its dead letter names whose
        #: it was).
        self.record: Mapping[str, Any] | None = None


class UnreadableBody(TallyError):
    """An HTTP body as a whole cannot be read (answered 400): not UTF-8, not JSON, bad gzip."""

    rule = "unreadable_body"


class BodyTooLarge(TallyError):
    """An HTTP body is over its size limit, or holds more rows than one request may (413)."""

    rule = "body_too_large"


class UnsupportedBody(TallyError):
    """An HTTP body in a media type or content encoding the endpoint does not take (415)."""

    rule = "unsupported_media_type"


class BodyTimeout(TallyError):
    """An HTTP body did not arrive in time (408)."""

    rule = "body_timeout"


class StateConflict(TallyError):
    """A change a person asked for does not apply to the thing in its present state
    (resolving a resolved alert, deciding a decided order): HTTP 409."""

    rule = "conflict"
