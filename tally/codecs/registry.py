"""Schema registries: where Confluent-framed messages find the schema their id names.

Two implementations of one small interface:

- `FileSchemaRegistry` (default): embedded, offline, a directory of schemas. Ids are derived
  from the schema's Avro fingerprint, so every process that knows a schema gives it the same
  id without talking to anyone (workers, `tally feed`, benchmarks, tests).
- `HttpSchemaRegistry`: a client of a Confluent-compatible registry (`/subjects/...`,
  `/schemas/ids/...`). Tally's own web server serves that API over its file registry at
  `/registry`, so one Tally can be the registry of others.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from tally.core.errors import ConfigurationError, SchemaError, UnknownSchemaError
from tally.core.limits import utf8_size

Schema = dict[str, Any]
#: Longest subject name, in UTF-8 bytes.
MAX_SUBJECT_BYTES = 255
#: Schema ids and versions are positive 32-bit numbers (Confluent's range).
MAX_ID = 2**31 - 1


def subject_problem(subject: str) -> str | None:
    """Why `subject` cannot name a subject, or None."""
    size = utf8_size(subject)
    if not subject or size is None or size > MAX_SUBJECT_BYTES:
        return f"a subject name must be 1 to {MAX_SUBJECT_BYTES} bytes of UTF-8 text"
    if any(ord(char) < 32 or ord(char) == 127 for char in subject):
        return "a subject name must not contain control characters"
    return None


def positive_id(text: str) -> int | None:
    """`text` as a schema id or version number (1 to 2**31-1), or None."""
    if not (text.isascii() and text.isdecimal() and len(text) <= 10):
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


def canonical_text(schema: Schema | str) -> str:
    """Avro's parsing canonical form: the text two equal schemas share."""
    parsed = parse_schema(json.loads(schema) if isinstance(schema, str) else schema)
    return to_parsing_canonical_form(parsed)


def deterministic_id(schema: Schema | str) -> int:
    """A positive 31-bit id from the schema's CRC-64-AVRO fingerprint."""
    digest = fingerprint(canonical_text(schema), "CRC-64-AVRO")
    return (int(digest, 16) & 0x7FFFFFFF) or 1


class SchemaRegistry(ABC):
    """Maps subjects to versions of schemas, and schema ids to schemas."""

    @abstractmethod
    def register(self, subject: str, schema: Schema) -> int:
        """Register `schema` under `subject` (idempotent) and return its id."""

    @abstractmethod
    def schema(self, schema_id: int) -> Schema:
        """The schema with this id; `UnknownSchemaError` if there is none."""

    @abstractmethod
    def subjects(self) -> list[str]:
        """Every subject with at least one version."""

    @abstractmethod
    def versions(self, subject: str) -> list[int]:
        """The ids registered under `subject`, oldest first (version n = index n - 1)."""


class FileSchemaRegistry(SchemaRegistry):
    """A directory: `ids/<id>.avsc` (canonical text) and `subjects/<digest>.json` ({"subject",
    "ids"}: the name is kept inside, so any subject name makes a short, safe file name)."""

    def __init__(self, root: Path):
        self.root = root
        self._ids = root / "ids"
        self._subjects = root / "subjects"
        self._cache: dict[int, Schema] = {}
        self._lock = threading.Lock()
        self._upgrade_subject_files()

    def _upgrade_subject_files(self) -> None:
        """Subject files of earlier versions (named by the quoted subject, which a long
        subject cannot be, and holding the bare id list) rewritten in the current layout."""
        for path in self._subjects.glob("*.json") if self._subjects.exists() else ():
            ids = json.loads(path.read_text())
            if isinstance(ids, list):
                subject = unquote(path.stem)
                record = {"subject": subject, "ids": ids}
                _write_atomically(self._subject_path(subject), json.dumps(record))
                path.unlink()

    def register(self, subject: str, schema: Schema) -> int:
        text = canonical_text(schema)
        schema_id = deterministic_id(text)
        with self._lock:
            self._ids.mkdir(parents=True, exist_ok=True)
            self._subjects.mkdir(parents=True, exist_ok=True)
            path = self._ids / f"{schema_id}.avsc"
            if path.exists():
                if path.read_text() != text:
                    raise SchemaError(
                        f"schema id {schema_id} of subject {subject!r} collides with another "
                        f"schema in {self._ids}; rename a field or the record to change its id"
                    )
            else:
                _write_atomically(path, text)
            versions = self.versions(subject)
            if schema_id not in versions:
                record = {"subject": subject, "ids": [*versions, schema_id]}
                _write_atomically(self._subject_path(subject), json.dumps(record))
            self._cache[schema_id] = json.loads(text)
        return schema_id

    def schema(self, schema_id: int) -> Schema:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        path = self._ids / f"{schema_id}.avsc"
        try:
            schema = json.loads(path.read_text())
        except FileNotFoundError:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the registry") from None
        self._cache[schema_id] = schema
        return schema

    def subjects(self) -> list[str]:
        if not self._subjects.exists():
            return []
        return sorted(json.loads(p.read_text())["subject"] for p in self._subjects.glob("*.json"))

    def versions(self, subject: str) -> list[int]:
        try:
            return list(json.loads(self._subject_path(subject).read_text())["ids"])
        except FileNotFoundError:
            return []

    def _subject_path(self, subject: str) -> Path:
        digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return self._subjects / f"{digest}.json"


class HttpSchemaRegistry(SchemaRegistry):
    """A client of a Confluent-compatible schema registry; schemas by id are cached forever.

    Lookups are blocking HTTP calls: a worker makes one per new schema id, then never again.
    """

    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._cache: dict[int, Schema] = {}

    def register(self, subject: str, schema: Schema) -> int:
        body = {"schema": canonical_text(schema)}
        answer = self._call("POST", f"/subjects/{quote(subject, safe='')}/versions", body)
        return int(answer["id"])

    def schema(self, schema_id: int) -> Schema:
        cached = self._cache.get(schema_id)
        if cached is None:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
            cached = self._cache[schema_id] = json.loads(answer["schema"])
        return cached

    def subjects(self) -> list[str]:
        return list(self._call("GET", "/subjects"))

    def versions(self, subject: str) -> list[int]:
        versions = self._call("GET", f"/subjects/{quote(subject, safe='')}/versions")
        return [
            int(self._call("GET", f"/subjects/{quote(subject, safe='')}/versions/{v}")["id"])
            for v in versions
        ]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc)
            if exc.code == 404 and path.startswith("/schemas/ids/"):
                raise UnknownSchemaError(f"schema registry has no {path}: {detail}") from exc
            raise SchemaError(f"schema registry {method} {path} -> {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SchemaError(f"schema registry at {self.base_url} unreachable: {exc}") from exc


def open_registry(url: str) -> SchemaRegistry:
    """`file:///dir` → embedded registry in that directory; `http(s)://...` → client."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileSchemaRegistry(Path(parts.path))
    if parts.scheme in ("http", "https"):
        return HttpSchemaRegistry(url)
    raise ConfigurationError(
        f"schema registry URL {url!r}: use file:///path for the embedded registry "
        "or http(s)://host:port for a Confluent-compatible one"
    )


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("message", exc.reason))
    except (ValueError, AttributeError):
        return str(exc.reason)
