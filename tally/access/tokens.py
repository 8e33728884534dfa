"""Bearer tokens: JWTs whose claims say who calls (`sub`), for which tenant (`tenant`, `*` for
operators), what they may do (`scope`), until when (`exp`) and under which id they can be
revoked (`jti`).

Tokens are verified with joserfc against a key ring: the deployment's own Ed25519 signing key
(a JWK file that `tally tokens issue` creates on first use) and/or a JSON Web Key Set from an
identity provider (a file or URL), so tokens an existing provider issues work unchanged. A
verified token is remembered (a signature check costs ~0.1 ms, a lookup ~1 µs); expiry and
revocation are checked on every use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwk import KeySet, OKPKey

from tally.core.limits import TENANT_PATTERN
from tally.core.tenancy import not_a_tenant

logger = logging.getLogger(__name__)

#: What a token may allow: send rows, read answers, administer (registry writes), scrape.
SCOPES = ("ingest", "read", "admin", "metrics", "review")
#: The tenant claim of an operator: every tenant's data and the site-wide views.
OPERATOR = "*"
#: Signature algorithms taken: Ed25519 (Tally's own; EdDSA is its older name) and what
#: identity providers sign with. Never "none", never a shared-secret HMAC.
ALGORITHMS = ["Ed25519", "EdDSA", "RS256", "ES256"]
#: The algorithm Tally signs its own tokens with (RFC 9864).
SIGNING_ALGORITHM = "Ed25519"
#: Verified tokens remembered; the least recently used is forgotten first.
REMEMBERED_TOKENS = 10_000
#: Longest token read (a JWT of a provider with many claims is a few kB).
MAX_TOKEN_BYTES = 8192


class TokenRefused(Exception):
    """The request's credentials do not identify anyone; the message says why, for a person."""


@dataclass(frozen=True)
class Identity:
    """A verified caller."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    expires_at: float  # epoch seconds
    token_id: str

    @property
    def operator(self) -> bool:
        return self.tenant == OPERATOR

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def parse_scopes(text: str) -> frozenset[str]:
    """'read,ingest' or 'read ingest' (OAuth's space-separated form) → the scopes; unknown ones
    are an error, so a typo never silently grants less."""
    names = frozenset(part for part in re.split(r"[\s,]+", text) if part)
    unknown = sorted(names - set(SCOPES))
    if unknown or not names:
        raise ValueError(
            f"{', '.join(unknown) or 'no scope'} is not a scope; list some of {', '.join(SCOPES)}"
        )
    return names


def check_tenant(tenant: str) -> str:
    """`tenant` if it can name a tenant (it leads table keys) or is `*`; else ValueError."""
    if tenant != OPERATOR and not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(
            not_a_tenant(f"tenant {tenant[:70]!r}") + f" (or {OPERATOR} for an operator)"
        )
    return tenant


@dataclass(frozen=True)
class Expected:
    """What this deployment asks of a token beyond its signature: the issuer (`iss`) and the
    audience (`aud`) an identity provider stamps, when configured (TALLY_AUTH_ISSUER,
    TALLY_AUTH_AUDIENCE): a token the same provider issued for another application is then
    refused."""

    issuer: str = ""
    audience: str = ""

    def check(self, claims: Mapping[str, Any]) -> None:
        if self.issuer and claims.get("iss") != self.issuer:
            raise TokenRefused(f"the token was not issued by {self.issuer!r} ('iss')")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.audience and self.audience not in audiences:
            raise TokenRefused(f"the token is not meant for {self.audience!r} ('aud')")

    def stamped(self) -> dict[str, str]:
        """The claims a token Tally issues carries for this deployment."""
        return {
            **({"iss": self.issuer} if self.issuer else {}),
            **({"aud": self.audience} if self.audience else {}),
        }


def identity_of(claims: Mapping[str, Any], now: float, expected: Expected) -> Identity:
    """The caller a verified token's claims name; TokenRefused when a claim is missing or
    unusable, or the token is not valid at `now`."""
    for claim in ("sub", "tenant", "scope", "exp", "jti"):
        if claim not in claims:
            raise TokenRefused(f"the token has no {claim!r} claim")
    expected.check(claims)
    expires, not_before = claims["exp"], claims.get("nbf", 0)
    if not all(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        for value in (expires, not_before)
    ):
        raise TokenRefused("the token's 'exp' and 'nbf' must be finite numbers (epoch seconds)")
    if expires <= now:
        raise TokenRefused("the token has expired; ask for a new one")
    if not_before > now + 60:
        raise TokenRefused("the token is not valid yet ('nbf' is in the future)")
    scope, subject, tenant, token_id = (
        claims["scope"],
        claims["sub"],
        claims["tenant"],
        claims["jti"],
    )
    if not all(isinstance(value, str) for value in (scope, subject, tenant, token_id)):
        raise TokenRefused("the token's 'sub', 'tenant', 'scope' and 'jti' must be strings")
    if not token_id:
        raise TokenRefused("the token's 'jti' is empty: a token needs an id to be revoked by")
    try:
        return Identity(subject, check_tenant(tenant), parse_scopes(scope), expires, token_id)
    except ValueError as exc:
        raise TokenRefused(f"the token's claims are unusable: {exc}") from None


def load_key_set(source: str) -> KeySet:
    """A JSON Web Key Set from a file path or an https URL (an identity provider's; plain http
    would let anyone on the path swap the keys)."""
    if source.startswith("http://"):
        raise ValueError(f"{source}: a key set is fetched over https only")
    try:
        if source.startswith("https://"):
            with urllib.request.urlopen(source, timeout=10) as answer:
                text = answer.read().decode()
        else:
            text = Path(source).read_text()
        return KeySet.import_key_set(json.loads(text))
    except (OSError, ValueError, JoseError) as exc:
        raise ValueError(f"cannot read a JSON Web Key Set from {source}: {exc}") from exc


def signing_key(path: Path, create: bool) -> OKPKey | None:
    """The deployment's own Ed25519 key (a private JWK, readable by its owner only), created
    when missing and `create`; None when missing and not `create`."""
    try:
        return OKPKey.import_key(json.loads(path.read_text()))
    except FileNotFoundError:
        if not create:
            return None
    except (OSError, ValueError, JoseError) as exc:
        raise ValueError(f"{path} is not a usable signing key: {exc}") from exc
    key = OKPKey.generate_key("Ed25519", parameters={"kid": uuid.uuid4().hex[:16]})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole beside it, then linked in: a process starting at the same moment reads
    # either no key or a whole one; of two creating it at once, the first link wins.
    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(key.as_dict(private=True), file)
        os.link(draft, path)
    except FileExistsError:
        return signing_key(path, create=False)
    finally:
        draft.unlink()
    return key


def unverified_id(token: str) -> str:
    """A token's `jti`, read without checking its signature (to revoke it: revoking only ever
    takes access away); ValueError when it has none."""
    try:
        claims = json.loads(jws.extract_compact(token.encode()).payload)
        return str(claims["jti"])
    except (JoseError, ValueError, KeyError, TypeError):
        raise ValueError("this token has no readable 'jti' claim") from None


def public_key(key: OKPKey) -> OKPKey:
    """The public half of a key (what verifying needs; the private half stays in its file)."""
    return OKPKey.import_key(key.as_dict(private=False))


def public_key_set(keys: Iterable[Any]) -> dict[str, Any]:
    """The public halves of `keys`, as a JWKS document (what other deployments verify with)."""
    return {"keys": [key.as_dict(private=False) for key in keys]}


def authorization(token: str) -> dict[str, str]:
    """The header a request carries a token in."""
    return {"Authorization": f"Bearer {token}"}


def issue(
    key: OKPKey,
    subject: str,
    tenant: str,
    scopes: frozenset[str],
    lifetime_s: float,
    expected: Expected = Expected(),
) -> tuple[str, dict[str, Any]]:
    """A signed token and its claims."""
    now = int(time.time())
    claims = {
        **expected.stamped(),
        "sub": subject,
        "tenant": check_tenant(tenant),
        "scope": " ".join(s for s in SCOPES if s in scopes),
        "iat": now,
        "exp": now + int(lifetime_s),
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": SIGNING_ALGORITHM, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[SIGNING_ALGORITHM]), claims


#: An unknown key id fetches an identity provider's key set again at most this often.
REFETCH_EVERY_S = 60.0


class KeyRing:
    """The keys tokens are verified with, by key id, and the tokens verified so far. A token
    naming a key id the ring does not know has the provider's key set fetched again (at most
    every REFETCH_EVERY_S): a provider rotating its keys needs no restart."""

    def __init__(
        self,
        keys: Iterable[Any],
        expected: Expected = Expected(),
    ) -> None:
        self.own = list(keys)
        self.expected = expected
        self.fetch: Callable[[], list[Any]] | None = None
        self.fetched: list[Any] = []
        self.fetched_at = 0.0
        self._verified: OrderedDict[str, Identity] = OrderedDict()

    def follow_provider(self, fetch: Callable[[], list[Any]]) -> None:
        """Take the keys `fetch` returns (now: ValueError if it cannot), and again when a token
        names a key id not among them."""
        self.fetched, self.fetched_at, self.fetch = fetch(), time.monotonic(), fetch

    @property
    def keys(self) -> list[Any]:
        return self.own + self.fetched

    def add(self, key: Any) -> None:
        self.own.append(key)

    def refetch(self) -> bool:
        """Fetch the provider's key set again if it is time; whether it was."""
        if self.fetch is None or time.monotonic() - self.fetched_at < REFETCH_EVERY_S:
            return False
        self.fetched_at = time.monotonic()
        try:
            self.fetched = self.fetch()
        except ValueError as exc:
            logger.warning("the identity provider's key set could not be fetched again: %s", exc)
            return False
        return True

    def candidates(self, token: str) -> list[Any]:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, UnicodeError):
            raise TokenRefused("the token is not a JWT (header.payload.signature)") from None
        kid = header.get("kid")

        def named() -> list[Any]:
            return [key for key in self.keys if kid is None or key.kid == kid]

        found = named() or (named() if self.refetch() else [])
        if not found:
            raise TokenRefused(f"the token was signed with a key this service does not know "
                               f"(kid {str(kid)[:40]!r})")  # fmt: skip
        return found

    def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity a token carries, or TokenRefused saying why not."""
        now = time.time() if now is None else now
        known = self._verified.get(token)
        if known is not None:
            self._verified.move_to_end(token)
            if known.expires_at <= now:
                raise TokenRefused("the token has expired; ask for a new one")
            return known
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        claims = self.signed_claims(token)
        identity = identity_of(claims, now, self.expected)
        self._verified[token] = identity
        if len(self._verified) > REMEMBERED_TOKENS:
            self._verified.popitem(last=False)
        return identity

    def signed_claims(self, token: str) -> dict[str, Any]:
        failure = "the token's signature does not match"
        for key in self.candidates(token):
            try:
                return dict(jwt.decode(token, key, algorithms=ALGORITHMS).claims)
            except JoseError as exc:
                failure = describe(exc)
        raise TokenRefused(failure)


def describe(exc: JoseError) -> str:
    """joserfc's error as a sentence."""
    if isinstance(exc, BadSignatureError):
        return "the token's signature does not match (signed with another key, or altered)"
    if isinstance(exc, UnsupportedAlgorithmError):
        return f"the token's algorithm is not taken here; use one of {', '.join(ALGORITHMS)}"
    return f"the token cannot be read ({exc.error}: {exc.description or 'malformed'})"
