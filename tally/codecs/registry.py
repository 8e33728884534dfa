"""Schema registries: where Confluent-framed messages find the schema their id names.

Two implementations of one small interface:

- `FileSchemaRegistry` (default): embedded, offline, a directory of schemas. Ids are derived
  from a fingerprint of the schema as registered (defaults, docs, logical types and all), so
  every process that knows a schema gives it the same id without talking to anyone (workers,
  `tally feed`, benchmarks, tests). It keeps what Confluent's registry keeps: each schema as
  registered, versions per subject (soft and hard deletes), a compatibility level per subject
  and a global one, checked on every registration (tally.codecs.compatibility).
- `HttpSchemaRegistry`: a client of a Confluent-compatible registry (`/subjects/...`,
  `/schemas/ids/...`). Tally's own web server serves that API over its file registry at
  `/registry`, so one Tally can be the registry of others, and Confluent's clients can use it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fastavro import parse_schema
from fastavro.schema import fingerprint

from tally.codecs.compatibility import DEFAULT_LEVEL, Level, incompatibilities, parsed
from tally.core.errors import SchemaError, UnknownSchemaError
from tally.core.limits import utf8_size

Schema = dict[str, Any]
#: Longest subject name, in UTF-8 bytes.
MAX_SUBJECT_BYTES = 255
#: Schema ids and versions are positive 32-bit numbers (Confluent's range).
MAX_ID = 2**31 - 1


class RegistryError(SchemaError):
    """A registry request that cannot be met: `status` and `code` as Confluent answers it."""

    status = 422
    code = 42201


class SubjectNotFound(RegistryError):
    status, code = 404, 40401


class VersionNotFound(RegistryError):
    status, code = 404, 40402


class SchemaNotFound(RegistryError, UnknownSchemaError):
    status, code = 404, 40403


class SubjectSoftDeleted(RegistryError):
    status, code = 404, 40404


class SubjectNotSoftDeleted(RegistryError):
    status, code = 404, 40405


class VersionSoftDeleted(RegistryError):
    status, code = 404, 40406


class VersionNotSoftDeleted(RegistryError):
    status, code = 404, 40407


class LevelNotConfigured(RegistryError):
    status, code = 404, 40408


class IncompatibleSchema(RegistryError):
    status, code = 409, 409


class InvalidSchema(RegistryError):
    status, code = 422, 42201


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


def schema_text(schema: Schema | str) -> str:
    """The schema as it is kept and served: the registered JSON, compact, everything in it
    (defaults, docs, logical types, aliases); `InvalidSchema` if it is not an Avro schema."""
    try:
        document = json.loads(schema) if isinstance(schema, str) else schema
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        parse_schema(document)
    except SchemaError:
        raise
    except Exception as exc:  # json's and fastavro's errors, of any class
        raise InvalidSchema(f"not a valid Avro schema: {str(exc)[:300]}") from None
    try:
        parsed(text)  # and as the compatibility checker reads it
    except SchemaError as exc:
        raise InvalidSchema(str(exc)) from None
    return text


def identity(text: str) -> str:
    """What two registrations of one schema share (key order and spacing aside)."""
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def deterministic_id(schema: Schema | str) -> int:
    """A positive 31-bit id from the CRC-64-AVRO fingerprint of the whole schema: schemas
    differing in a default or a doc get different ids, as in Confluent's registry."""
    digest = fingerprint(identity(schema_text(schema)), "CRC-64-AVRO")
    return (int(digest, 16) & 0x7FFFFFFF) or 1


@dataclass(frozen=True)
class Version:
    """One version of a subject: its number, the schema id, whether it is soft-deleted."""

    subject: str
    version: int
    id: int
    deleted: bool = False


class SchemaRegistry(ABC):
    """Maps subjects to versions of schemas, and schema ids to schemas."""

    @abstractmethod
    def register(self, subject: str, schema: Schema | str) -> int:
        """Register `schema` under `subject` (idempotent) and return its id;
        `IncompatibleSchema` if the subject's compatibility level refuses it."""

    @abstractmethod
    def schema(self, schema_id: int) -> Schema:
        """The schema with this id; `UnknownSchemaError` if there is none."""

    @abstractmethod
    def subjects(self) -> list[str]:
        """Every subject with at least one live version."""

    @abstractmethod
    def versions(self, subject: str) -> list[Version]:
        """The live versions of `subject`, oldest first; `SubjectNotFound` if none."""


@dataclass
class Subject:
    """A subject's file: its versions (deleted ones kept until deleted for good), the next
    version number (numbers are never reused), its compatibility level if set."""

    subject: str
    versions: list[Version]
    next_version: int = 1
    compatibility: str | None = None

    @property
    def live(self) -> list[Version]:
        return [v for v in self.versions if not v.deleted]

    def to_json(self) -> str:
        return json.dumps(
            {
                "subject": self.subject,
                "versions": [
                    {"version": v.version, "id": v.id, "deleted": v.deleted} for v in self.versions
                ],
                "next_version": self.next_version,
                "compatibility": self.compatibility,
            }
        )

    @classmethod
    def from_json(cls, text: str, subject: str | None = None) -> Subject:
        """Also reads the files of earlier versions: a bare id list (named by the quoted
        subject), then {"subject", "ids"}."""
        record = json.loads(text)
        if isinstance(record, list):
            record = {"subject": subject, "ids": record}
        if "ids" in record:
            versions = [Version(record["subject"], n, i) for n, i in enumerate(record["ids"], 1)]
            return cls(record["subject"], versions, len(versions) + 1)
        return cls(
            record["subject"],
            [
                Version(record["subject"], v["version"], v["id"], v["deleted"])
                for v in record["versions"]
            ],
            record["next_version"],
            record.get("compatibility"),
        )


class FileSchemaRegistry(SchemaRegistry):
    """A directory: `ids/<id>.avsc` (each schema as registered), `subjects/<digest>.json`
    (a `Subject`; the name is kept inside, so any subject name makes a short, safe file name)
    and `config.json` (the global compatibility level). Changes hold a lock on the directory,
    so processes sharing it (workers, `tally feed`) never lose each other's versions."""

    def __init__(self, root: Path):
        self.root = root
        self._ids = root / "ids"
        self._subjects = root / "subjects"
        self._cache: dict[int, str] = {}
        self._lock = threading.Lock()
        self._upgrade_subject_files()

    def _upgrade_subject_files(self) -> None:
        """Subject files of an earlier layout (named by the quoted subject, which a long
        subject cannot be) rewritten in the current one."""
        for path in self._subjects.glob("*.json") if self._subjects.exists() else ():
            text = path.read_text()
            if isinstance(json.loads(text), list):
                record = Subject.from_json(text, unquote(path.stem))
                _write_atomically(self._subject_path(record.subject), record.to_json())
                path.unlink()

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """One change at a time, in this process and across processes sharing the directory."""
        self._subjects.mkdir(parents=True, exist_ok=True)
        self._ids.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- schemas -----------------------------------------------------------------------

    def register(self, subject: str, schema: Schema | str) -> int:
        text = schema_text(schema)
        with self._changing():
            record = self._subject(subject)
            known = self._find(record.live, text)
            if known is not None:
                return known.id
            reasons = incompatibilities(text, self._texts(record.live), self._level_of(record))
            if reasons:
                raise IncompatibleSchema(
                    f"schema being registered is incompatible with an earlier schema for "
                    f"subject {subject!r} ({self._level_of(record).value}): {'; '.join(reasons)}"
                )
            schema_id = self._store(text, subject)
            record.versions.append(Version(subject, record.next_version, schema_id))
            record.next_version += 1
            self._save(record)
        return schema_id

    def schema(self, schema_id: int) -> Schema:
        loaded: Schema = json.loads(self.schema_text(schema_id))
        return loaded

    def schema_text(self, schema_id: int) -> str:
        cached = self._cache.get(schema_id)
        if cached is None:
            try:
                cached = (self._ids / f"{schema_id}.avsc").read_text()
            except FileNotFoundError:
                raise SchemaNotFound(f"schema id {schema_id} not found") from None
            self._cache[schema_id] = cached
        return cached

    def lookup(self, subject: str, schema: Schema | str, deleted: bool = False) -> Version:
        """The version of `subject` that holds `schema`."""
        text = schema_text(schema)
        record = self._existing(subject, deleted)
        found = self._find(record.versions if deleted else record.live, text)
        if found is None:
            raise SchemaNotFound(f"subject {subject!r} has no version with this schema")
        return found

    def uses(self, schema_id: int, deleted: bool = False) -> list[Version]:
        """Every version of every subject that holds the schema `schema_id`."""
        self.schema_text(schema_id)  # SchemaNotFound
        return [
            version
            for record in self._records()
            for version in record.versions
            if version.id == schema_id and (deleted or not version.deleted)
        ]

    # --- subjects and versions ---------------------------------------------------------

    def subjects(self, deleted: bool = False) -> list[str]:
        return sorted(r.subject for r in self._records() if r.live or (deleted and r.versions))

    def versions(self, subject: str, deleted: bool = False) -> list[Version]:
        record = self._existing(subject, deleted)
        return record.versions if deleted else record.live

    def version(self, subject: str, number: int | None, deleted: bool = False) -> Version:
        """Version `number` of `subject` (None: the latest live one)."""
        record = self._existing(subject, deleted and number is not None)
        if number is None:
            return record.live[-1]
        for version in record.versions:
            if version.version == number and (deleted or not version.deleted):
                return version
        raise VersionNotFound(f"subject {subject!r} has no version {number}")

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete every version (hidden, kept), or delete soft-deleted ones for good."""
        with self._changing():
            record = self._subject(subject)
            if not record.versions:
                raise SubjectNotFound(f"subject {subject!r} not found")
            if permanent:
                if record.live:
                    raise SubjectNotSoftDeleted(
                        f"subject {subject!r} must be soft-deleted before it is deleted for good"
                    )
                gone = [v.version for v in record.versions]
                record.versions, record.compatibility = [], None
            else:
                if not record.live:
                    raise SubjectSoftDeleted(f"subject {subject!r} was soft-deleted already")
                gone = [v.version for v in record.live]
                record.versions = [Version(subject, v.version, v.id, True) for v in record.versions]
            self._save(record)
        return gone

    def delete_version(self, subject: str, number: int | None, permanent: bool = False) -> int:
        """Soft-delete one version (None: the latest live one), or delete a soft-deleted one
        for good."""
        with self._changing():
            record = self._existing(subject, permanent)
            target = self.version(subject, number, deleted=number is not None)
            if not permanent and target.deleted:
                raise VersionSoftDeleted(
                    f"version {target.version} of subject {subject!r} was soft-deleted already"
                )
            if permanent and not target.deleted:
                raise VersionNotSoftDeleted(
                    f"version {target.version} of subject {subject!r} must be soft-deleted "
                    "before it is deleted for good"
                )
            if permanent:
                record.versions = [v for v in record.versions if v.version != target.version]
            else:
                record.versions = [
                    Version(subject, v.version, v.id, v.deleted or v.version == target.version)
                    for v in record.versions
                ]
            self._save(record)
        return target.version

    # --- compatibility -----------------------------------------------------------------

    def level(self, subject: str | None = None, default_to_global: bool = True) -> Level:
        """The compatibility level of `subject` (None: the global one)."""
        if subject is not None:
            own = self._subject(subject).compatibility
            if own is not None:
                return Level(own)
            if not default_to_global:
                raise LevelNotConfigured(f"subject {subject!r} has no compatibility level set")
        try:
            return Level(json.loads((self.root / "config.json").read_text())["compatibility"])
        except FileNotFoundError:
            return DEFAULT_LEVEL

    def set_level(self, subject: str | None, level: Level | None) -> None:
        """Set (None: unset) the level of `subject`, or the global one."""
        with self._changing():
            if subject is None:
                body = json.dumps({"compatibility": (level or DEFAULT_LEVEL).value})
                _write_atomically(self.root / "config.json", body)
                return
            record = self._subject(subject)
            record.compatibility = None if level is None else level.value
            self._save(record)

    def check(self, subject: str, schema: Schema | str, number: int | str | None) -> list[str]:
        """Why `schema` is not compatible at the subject's level: with version `number`
        (None: the latest), or "all" as registering it would check; empty if it is."""
        text = schema_text(schema)
        record = self._subject(subject)
        level = self._level_of(record)
        if number == "all":
            return incompatibilities(text, self._texts(record.live), level)
        if not record.live:
            raise SubjectNotFound(f"subject {subject!r} not found")
        target = self.version(subject, number if isinstance(number, int) else None)
        plain = Level(level.value.removesuffix("_TRANSITIVE"))
        return incompatibilities(text, self._texts([target]), plain)

    # --- storage -------------------------------------------------------------------------

    def _level_of(self, record: Subject) -> Level:
        return Level(record.compatibility) if record.compatibility else self.level()

    def _texts(self, versions: list[Version]) -> list[tuple[int, str]]:
        return [(v.version, self.schema_text(v.id)) for v in versions]

    def _find(self, versions: list[Version], text: str) -> Version | None:
        wanted = identity(text)
        return next((v for v in versions if identity(self.schema_text(v.id)) == wanted), None)

    def _store(self, text: str, subject: str) -> int:
        schema_id = deterministic_id(text)
        path = self._ids / f"{schema_id}.avsc"
        if path.exists():
            if identity(path.read_text()) != identity(text):
                raise SchemaError(
                    f"schema id {schema_id} of subject {subject!r} collides with another "
                    f"schema in {self._ids}; rename a field or the record to change its id"
                )
        else:
            _write_atomically(path, text)
        self._cache[schema_id] = path.read_text()
        return schema_id

    def _subject(self, subject: str) -> Subject:
        try:
            return Subject.from_json(self._subject_path(subject).read_text())
        except FileNotFoundError:
            return Subject(subject, [])

    def _existing(self, subject: str, deleted: bool) -> Subject:
        record = self._subject(subject)
        if not record.live and not (deleted and record.versions):
            raise SubjectNotFound(f"subject {subject!r} not found")
        return record

    def _records(self) -> list[Subject]:
        if not self._subjects.exists():
            return []
        return [Subject.from_json(p.read_text()) for p in self._subjects.glob("*.json")]

    def _save(self, record: Subject) -> None:
        _write_atomically(self._subject_path(record.subject), record.to_json())

    def _subject_path(self, subject: str) -> Path:
        digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return self._subjects / f"{digest}.json"


class HttpSchemaRegistry(SchemaRegistry):
    """A client of a Confluent-compatible schema registry; schemas by id are cached forever.

    Lookups are blocking HTTP calls: a worker makes one per new schema id, then never again.
    """

    def __init__(self, base_url: str, timeout: float = 5.0):
        parts = urlsplit(base_url.rstrip("/"))
        #: Credentials in the URL (http://user:password@host, as Confluent's clients take
        #: them) are sent as Basic auth; a Tally registry takes a token as the password.
        self.authorization = (
            "Basic "
            + base64.b64encode(
                f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()
            ).decode()
            if parts.password
            else ""
        )
        self.base_url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self.timeout = timeout
        self._cache: dict[int, Schema] = {}

    def register(self, subject: str, schema: Schema | str) -> int:
        body = {"schema": schema_text(schema)}
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

    def versions(self, subject: str) -> list[Version]:
        path = f"/subjects/{quote(subject, safe='')}/versions"
        return [
            Version(subject, int(v), int(self._call("GET", f"{path}/{v}")["id"]))
            for v in self._call("GET", path)
        ]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Content-Type": "application/vnd.schemaregistry.v1+json",
                **({"Authorization": self.authorization} if self.authorization else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc)
            if exc.code == 404 and path.startswith("/schemas/ids/"):
                raise SchemaNotFound(f"schema registry has no {path}: {detail}") from exc
            if exc.code == 404 and path.startswith("/subjects/"):
                raise SubjectNotFound(f"schema registry has no {path}: {detail}") from exc
            if exc.code == 409:
                raise IncompatibleSchema(f"schema registry refused {path}: {detail}") from exc
            raise SchemaError(f"schema registry {method} {path} -> {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SchemaError(f"schema registry at {self.base_url} unreachable: {exc}") from exc


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
