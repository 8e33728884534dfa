"""A Confluent-compatible schema-registry API over this worker's registry, at `/registry`.

The subset producers and consumers use: subjects, versions, register, schema by id, with
Confluent's error codes. `HttpSchemaRegistry` is a client of it (or of a real Confluent one).
Every path parameter is checked before it reaches the registry (a subject of any length, a
version or id of any number of digits is a 4xx, never a 500), and a body is read up to
REGISTRY_MAX_BYTES (413 beyond).
"""

from __future__ import annotations

import json
from typing import Any

from faust.web import Request, Response, View

from tally.app import app
from tally.codecs.catalog import registry
from tally.codecs.registry import canonical_text, positive_id, subject_problem
from tally.core.errors import BodyTimeout, SchemaError, UnknownSchemaError, UnreadableBody
from tally.http.hygiene import REGISTRY_MAX_BYTES, read_body, too_large

SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
#: Confluent has no codes of its own for these; the HTTP status is used.
BODY_TOO_LARGE = 413
BODY_TIMEOUT = 408


def error(view: View, status: int, code: int, message: str) -> Response:
    return view.json({"error_code": code, "message": message}, status=status)


def subject_not_found(view: View, subject: str) -> Response:
    return error(view, 404, SUBJECT_NOT_FOUND, f"subject {subject[:300]!r} not found")


def bad_subject(view: View, subject: str) -> Response | None:
    """A 404 naming what is wrong with the subject, or None when it can be one."""
    problem = subject_problem(subject)
    return None if problem is None else error(view, 404, SUBJECT_NOT_FOUND, problem)


@app.page("/registry/subjects")
class Subjects(View):
    async def get(self, request: Request) -> Response:
        return self.json(registry().subjects())


@app.page("/registry/subjects/{subject}/versions")
class SubjectVersions(View):
    async def get(self, request: Request, subject: str) -> Response:
        refused = bad_subject(self, subject)
        if refused is not None:
            return refused
        versions = registry().versions(subject)
        if not versions:
            return subject_not_found(self, subject)
        return self.json(list(range(1, len(versions) + 1)))

    async def post(self, request: Request, subject: str) -> Response:
        problem = subject_problem(subject)
        if problem is not None:
            return error(self, 422, INVALID_SCHEMA, problem)
        try:
            body = await read_body(request, REGISTRY_MAX_BYTES, 0)  # type: ignore[arg-type]
        except BodyTimeout as exc:
            return error(self, 408, BODY_TIMEOUT, str(exc))
        except UnreadableBody as exc:
            return error(self, 422, INVALID_SCHEMA, str(exc))
        if not body.complete:
            return error(self, 413, BODY_TOO_LARGE, str(too_large(body, REGISTRY_MAX_BYTES)))
        try:
            document: Any = json.loads(body.data)
            schema = json.loads(document["schema"])
            canonical_text(schema)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            return error(
                self,
                422,
                INVALID_SCHEMA,
                "body must be {'schema': '<Avro JSON>'} holding a valid Avro schema: "
                f"{type(exc).__name__}: {str(exc)[:300]}",
            )
        except Exception as exc:  # fastavro's SchemaParseException and friends
            return error(self, 422, INVALID_SCHEMA, f"invalid Avro schema: {str(exc)[:300]}")
        try:
            return self.json({"id": registry().register(subject, schema)})
        except SchemaError as exc:
            return error(self, 409, INVALID_SCHEMA, str(exc))


@app.page("/registry/subjects/{subject}/versions/{version}")
class SubjectVersion(View):
    async def get(self, request: Request, subject: str, version: str) -> Response:
        refused = bad_subject(self, subject)
        if refused is not None:
            return refused
        number = -1 if version in ("latest", "-1") else positive_id(version)
        if number is None:
            return error(
                self,
                422,
                INVALID_VERSION,
                f"the version {version[:40]!r} is not a valid version id: allowed are 1 to "
                "2147483647 and 'latest'",
            )
        versions = registry().versions(subject)
        if not versions:
            return subject_not_found(self, subject)
        number = len(versions) if number == -1 else number
        if number > len(versions):
            return error(
                self,
                404,
                VERSION_NOT_FOUND,
                f"subject {subject!r} has no version {number} (versions 1-{len(versions)} "
                "or 'latest')",
            )
        schema_id = versions[number - 1]
        schema = canonical_text(registry().schema(schema_id))
        return self.json({"subject": subject, "version": number, "id": schema_id, "schema": schema})


@app.page("/registry/schemas/ids/{schema_id}")
class SchemaById(View):
    async def get(self, request: Request, schema_id: str) -> Response:
        number = positive_id(schema_id)
        try:
            if number is None:
                raise UnknownSchemaError(schema_id)
            schema = registry().schema(number)
        except UnknownSchemaError:
            return error(self, 404, SCHEMA_NOT_FOUND, f"schema id {schema_id[:40]!r} not found")
        return self.json({"schema": canonical_text(schema)})
