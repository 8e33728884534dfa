"""A Confluent-compatible schema-registry API over this worker's registry, at `/registry`.

The API Confluent's clients call: subjects, versions, register and look up, schemas by id
and where they are used, schema types, soft and hard deletes, the compatibility level
(global and per subject) and compatibility tests, with Confluent's error codes in JSON.
Schemas are served as registered. Every path parameter is checked before it reaches the
registry (a subject of any length, a version or id of any number of digits is a 4xx, never a
500), and a body is read up to REGISTRY_MAX_BYTES (413 beyond).

Registry calls run in a thread: they read and write files, and the deployment's registry
(`topic:`) waits for its log (a change, or a lookup of what another process just registered),
which must not stall the worker's event loop and its pipelines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from faust.web import Request, Response, View

from tally.app import app
from tally.codecs.catalog import registry
from tally.codecs.compatibility import Level, parse_level
from tally.codecs.registry import (
    FileSchemaRegistry,
    RegistryError,
    SchemaNotFound,
    SubjectNotFound,
    Version,
    positive_id,
    subject_problem,
)
from tally.core.errors import BodyTimeout, UnreadableBody
from tally.http.access import caller
from tally.http.hygiene import REGISTRY_MAX_BYTES, read_body, too_large

INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
INVALID_LEVEL = 42203
#: Confluent's code for an operation the caller may not do.
FORBIDDEN = 40301
#: Confluent has no codes of its own for these; the HTTP status is used.
BODY_TOO_LARGE = 413
BODY_TIMEOUT = 408
#: The schema types this registry takes.
SCHEMA_TYPES = ["AVRO"]


class Refused(Exception):
    """A request answered with a Confluent error: its status, code and message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


Handler = Callable[..., Awaitable[Any]]


def confluent(handler: Handler) -> Handler:
    """The view method's result as JSON; a refusal or a registry error as Confluent's error
    body with its status."""

    async def answer(view: View, request: Request, **params: str) -> Response:
        try:
            return view.json(await handler(view, request, **params))
        except (Refused, RegistryError) as exc:
            return view.json({"error_code": exc.code, "message": str(exc)}, status=exc.status)

    answer.__name__ = handler.__name__
    answer.__doc__ = handler.__doc__
    return answer


def store() -> FileSchemaRegistry:
    """The embedded registry (a worker pointed at another registry serves none)."""
    found = registry()
    if not isinstance(found, FileSchemaRegistry):
        raise Refused(
            404, 40401, "this worker uses an external schema registry: ask it, not /registry"
        )
    return found


def subject_of(subject: str) -> str:
    problem = subject_problem(subject)
    if problem is not None:
        raise Refused(404, 40401, problem)
    return subject


def version_of(version: str) -> int | None:
    """A version parameter: a number, or None for "latest" (also "-1")."""
    if version in ("latest", "-1"):
        return None
    number = positive_id(version)
    if number is None:
        raise Refused(
            422,
            INVALID_VERSION,
            f"the version {version[:40]!r} is not a valid version id: allowed are 1 to "
            "2147483647 and 'latest'",
        )
    return number


def schema_id_of(schema_id: str) -> int:
    number = positive_id(schema_id)
    if number is None:
        raise SchemaNotFound(f"schema id {schema_id[:40]!r} not found")
    return number


def flag(request: Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


async def body_of(request: Request) -> dict[str, Any]:
    """The request's JSON object."""
    try:
        body = await read_body(request, REGISTRY_MAX_BYTES, 0)  # type: ignore[arg-type]
    except BodyTimeout as exc:
        raise Refused(408, BODY_TIMEOUT, str(exc)) from None
    except UnreadableBody as exc:
        raise Refused(422, INVALID_SCHEMA, str(exc)) from None
    if not body.complete:
        raise Refused(413, BODY_TOO_LARGE, str(too_large(body, REGISTRY_MAX_BYTES)))
    try:
        document = json.loads(body.data)
    except (ValueError, RecursionError) as exc:
        raise Refused(422, INVALID_SCHEMA, f"the body is not JSON: {str(exc)[:300]}") from None
    if not isinstance(document, dict):
        raise Refused(422, INVALID_SCHEMA, "the body must be a JSON object")
    return document


async def schema_in(request: Request) -> str:
    """The schema a register, lookup or compatibility request carries (Avro only)."""
    document = await body_of(request)
    schema, kind = document.get("schema"), document.get("schemaType", "AVRO")
    if kind not in SCHEMA_TYPES:
        raise Refused(422, INVALID_SCHEMA, f"schemaType {kind!r}: this registry takes AVRO only")
    if document.get("references"):
        raise Refused(422, INVALID_SCHEMA, "schema references are not supported")
    if not isinstance(schema, str):
        raise Refused(
            422, INVALID_SCHEMA, "the body must be {'schema': '<Avro schema as a JSON string>'}"
        )
    return schema


def described(version: Version) -> dict[str, Any]:
    """A version as Confluent describes it."""
    return {
        "subject": version.subject,
        "version": version.version,
        "id": version.id,
        "schema": store().schema_text(version.id),
    }


@app.page("/registry/subjects")
class Subjects(View):
    @confluent
    async def get(self, request: Request) -> Any:
        """Every subject (`?deleted=true`: soft-deleted ones too)."""
        return await asyncio.to_thread(store().subjects, deleted=flag(request, "deleted"))


@app.page("/registry/subjects/{subject}")
class SubjectByName(View):
    @confluent
    async def post(self, request: Request, subject: str) -> Any:
        """Which version of the subject holds this schema (404 40403 if none)."""
        schema = await schema_in(request)
        found = await asyncio.to_thread(
            store().lookup, subject_of(subject), schema, deleted=flag(request, "deleted")
        )
        return described(found)

    @confluent
    async def delete(self, request: Request, subject: str) -> Any:
        """Soft-delete the subject (`?permanent=true` after that: for good)."""
        return await asyncio.to_thread(
            store().delete_subject, subject_of(subject), permanent=flag(request, "permanent")
        )


@app.page("/registry/subjects/{subject}/versions")
class SubjectVersions(View):
    @confluent
    async def get(self, request: Request, subject: str) -> Any:
        """The subject's version numbers (`?deleted=true`: soft-deleted ones too)."""
        versions = await asyncio.to_thread(
            store().versions, subject_of(subject), deleted=flag(request, "deleted")
        )
        return [v.version for v in versions]

    @confluent
    async def post(self, request: Request, subject: str) -> Any:
        """Register a schema: its id (the same id again if the subject holds it already);
        409 if the subject's compatibility level refuses it."""
        problem = subject_problem(subject)
        if problem is not None:
            raise Refused(422, INVALID_SCHEMA, problem)
        schema = await schema_in(request)
        if not caller(request).allows("admin"):  # an ingest token (tally.access.policy)
            return {"id": await asyncio.to_thread(registered_id, subject, schema)}
        return {"id": await asyncio.to_thread(store().register, subject, schema)}


def registered_id(subject: str, schema: Any) -> int:
    """The id of a schema the subject holds already; only an admin token registers new ones."""
    try:
        return store().lookup(subject, schema).id
    except (SubjectNotFound, SchemaNotFound):
        raise Refused(
            403,
            FORBIDDEN,
            f"the subject {subject!r} does not hold this schema, and registering a new one "
            "needs a token with the admin scope (this one may use schemas already registered)",
        ) from None


@app.page("/registry/subjects/{subject}/versions/{version}")
class SubjectVersion(View):
    @confluent
    async def get(self, request: Request, subject: str, version: str) -> Any:
        """One version ("latest" or a number) with its id and schema."""
        deleted = flag(request, "deleted")
        return described(
            await asyncio.to_thread(
                store().version, subject_of(subject), version_of(version), deleted
            )
        )

    @confluent
    async def delete(self, request: Request, subject: str, version: str) -> Any:
        """Soft-delete one version (`?permanent=true` after that: for good)."""
        permanent = flag(request, "permanent")
        return await asyncio.to_thread(
            store().delete_version, subject_of(subject), version_of(version), permanent
        )


@app.page("/registry/subjects/{subject}/versions/{version}/schema")
class SubjectVersionSchema(View):
    @confluent
    async def get(self, request: Request, subject: str, version: str) -> Any:
        """The schema of one version, alone."""
        found = await asyncio.to_thread(store().version, subject_of(subject), version_of(version))
        return json.loads(await asyncio.to_thread(store().schema_text, found.id))


@app.page("/registry/subjects/{subject}/versions/{version}/referencedby")
class ReferencedBy(View):
    @confluent
    async def get(self, request: Request, subject: str, version: str) -> Any:
        """The ids of schemas that reference this version: none (references are not taken)."""
        await asyncio.to_thread(store().version, subject_of(subject), version_of(version))
        return []


@app.page("/registry/schemas/ids/{schema_id}")
class SchemaById(View):
    @confluent
    async def get(self, request: Request, schema_id: str) -> Any:
        """The schema with this id, as registered."""
        return {"schema": await asyncio.to_thread(store().schema_text, schema_id_of(schema_id))}


@app.page("/registry/schemas/ids/{schema_id}/schema")
class RawSchemaById(View):
    @confluent
    async def get(self, request: Request, schema_id: str) -> Any:
        """The schema with this id, alone."""
        return json.loads(await asyncio.to_thread(store().schema_text, schema_id_of(schema_id)))


@app.page("/registry/schemas/ids/{schema_id}/versions")
class SchemaVersions(View):
    @confluent
    async def get(self, request: Request, schema_id: str) -> Any:
        """Every (subject, version) that holds this schema."""
        uses = await asyncio.to_thread(
            store().uses, schema_id_of(schema_id), deleted=flag(request, "deleted")
        )
        return [{"subject": v.subject, "version": v.version} for v in uses]


@app.page("/registry/schemas/ids/{schema_id}/subjects")
class SchemaSubjects(View):
    @confluent
    async def get(self, request: Request, schema_id: str) -> Any:
        """Every subject that holds this schema."""
        uses = await asyncio.to_thread(
            store().uses, schema_id_of(schema_id), deleted=flag(request, "deleted")
        )
        return sorted({v.subject for v in uses})


@app.page("/registry/schemas/types")
class SchemaTypes(View):
    @confluent
    async def get(self, request: Request) -> Any:
        """The schema types this registry takes."""
        return SCHEMA_TYPES


async def level_in(request: Request) -> Level:
    document = await body_of(request)
    level = parse_level(document.get("compatibility"))
    if level is None:
        raise Refused(
            422,
            INVALID_LEVEL,
            f"invalid compatibility level {str(document.get('compatibility'))[:40]!r}: one "
            f"of {', '.join(level.value for level in Level)}",
        )
    return level


@app.page("/registry/config")
class GlobalConfig(View):
    @confluent
    async def get(self, request: Request) -> Any:
        """The global compatibility level (BACKWARD until set)."""
        return {"compatibilityLevel": (await asyncio.to_thread(store().level)).value}

    @confluent
    async def put(self, request: Request) -> Any:
        """Set the global compatibility level: {"compatibility": "FULL"}."""
        level = await level_in(request)
        await asyncio.to_thread(store().set_level, None, level)
        return {"compatibility": level.value}


@app.page("/registry/config/{subject}")
class SubjectConfig(View):
    @confluent
    async def get(self, request: Request, subject: str) -> Any:
        """The subject's level (404 40408 if unset, unless `?defaultToGlobal=true`)."""
        level = await asyncio.to_thread(
            store().level, subject_of(subject), flag(request, "defaultToGlobal")
        )
        return {"compatibilityLevel": level.value}

    @confluent
    async def put(self, request: Request, subject: str) -> Any:
        """Set the subject's compatibility level: {"compatibility": "FULL"}."""
        level = await level_in(request)
        await asyncio.to_thread(store().set_level, subject_of(subject), level)
        return {"compatibility": level.value}

    @confluent
    async def delete(self, request: Request, subject: str) -> Any:
        """Unset the subject's level (the global one applies): the level it had."""
        level = await asyncio.to_thread(store().level, subject_of(subject), default_to_global=False)
        await asyncio.to_thread(store().set_level, subject, None)
        return {"compatibility": level.value}


async def compatibility(request: Request, subject: str, version: int | str | None) -> Any:
    reasons = await asyncio.to_thread(
        store().check, subject_of(subject), await schema_in(request), version
    )
    answer: dict[str, Any] = {"is_compatible": not reasons}
    if flag(request, "verbose"):
        answer["messages"] = reasons
    return answer


@app.page("/registry/compatibility/subjects/{subject}/versions/{version}")
class CompatibilityWithVersion(View):
    @confluent
    async def post(self, request: Request, subject: str, version: str) -> Any:
        """Whether a schema is compatible with one version at the subject's level
        (`?verbose=true`: why not)."""
        return await compatibility(request, subject, version_of(version))


@app.page("/registry/compatibility/subjects/{subject}/versions")
class CompatibilityWithSubject(View):
    @confluent
    async def post(self, request: Request, subject: str) -> Any:
        """Whether registering a schema would pass the subject's level (`?verbose=true`:
        why not)."""
        return await compatibility(request, subject, "all")
