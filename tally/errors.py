"""Tally's errors: one root, one line each on when it is raised."""


class TallyError(Exception):
    """Root of every error Tally raises on purpose."""


class ConfigurationError(TallyError):
    """A setting or command-line value is unusable; the message names it and the rule."""


class BrokerError(TallyError):
    """The local broker could not be started, reached or stopped."""


class SchemaError(TallyError):
    """A schema is invalid, unknown, or incompatible with a registered one."""


class UnknownSchemaError(SchemaError):
    """A message names a schema id that the registry does not hold."""


class DecodeError(TallyError):
    """A message's bytes are not a valid Confluent-framed Avro record of the expected schema."""


class ValidationError(TallyError):
    """A decoded record breaks a rule the schema cannot express (ranges, finiteness, time)."""
