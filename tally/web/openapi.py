"""The OpenAPI 3.1 document of every HTTP endpoint, served at `/api/openapi.json`.

One table (`OPERATIONS`) describes each endpoint once; the document, the index page `/` and the
`tally ingest` process's subset are all built from it. Ingest bodies are described by the JSON
Schema derived from the Avro schemas (`tally.ingest.rows.json_schema`), the same contract the
rows are checked against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tally import __version__
from tally.access.policy import Access, access_of
from tally.codecs.avro import load_schema
from tally.ingest.gateway import sample_row_schema
from tally.ingest.rows import json_schema

#: `?from=` / `?to=` / `?at=`: the forms `time_param` reads.
TIME = {
    "type": "string",
    "description": "ISO 8601 (2026-11-22T10:00:00Z; naive = UTC) or epoch milliseconds",
}
STEP = {"type": "string", "enum": ["1m", "5m", "1h", "1d"], "default": "1m"}
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what was wrong, for a person"}},
    "required": ["error"],
}
#: The schema registry answers errors the way Confluent's does.
REGISTRY_ERROR = {
    "type": "object",
    "properties": {"error_code": {"type": "integer"}, "message": {"type": "string"}},
    "required": ["error_code", "message"],
}
ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query
    schema: dict[str, Any]
    description: str = ""

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "schema": self.schema,
            **({"description": self.description} if self.description else {}),
        }


def path(name: str, description: str = "") -> Param:
    return Param(name, "path", {"type": "string", "minLength": 1}, description)


def query(name: str, schema: dict[str, Any], description: str = "") -> Param:
    return Param(name, "query", schema, description)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    params: tuple[Param, ...] = ()
    #: status → description; 200/202 carry `result`, the others the error object.
    statuses: dict[int, str] = field(default_factory=lambda: {200: "the answer"})
    result: dict[str, Any] = field(default_factory=lambda: ANY_OBJECT)
    error: dict[str, Any] = field(default_factory=lambda: ERROR)
    body: dict[str, Any] | None = None
    #: The media types a success may come in (`result` describes each).
    content_types: tuple[str, ...] = ("application/json",)
    #: The `tally ingest` process serves the operations marked so.
    on_ingest_tier: bool = False
    #: The route pattern serving it, when not `path` (one route serves every ingest path).
    route: str = ""
    #: Served only by workers running this pipeline (settings.PIPELINES); "": by every worker.
    pipeline: str = ""
    #: Readers (TALLY_ROLE=read) serve the operations marked so (of their pipelines).
    on_readers: bool = False

    def document(self) -> dict[str, Any]:
        responses: dict[str, Any] = {}
        for status, description in self.statuses.items():
            schema = self.result if status < 300 else self.error
            types = self.content_types if status < 300 else ("application/json",)
            responses[str(status)] = {
                "description": description,
                "content": {content_type: {"schema": schema} for content_type in types},
            }
        operation: dict[str, Any] = {
            "summary": self.summary,
            "operationId": f"{self.method}{self.path}".replace("/", "_")
            .replace("{", "")
            .replace("}", ""),
            "parameters": [p.document() for p in self.params],
            "responses": responses,
        }
        if self.body is not None:
            operation["requestBody"] = self.body
        return secured(operation, self.access, self.error)

    @property
    def access(self) -> Access:
        found = access_of(self.method, self.route or self.path)
        if found is None:
            raise LookupError(f"{self.method} {self.path} has no access rule (tally.access.policy)")
        return found


#: Tokens go as `Authorization: Bearer <token>`, or as the password of Basic auth (for
#: clients that only speak Basic: Confluent's registry client, Prometheus).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "basic": {"type": "http", "scheme": "basic", "description": "any user; the token as password"},
}
REFUSALS = {
    401: "no token, or one that is malformed, badly signed, expired or revoked "
    "(WWW-Authenticate says which)",
    403: "the token lacks the scope, or the tenant reach, this operation needs",
    429: "too many requests with this token (TALLY_AUTH_RATE): retry after Retry-After",
}


def secured(operation: dict[str, Any], access: Access, error: dict[str, Any]) -> dict[str, Any]:
    """The operation with its security requirement, the refusals it may answer, and its rule
    (`x-tally-access`: scopes and reach, what the access-matrix test is generated from)."""
    rule = {"scopes": sorted(access.scopes), "reach": access.reach}
    if access.open:
        return {**operation, "security": [], "x-tally-access": rule}
    responses = dict(operation["responses"])
    for status, description in REFUSALS.items():
        responses.setdefault(
            str(status),
            {
                "description": description,
                "content": {"application/json": {"schema": error}},
            },
        )
    return {
        **operation,
        "description": f"Access: {access.describe()}.",
        "security": [{"bearer": []}, {"basic": []}],
        "responses": responses,
        "x-tally-access": rule,
    }


#: The schema registry's endpoints (Confluent's API): body and answer shapes, errors.
REGISTRY_BODY = {
    "required": True,
    "content": {
        media: {
            "schema": {
                "type": "object",
                "properties": {
                    "schema": {"type": "string", "description": "the Avro schema, as JSON text"},
                    "schemaType": {"type": "string", "enum": ["AVRO"], "default": "AVRO"},
                },
                "required": ["schema"],
            }
        }
        for media in ("application/vnd.schemaregistry.v1+json", "application/json")
    },
}
LEVEL_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "compatibility": {
                        "type": "string",
                        "enum": [
                            "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
                            "FULL", "FULL_TRANSITIVE", "NONE",
                        ],
                    }
                },
                "required": ["compatibility"],
            }
        }
    },
}  # fmt: skip
DELETED = query("deleted", {"type": "boolean"}, "include soft-deleted versions")
PERMANENT = query("permanent", {"type": "boolean"}, "delete a soft-deleted one for good")
VERBOSE = query("verbose", {"type": "boolean"}, "say why not")
SUBJECT = path("subject")
VERSION = path("version", "a version number (1 to 2147483647) or 'latest'")
SCHEMA_ID = path("schema_id")
BODY_ERRORS = {
    408: "the body did not arrive within 30 s",
    413: "the body is over 1 MiB",
    415: "not JSON (Content-Type), or an unknown Content-Encoding",
}
VERSION_ERRORS = {
    404: "no such subject (40401) or version (40402)",
    422: "the version is not 1 to 2147483647 or 'latest' (42202)",
}
VERSION_ANSWER = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "version": {"type": "integer"},
        "id": {"type": "integer"},
        "schema": {"type": "string"},
    },
}


def registry_operation(
    method: str,
    route: str,
    summary: str,
    params: tuple[Param, ...] = (),
    statuses: dict[int, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Operation:
    return Operation(
        method,
        "/registry" + route,
        summary,
        params,
        statuses={200: "the answer", **(statuses or {}), **(BODY_ERRORS if body else {})},
        error=REGISTRY_ERROR,
        body=body,
        content_types=("application/vnd.schemaregistry.v1+json",),
    )


REGISTRY_OPERATIONS = (
    registry_operation("get", "/subjects", "schema registry: every subject", (DELETED,)),
    registry_operation(
        "post",
        "/subjects/{subject}",
        "which version of the subject holds this schema",
        (SUBJECT, DELETED),
        {404: "no such subject (40401), or no version holds it (40403)",
         422: "not a valid Avro schema (42201)"},
        REGISTRY_BODY,
    ),
    registry_operation(
        "delete",
        "/subjects/{subject}",
        "soft-delete a subject (then with ?permanent=true: for good): its version numbers",
        (SUBJECT, PERMANENT),
        {404: "no such subject (40401), soft-deleted already (40404), or not soft-deleted "
              "before a permanent delete (40405)"},
    ),
    registry_operation(
        "get", "/subjects/{subject}/versions", "a subject's version numbers", (SUBJECT, DELETED),
        {404: "no such subject (40401)"},
    ),
    registry_operation(
        "post",
        "/subjects/{subject}/versions",
        "register a schema under a subject -> {'id': N}; the subject's compatibility level "
        "is checked first",
        (SUBJECT,),
        {409: "incompatible with earlier versions at the subject's level (the message says "
              "why), or its id collides with another schema's",
         422: "not a valid Avro schema, or an unusable subject name (42201)"},
        REGISTRY_BODY,
    ),
    registry_operation(
        "get", "/subjects/{subject}/versions/{version}", "one version: subject, version, id, "
        "schema as registered", (SUBJECT, VERSION, DELETED), VERSION_ERRORS,
    ),
    registry_operation(
        "delete", "/subjects/{subject}/versions/{version}",
        "soft-delete one version (then with ?permanent=true: for good): its number",
        (SUBJECT, VERSION, PERMANENT),
        {**VERSION_ERRORS, 404: "no such subject (40401) or version (40402), soft-deleted "
                                "already (40406), or not soft-deleted before a permanent "
                                "delete (40407)"},
    ),
    registry_operation(
        "get", "/subjects/{subject}/versions/{version}/schema", "one version's schema alone",
        (SUBJECT, VERSION), VERSION_ERRORS,
    ),
    registry_operation(
        "get", "/subjects/{subject}/versions/{version}/referencedby",
        "schemas referencing this version (references are not supported: always empty)",
        (SUBJECT, VERSION), VERSION_ERRORS,
    ),
    registry_operation(
        "get", "/schemas/ids/{schema_id}", "one schema by id, as registered", (SCHEMA_ID,),
        {404: "no such id (40403)"},
    ),
    registry_operation(
        "get", "/schemas/ids/{schema_id}/schema", "one schema by id, alone", (SCHEMA_ID,),
        {404: "no such id (40403)"},
    ),
    registry_operation(
        "get", "/schemas/ids/{schema_id}/versions", "every subject and version holding it",
        (SCHEMA_ID, DELETED), {404: "no such id (40403)"},
    ),
    registry_operation(
        "get", "/schemas/ids/{schema_id}/subjects", "every subject holding it",
        (SCHEMA_ID, DELETED), {404: "no such id (40403)"},
    ),
    registry_operation("get", "/schemas/types", "the schema types taken: AVRO"),
    registry_operation("get", "/config", "the global compatibility level (BACKWARD until set)"),
    registry_operation(
        "put", "/config", "set the global compatibility level", (),
        {422: "not a compatibility level (42203)"}, LEVEL_BODY,
    ),
    registry_operation(
        "get", "/config/{subject}", "a subject's compatibility level",
        (SUBJECT, query("defaultToGlobal", {"type": "boolean"}, "the global one if unset")),
        {404: "no level set for the subject (40408)"},
    ),
    registry_operation(
        "put", "/config/{subject}", "set a subject's compatibility level", (SUBJECT,),
        {404: "an unusable subject name (40401)", 422: "not a compatibility level (42203)"},
        LEVEL_BODY,
    ),
    registry_operation(
        "delete", "/config/{subject}", "unset a subject's level (the global one applies)",
        (SUBJECT,), {404: "no level set for the subject (40408)"},
    ),
    registry_operation(
        "post", "/compatibility/subjects/{subject}/versions/{version}",
        "is this schema compatible with one version, at the subject's level? -> "
        "{'is_compatible': bool}", (SUBJECT, VERSION, VERBOSE),
        {**VERSION_ERRORS, 422: "not a valid Avro schema (42201), or a bad version (42202)"},
        REGISTRY_BODY,
    ),
    registry_operation(
        "post", "/compatibility/subjects/{subject}/versions",
        "would registering this schema pass the subject's level? -> {'is_compatible': bool}",
        (SUBJECT, VERBOSE),
        {404: "an unusable subject name (40401)", 422: "not a valid Avro schema (42201)"},
        REGISTRY_BODY,
    ),
)  # fmt: skip


#: `?limit=` of a queue (alerts, reviews): at most this many of it.
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
#: An optional JSON body with a note a person writes about a transition.
NOTE_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"note": {"type": "string", "maxLength": 1000}},
            }
        }
    },
}
#: A person's decision on a reviewed order.
REVIEW_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "decision": {"type": "string", "enum": ["approve", "reject"]},
                    "note": {"type": "string", "maxLength": 1000},
                },
                "required": ["decision"],
            }
        }
    },
}
READY = {200: "the answer", 503: "this worker is starting or rebalancing: retry shortly"}
WINDOW_QUERY = {**READY, 400: "a parameter is unusable (the message says which)"}
RANGE = (
    query("from", TIME, "start of the range (default: `to` minus 2 days)"),
    query("to", TIME, "end of the range, exclusive (default: now)"),
)

MERCHANT_RANGE = (
    query("from", TIME, "start of the range (default: `to` minus 30 days)"),
    query("to", TIME, "end of the range, exclusive (default: now)"),
)
CONSISTENCY = query(
    "consistency",
    {"type": "string", "enum": ["any", "owner"], "default": "any"},
    "any: a worker holding a standby copy of the merchant's partition (or a reader: "
    "TALLY_ROLE=read) answers from it, saying how stale it is (`served_by`: owner, standby "
    "or reader; `as_of`, `stale_by_ms`); owner: the partition's owner answers (a reader "
    "relays the query to a processing worker)",
)
MERCHANT_STEP = {"type": "string", "enum": ["1h", "1d", "1w", "1mo"], "default": "1h"}
MERCHANT_QUERY = {
    **WINDOW_QUERY,
    404: "not this token's merchant (a merchant's token reads its own; an operator's any)",
    409: "consistency=owner asked of a reader that knows no processing worker",
    410: "top-items: the window at `at` is no longer kept",
}

#: Server-sent events: a text stream that does not end while the client listens.
STREAM: dict[str, Any] = {"result": {"type": "string"}, "content_types": ("text/event-stream",)}
#: The dashboard's files by extension, and the media type each is served as.
STATIC_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
STREAM_STATUSES = {
    200: "an event stream",
    400: "a parameter is unusable (the message says which)",
    503: "this worker serves too many streams",
}
MINUTES = query(
    "minutes",
    {"type": "integer", "minimum": 1, "maximum": 1440, "default": 120},
    "how many minutes back from now the stream covers",
)


def ingest_body(rows: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "description": "Rows: a JSON array of objects, or NDJSON (one object per line). Each "
        "row is judged alone; gzip (Content-Encoding) is accepted.",
        "content": {
            "application/json": {"schema": {"type": "array", "items": rows}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }


INGEST_RESULT = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string"},
        "endpoint": {"type": "string"},
        "accepted": {"type": "integer", "description": "rows acknowledged by Kafka"},
        "rejected": {"type": "integer", "description": "rows sent to dead-letters"},
        "rejections": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer", "description": "0-based row number"},
                    "rule": {"type": "string", "description": "kind of wrong (missing_field, ...)"},
                    "reason": {"type": "string"},
                },
            },
        },
        "messages": {"type": "integer", "description": "Kafka messages written"},
    },
    "required": ["request_id", "accepted", "rejected", "rejections"],
}
INGEST_STATUSES = {
    202: "rows checked: accepted ones are in Kafka, rejected ones (listed) in dead-letters",
    400: "no row of the body is readable (not JSON, not UTF-8, empty, or bad gzip)",
    403: "sent by a page on another site (Sec-Fetch-Site: cross-site)",
    408: "the body did not arrive within 30 s",
    413: "the body is larger than TALLY_INGEST_MAX_BYTES (inflated or not), or holds more "
    "rows than TALLY_INGEST_MAX_ROWS",
    415: "not JSON/NDJSON (Content-Type), or a Content-Encoding other than gzip or deflate",
    503: "the broker is unreachable or did not acknowledge in time, or too many requests "
    "wait: nothing is promised, retry (Retry-After)",
}


def ingest_operation(name: str, summary: str, row_schema: dict[str, Any]) -> Operation:
    return Operation(
        "post",
        f"/api/ingest/{name}",
        summary,
        statuses=INGEST_STATUSES,
        result=INGEST_RESULT,
        body=ingest_body(json_schema(row_schema)),
        on_ingest_tier=True,
        route="/api/ingest/{endpoint}",
    )


def tenant_param(merged: str) -> Param:
    """`?tenant=`: whose data an answer holds (runtime.queries.tenant_read); `merged` says
    what an operator gets without one."""
    return query(
        "tenant",
        {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,63}|\\*)$"},
        "whose data: a tenant's token reads its own tenant's (naming another is a 403); an "
        f"operator's names any tenant, and without one reads {merged}. An id another tenant "
        "uses is answered as one never seen: nothing of that tenant's data, whether it exists",
    )


#: An operator without `?tenant=` reads every tenant's data, merged.
EVERY_TENANT = tenant_param("every tenant's at once (items and servers named with their tenant)")
#: An operator without `?tenant=` reads the default tenant's.
ONE_TENANT = tenant_param("the default tenant's (TALLY_DEFAULT_TENANT)")


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/",
        "this index: the service and its endpoints (on a worker, a browser asking for HTML "
        "gets the live dashboard)",
        content_types=("application/json", "text/html"),
        on_ingest_tier=True,
        on_readers=True,
    ),
    Operation(
        "get",
        "/static/{name}",
        "the dashboard's files (dashboard.html, dashboard.js, dashboard.css)",
        (path("name"),),
        statuses={200: "the file", 404: "no such file"},
        result={"type": "string"},
        content_types=tuple(STATIC_CONTENT_TYPES.values()),
        on_readers=True,
    ),
    Operation(
        "get",
        "/api/health",
        "readiness, the partitions this worker owns, lag, and which generation serves each "
        "pipeline",
        statuses={
            200: "ready",
            503: "starting, recovering, rebalancing, or the broker is unreachable (the reason "
            "says)",
        },
        on_ingest_tier=True,
        on_readers=True,
    ),
    Operation(
        "get",
        "/api/health/live",
        "liveness: 200 while the process serves HTTP, whatever the broker's state (restart "
        "the process only when this fails; /api/health says whether it can answer)",
        on_ingest_tier=True,
        on_readers=True,
    ),
    Operation("get", "/api/openapi.json", "this document", on_ingest_tier=True, on_readers=True),
    Operation(
        "get",
        "/metrics",
        "Prometheus: events by outcome, rejects by rule, ingest, consumer lag, table sizes",
        result={"type": "string"},
        content_types=("text/plain",),
        on_readers=True,
        on_ingest_tier=True,
    ),
    ingest_operation("purchases", "send purchases", load_schema("purchase")),
    ingest_operation("metrics", "send metric samples (one row per sample)", sample_row_schema()),
    Operation(
        "get",
        "/api/dead-letters/stats",
        "dead letters: counts by rule, stage and origin, and the latest few (why and from "
        "where, never their payloads: `tally dlq show` has those)",
        on_ingest_tier=True,
    ),
    Operation(
        "get",
        "/api/sales/top",
        "top-K items of the last 24 hours (sliding hourly), with freshness",
        (
            query("k", {"type": "integer", "minimum": 1}, "how many (at most TALLY_TOP_K)"),
            query("at", TIME, "the window ending at this time's pane (default: now)"),
            EVERY_TENANT,
        ),
        statuses={**WINDOW_QUERY, 410: "that window is no longer retained"},
    ),
    Operation(
        "get",
        "/api/sales/items/{item_id}",
        "an item's 24-hour total and its hourly panes",
        (path("item_id"), query("at", TIME, "the window ending at this time's pane"), ONE_TENANT),
        statuses={**WINDOW_QUERY, 410: "that window is no longer retained"},
    ),
    Operation(
        "get",
        "/api/servers/{server_id}/metrics",
        "a server's metrics per step over any range (hot tables and archive merged)",
        (
            path("server_id"),
            *RANGE,
            query("step", STEP),
            query("metric", {"type": "string"}, "comma-separated metric ids (default: all)"),
            ONE_TENANT,
        ),
        statuses=WINDOW_QUERY,
    ),
    Operation(
        "get",
        "/api/servers/{server_id}/summary",
        "a server's metrics over the whole range: min, max, avg, count",
        (path("server_id"), *RANGE, ONE_TENANT),
        statuses=WINDOW_QUERY,
    ),
    Operation(
        "get",
        "/api/metrics/{metric_id}",
        "a metric across the tenant's servers per step; by=server for the breakdown",
        (
            path("metric_id"),
            *RANGE,
            query("step", STEP),
            query("by", {"type": "string", "enum": ["server"]}, "break down by server"),
            EVERY_TENANT,
        ),
        statuses=WINDOW_QUERY,
    ),
    Operation(
        "get",
        "/api/stream/sales/top",
        "live top-K (server-sent events): `snapshot`, then `top` on every change "
        "(provisional), `final` once per closed window; `status` when the query cannot answer",
        (EVERY_TENANT,),
        statuses={200: "an event stream", 503: "this worker serves too many streams"},
        **STREAM,
    ),
    Operation(
        "get",
        "/api/stream/servers/{server_id}",
        "a server's minutes, live (server-sent events): `snapshot`, then `meta` and `point` "
        "(each flagged provisional or final)",
        (
            path("server_id"),
            MINUTES,
            query("metric", {"type": "string"}, "comma-separated metric ids (default: all)"),
            ONE_TENANT,
        ),
        statuses=STREAM_STATUSES,
        **STREAM,
    ),
    Operation(
        "get",
        "/api/stream/metrics/{metric_id}",
        "a metric across the tenant's servers, live (server-sent events): `snapshot`, `meta`, "
        "`point`",
        (path("metric_id"), MINUTES, EVERY_TENANT),
        statuses=STREAM_STATUSES,
        **STREAM,
    ),
    *(
        Operation(
            "get",
            f"/api/merchants/{{merchant_id}}/{name}",
            summary,
            (path("merchant_id", "the merchant: a tenant name"), *params, CONSISTENCY),
            statuses=MERCHANT_QUERY,
            pipeline="merchants",
            on_readers=True,
        )
        for name, summary, params in (
            (
                "sales",
                "a merchant's orders, units, revenue, average order and distinct customers "
                "per step (sparse: steps with sales); which tier answered which hours",
                (*MERCHANT_RANGE, query("step", MERCHANT_STEP)),
            ),
            (
                "summary",
                "a merchant's figures over the whole range (distinct customers: of the range)",
                MERCHANT_RANGE,
            ),
            (
                "top-items",
                "a merchant's top items over the sales window (the current one, or the one "
                "ending at `at`)",
                (
                    query("at", TIME, "a time in the window wanted (default: now)"),
                    query("k", {"type": "integer", "minimum": 1}, "how many (default TALLY_TOP_K)"),
                ),
            ),
        )
    ),
    Operation(
        "get",
        "/api/social/alerts",
        "a brand's alerts in one status, most urgent first (the most negative for their "
        "reach), with the count in each status",
        (
            query(
                "status",
                {"type": "string", "enum": ["open", "acked", "resolved", "all"], "default": "open"},
            ),
            LIMIT,
            ONE_TENANT,
        ),
        statuses=WINDOW_QUERY,
        pipeline="social",
    ),
    Operation(
        "post",
        "/api/social/alerts/{alert_id}/{action}",
        "acknowledge (`ack`) or `resolve` an alert: the transition, who took it and when join "
        "its history and go to social-alerts; the answer is the alert as it is now",
        (
            path("alert_id", "the alert: <channel>:<post id>"),
            Param("action", "path", {"type": "string", "enum": ["ack", "resolve"]}),
            ONE_TENANT,
        ),
        statuses={
            **WINDOW_QUERY,
            200: "the alert after the transition",
            404: "the brand has no such alert",
            409: "the alert's status does not allow it (resolving a resolved alert)",
        },
        body=NOTE_BODY,
        pipeline="social",
    ),
    Operation(
        "get",
        "/api/social/summary",
        "a brand's posts per channel and minute: counts by sentiment, mean VADER score, the "
        "most-shared negative posts; totals per channel and overall",
        (
            query("from", TIME, "start of the range (default: `to` minus an hour)"),
            query("to", TIME, "end of the range, exclusive (default: now; at most a day)"),
            query("channel", {"type": "string"}, "one channel only (x, mastodon, ...)"),
            query("step", {"type": "string", "enum": ["1m"], "default": "1m"}),
            ONE_TENANT,
        ),
        statuses=WINDOW_QUERY,
        pipeline="social",
    ),
    Operation(
        "get",
        "/api/stream/social/summary",
        "a brand's minutes per channel, live (server-sent events): `snapshot`, then `meta` "
        "(the totals) and `point`",
        (MINUTES, query("channel", {"type": "string"}, "one channel only"), ONE_TENANT),
        statuses=STREAM_STATUSES,
        **STREAM,
    ),
    Operation(
        "get",
        "/api/fraud/reviews",
        "a merchant's orders the model sent to review, oldest first: waiting for a person, "
        "decided by one, or all; with the count of each",
        (
            query(
                "status",
                {"type": "string", "enum": ["waiting", "decided", "all"], "default": "waiting"},
            ),
            LIMIT,
            ONE_TENANT,
        ),
        statuses=WINDOW_QUERY,
        pipeline="fraud",
    ),
    Operation(
        "post",
        "/api/fraud/reviews/{order_id}/decision",
        "a person's decision on an order waiting for review: it joins the order's record "
        "and goes to fraud-audit; the answer is the order's record",
        (path("order_id"), ONE_TENANT),
        statuses={
            **WINDOW_QUERY,
            200: "the order's record, with the review",
            404: "the merchant has no such order in review",
            409: "the order is not waiting for review (decided already)",
        },
        body=REVIEW_BODY,
        pipeline="fraud",
    ),
    Operation(
        "get",
        "/api/fraud/orders/{order_id}",
        "an order's decision: the model's (version, score, features) and a person's when "
        "reviewed; null while it waits",
        (path("order_id"), ONE_TENANT),
        statuses={**WINDOW_QUERY, 404: "the merchant has no such order"},
        pipeline="fraud",
    ),
    Operation(
        "get",
        "/api/fraud/audit",
        "a merchant's decisions, the model's and people's, from the archive (each written "
        "within TALLY_ARCHIVE_FLUSH_SECONDS): every record of fraud-audit in the range",
        (
            query("from", TIME, "start of the range (default: `to` minus a day)"),
            query("to", TIME, "end of the range, exclusive (default: now; at most 31 days)"),
            ONE_TENANT,
        ),
        statuses={**WINDOW_QUERY, 503: "the archive could not be read"},
        pipeline="fraud",
    ),
    Operation(
        "get",
        "/api/fraud/models",
        "the published fraud models as this worker has read them, and up to when it knows them",
        (),
        statuses=READY,
        pipeline="fraud",
    ),
    Operation(
        "get",
        "/api/recommendations",
        "the items to show a session now, best first: how many sessions of the last 7 days "
        "viewed each with the item viewed now and with the session's 10 latest items, without "
        "anything the session has seen; with the session's freshness (its watermark, last "
        "view, expiry) and the co-view window's. A session past its time to live has no items",
        (
            query("session", {"type": "string"}, "the browsing session (required)"),
            query("item", {"type": "string"}, "the item the session views now"),
            query("k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
            ONE_TENANT,
        ),
        statuses=WINDOW_QUERY,
        pipeline="recommendations",
    ),
    Operation(
        "get",
        "/api/recommendations/rows",
        "the items' co-view rows over the window (other item: sessions), for the items whose "
        "partitions this worker owns: what a session's owner asks the others for",
        (
            query("item", {"type": "string"}, "an item (repeat for several, up to 11)"),
            ONE_TENANT,
        ),
        statuses=WINDOW_QUERY,
        pipeline="recommendations",
    ),
    Operation(
        "get",
        "/api/coupons/campaigns",
        "the tenant's coupon campaigns in effect, each with its figures so far: coupons "
        "pushed, redeemed, the redemption rate, budget left, coupons that expired before they "
        "could be pushed, found the budget spent or their campaign ended",
        (ONE_TENANT,),
        statuses=WINDOW_QUERY,
        pipeline="coupons",
    ),
    *REGISTRY_OPERATIONS,
)


def served_by(
    pipelines: Iterable[str], reads_only: bool = False, operations: Iterable[Operation] = OPERATIONS
) -> list[Operation]:
    """The operations a worker running `pipelines` serves (a reader: those marked so)."""
    running = set(pipelines)
    return [
        op
        for op in operations
        if (not op.pipeline or op.pipeline in running) and (op.on_readers or not reads_only)
    ]


def document(operations: Iterable[Operation] = OPERATIONS) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method] = operation.document()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": __version__,
            "description": "Real-time analytics on Faust: ingest, top sellers, server metrics.",
        },
        "paths": paths,
        "components": {"securitySchemes": SECURITY_SCHEMES},
    }


def endpoint_index(operations: Iterable[Operation] = OPERATIONS) -> dict[str, str]:
    """ "METHOD /path?params": summary — what the index page lists."""
    index = {}
    for op in operations:
        names = [p.name for p in op.params if p.where == "query"]
        suffix = "?" + "&".join(f"{n}=" for n in names) if names else ""
        index[f"{op.method.upper()} {op.path}{suffix}"] = op.summary
    return index
