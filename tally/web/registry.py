"""A Confluent-compatible schema-registry API over this worker's registry, at `/registry`.

The subset producers and consumers use: subjects, versions, register, schema by id, with
Confluent's error codes. `HttpSchemaRegistry` is a client of it (or of a real Confluent one).
"""

from __future__ import annotations

import json
from typing import Any

from faust.web import Request, Response, View

from tally.app import app
from tally.codecs.registry import canonical_text
from tally.errors import SchemaError, UnknownSchemaError
from tally.topics import registry

SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
INVALID_SCHEMA = 42201


def error(view: View, status: int, code: int, message: str) -> Response:
    return view.json({"error_code": code, "message": message}, status=status)


def subject_not_found(view: View, subject: str) -> Response:
    return error(view, 404, SUBJECT_NOT_FOUND, f"subject {subject!r} not found")


@app.page("/registry/subjects")
class Subjects(View):
    async def get(self, request: Request) -> Response:
        return self.json(registry().subjects())


@app.page("/registry/subjects/{subject}/versions")
class SubjectVersions(View):
    async def get(self, request: Request, subject: str) -> Response:
        versions = registry().versions(subject)
        if not versions:
            return subject_not_found(self, subject)
        return self.json(list(range(1, len(versions) + 1)))

    async def post(self, request: Request, subject: str) -> Response:
        try:
            body: Any = await request.json()
            schema = json.loads(body["schema"])
            canonical_text(schema)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return error(
                self,
                422,
                INVALID_SCHEMA,
                f"body must be {{'schema': '<Avro JSON>'}} holding a valid Avro schema: {exc}",
            )
        except Exception as exc:  # fastavro's SchemaParseException and friends
            return error(self, 422, INVALID_SCHEMA, f"invalid Avro schema: {exc}")
        try:
            return self.json({"id": registry().register(subject, schema)})
        except SchemaError as exc:
            return error(self, 409, INVALID_SCHEMA, str(exc))


@app.page("/registry/subjects/{subject}/versions/{version}")
class SubjectVersion(View):
    async def get(self, request: Request, subject: str, version: str) -> Response:
        versions = registry().versions(subject)
        if not versions:
            return subject_not_found(self, subject)
        number = (
            len(versions)
            if version == "latest"
            else int(version)
            if version.isascii() and version.isdecimal()
            else 0
        )
        if not 1 <= number <= len(versions):
            return error(
                self,
                404,
                VERSION_NOT_FOUND,
                f"subject {subject!r} has no version "
                f"{version!r} (versions 1-{len(versions)} or 'latest')",
            )
        schema_id = versions[number - 1]
        schema = canonical_text(registry().schema(schema_id))
        return self.json({"subject": subject, "version": number, "id": schema_id, "schema": schema})


@app.page("/registry/schemas/ids/{schema_id}")
class SchemaById(View):
    async def get(self, request: Request, schema_id: str) -> Response:
        try:
            schema = registry().schema(int(schema_id))
        except (UnknownSchemaError, ValueError):
            return error(self, 404, SCHEMA_NOT_FOUND, f"schema id {schema_id!r} not found")
        return self.json({"schema": canonical_text(schema)})
