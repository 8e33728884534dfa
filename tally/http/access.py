"""The gate every web request passes before its handler (a worker's or `tally ingest`'s):
which caller (a bearer token, tally.access.tokens), whether the route lets that caller in
(tally.access.policy), whether the token was revoked, and whether the caller is within its
request rate. The verified caller is `request[IDENTITY]` for the handler.

Refusals say what is missing, with the status a client acts on: 401 (no usable token; with
`WWW-Authenticate`), 403 (the token lacks the scope or tenant reach), 429 (too many requests;
with `Retry-After`). A request forwarded to the key's owner carries the caller's own token,
which the owner verifies again: no other header can make a request act for someone else.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import hdrs, web

from tally.access.policy import Access, access_of
from tally.access.revocations import Revocations
from tally.access.tokens import (
    OPERATOR,
    SCOPES,
    Expected,
    Identity,
    KeyRing,
    TokenRefused,
    load_key_set,
    public_key,
    signing_key,
)
from tally.core.errors import ConfigurationError
from tally.core.limits import TENANT_PATTERN
from tally.core.ratelimit import TokenBuckets
from tally.core.tenancy import not_a_tenant
from tally.http.hygiene import problem
from tally.settings import Settings

logger = logging.getLogger(__name__)

#: Where the handler finds the verified caller.
IDENTITY = web.RequestKey("tally.identity", Identity)
#: The caller when access control is off (TALLY_AUTH=off): an operator with every scope.
ANYONE = Identity("anonymous", OPERATOR, frozenset(SCOPES), math.inf, "")
REALM = 'Bearer realm="tally"'


def caller(request: web.Request | Any) -> Identity:
    """The verified caller of a request the gate let in (Faust's views get aiohttp's
    request under Faust's own type)."""
    return cast(Identity, request[IDENTITY])


@dataclass(frozen=True)
class Refusal(Exception):
    status: int
    message: str
    challenge: str = ""
    retry_after_s: float = 0.0

    def answer(self, path: str) -> web.Response:
        response = problem(self.status, self.message, path)
        response.headers[hdrs.CACHE_CONTROL] = "no-store"  # a refusal is for this caller only
        if self.status == 401:
            response.headers[hdrs.WWW_AUTHENTICATE] = self.challenge or REALM
        if self.retry_after_s > 0:
            response.headers[hdrs.RETRY_AFTER] = str(math.ceil(self.retry_after_s))
        return response


def tenant_asked(request: web.Request | Any, default: str, across: bool) -> str | None:
    """Whose data a request reads: its token's tenant. An operator names a tenant with
    `?tenant=`; without one (or with `*`) it reads every tenant at once (None) where the
    answer merges them (`across`), else `default` (TALLY_DEFAULT_TENANT). Refusal: a tenant's
    token naming another tenant (403), a name that cannot be a tenant (400)."""
    identity = caller(request)
    asked = request.query.get("tenant") or None
    if not identity.operator:
        if asked not in (None, identity.tenant):
            raise Refusal(
                403,
                f"tenant={asked[:70]!r}: the token is tenant {identity.tenant!r}'s, and reads "
                "that tenant's data only",
            )
        return identity.tenant
    if asked is None:
        return None if across else default
    if asked == OPERATOR:
        if across:
            return None
        raise Refusal(400, "tenant=*: this answer is one tenant's; name the tenant")
    if not TENANT_PATTERN.fullmatch(asked):
        message = not_a_tenant(f"tenant={asked[:70]!r}")
        raise Refusal(400, message + (" (or * for every tenant)" if across else ""))
    return asked


def unauthenticated(message: str, error: str = "invalid_token") -> Refusal:
    quoted = message.encode("ascii", "backslashreplace").decode().replace('"', "'")
    return Refusal(401, message, f'{REALM}, error="{error}", error_description="{quoted}"')


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer T`, or of Basic with the token as the password
    (what clients that only speak Basic send: Confluent's registry client, Prometheus)."""
    given = request.headers.getall(hdrs.AUTHORIZATION, [])
    if not given:
        return None
    if len(given) > 1:
        raise unauthenticated("send one Authorization header, not several", "invalid_request")
    scheme, _, credentials = given[0].strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 inside
            password = ""
        if password:
            return password
    raise unauthenticated(
        "the Authorization header must be 'Bearer <token>' (or Basic with the token as the "
        "password)",
        "invalid_request",
    )


class Gate:
    """Access control of one web server; `keys` None: off (every caller is an operator)."""

    def __init__(
        self,
        keys: KeyRing | None,
        revocations: Revocations,
        buckets: TokenBuckets | None,
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self.buckets = buckets

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    @property
    def expected(self) -> Expected:
        """What tokens must carry here (and tokens issued for here are stamped with)."""
        return Expected() if self.keys is None else self.keys.expected

    def identify(self, request: web.Request, access: Access) -> Identity:
        """The caller, if `access` lets them in; else Refusal."""
        if self.keys is None:
            return ANYONE
        token = bearer_token(request)
        if token is None:
            raise Refusal(
                401,
                "this endpoint needs a token: send 'Authorization: Bearer <token>' (an "
                "operator makes one with `tally tokens issue`)",
            )
        try:
            identity = self.keys.verify(token)
        except TokenRefused as exc:
            raise unauthenticated(str(exc)) from None
        if not self.revocations.loaded:
            raise Refusal(
                503, "this server is still reading the revoked tokens; retry shortly", "", 1.0
            )
        if identity.token_id in self.revocations:
            raise unauthenticated("the token was revoked; ask for a new one")
        if access.scopes.isdisjoint(identity.scopes):
            raise Refusal(
                403,
                f"the token does not grant {' or '.join(sorted(access.scopes))} (it grants "
                f"{', '.join(sorted(identity.scopes))})",
            )
        if access.reach == "site" and not identity.operator:
            raise Refusal(
                403,
                "this answer holds every tenant's data: it needs an operator token (tenant *)",
            )
        return identity

    def within_rate(self, identity: Identity) -> None:
        if self.buckets is None:
            return
        wait = self.buckets.take(identity.token_id, time.monotonic())
        if wait > 0:
            raise Refusal(
                429,
                f"too many requests with this token (at most {self.buckets.rate:g} per second, "
                f"TALLY_AUTH_RATE); retry in {wait:.2f} s",
                retry_after_s=wait,
            )

    def admit(self, request: web.Request) -> web.Response | None:
        """A refusal, or None with the caller in `request[IDENTITY]` (tally.http.hygiene
        calls this before every handler)."""
        match = request.match_info
        if match.http_exception is not None:  # no such route or method: its own 404/405
            return None
        resource = match.route.resource
        access = access_of(request.method, resource.canonical if resource else "")
        if access is None:
            logger.error("no access rule for %s %s: refused", request.method, request.path[:200])
            return problem(403, "this route has no access rule (report it)", request.path)
        if access.open:
            return None
        try:
            identity = self.identify(request, access)
            self.within_rate(identity)
        except Refusal as refusal:
            return refusal.answer(request.path)
        request[IDENTITY] = identity
        return None


def configured_gate(settings: Settings) -> Gate:
    """The gate TALLY_AUTH* describe, without its keys yet (`load_keys`, when a server starts:
    importing the app must not create files or fetch URLs)."""
    revocations = Revocations()
    if settings.auth == "off":
        revocations.caught_up()
        return Gate(None, revocations, None)
    rate = settings.auth_rate
    buckets = TokenBuckets(rate, max(1.0, 2 * rate)) if rate else None
    expected = Expected(settings.auth_issuer, settings.auth_audience)
    return Gate(KeyRing([], expected), revocations, buckets)


def load_keys(gate: Gate, settings: Settings) -> None:
    """The keys a starting server verifies tokens with: the deployment's own (created when no
    identity provider's are given, so a first `make run` needs no set-up) and the provider's;
    ConfigurationError when there are none or they cannot be read."""
    if gate.keys is None:
        return
    try:
        own = signing_key(settings.signing_key_path, create=not settings.auth_jwks)
        if own is not None:
            gate.keys.add(public_key(own))
        if settings.auth_jwks:
            source = settings.auth_jwks
            gate.keys.follow_provider(lambda: list(load_key_set(source).keys))
    except ValueError as exc:
        raise ConfigurationError(f"access control (TALLY_AUTH=on): {exc}") from None
