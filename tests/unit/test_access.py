"""Tokens, per-token rate limits and the gate: signed claims in, the route's rule applied,
refusals a person can act on. The gate runs in a real aiohttp server, asked over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey, OKPKey, RSAKey

from tally.access.policy import access_of
from tally.access.revocations import Revocations
from tally.access.tokens import (
    OPERATOR,
    SCOPES,
    Expected,
    KeyRing,
    TokenRefused,
    issue,
    load_key_set,
    parse_scopes,
    public_key,
    public_key_set,
    signing_key,
    unverified_id,
)
from tally.core.ratelimit import TokenBuckets
from tally.http.access import IDENTITY, Gate
from tally.http.hygiene import guard
from tests.harness import serve

KEY = OKPKey.generate_key("Ed25519", parameters={"kid": "own"})
OTHER = OKPKey.generate_key("Ed25519", parameters={"kid": "own"})  # same kid, other key
RING = KeyRing([public_key(KEY)])


#: Tokens of the parametrized cases are made when the tests are collected, which may be long
#: before they run (after the integration tests): they stay valid a day.
DAY_S = 86_400.0


def token(tenant: str = "acme", scopes: str = "read", lifetime_s: float = DAY_S) -> str:
    return issue(KEY, f"user-{tenant}", tenant, parse_scopes(scopes), lifetime_s)[0]


def signed(claims: dict[str, Any], key: Any = KEY, alg: str = "Ed25519") -> str:
    kid = {"kid": key.kid} if getattr(key, "kid", None) else {}
    return jwt.encode({"alg": alg, **kid}, claims, key, algorithms=[alg])


def claims(**changes: Any) -> dict[str, Any]:
    base = {"sub": "u", "tenant": "acme", "scope": "read", "exp": time.time() + DAY_S, "jti": "j1"}
    return {name: value for name, value in {**base, **changes}.items() if value is not None}


def test_an_issued_token_verifies_to_its_claims() -> None:
    identity = RING.verify(token("acme", "read,ingest"))
    assert (identity.subject, identity.tenant) == ("user-acme", "acme")
    assert identity.scopes == {"read", "ingest"} and not identity.operator
    assert RING.verify(token(OPERATOR, "admin")).operator


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("not-a-jwt", "not a JWT"),
        (signed(claims(), OTHER), "signature does not match"),
        (signed(claims(exp=time.time() - 1)), "expired"),
        (signed(claims(tenant=None)), "no 'tenant' claim"),
        (signed(claims(jti=None)), "no 'jti' claim"),
        (signed(claims(scope="read write")), "write is not a scope"),
        (signed(claims(tenant="a|b")), "not a tenant name"),
        (signed(claims(exp="tomorrow")), "must be finite numbers"),
        (signed(claims(exp=float("inf"))), "must be finite numbers"),
        (signed(claims(jti="")), "'jti' is empty"),
        (signed(claims(nbf=time.time() + 3600)), "not valid yet"),
        (signed(claims(), OctKey.import_key("k" * 32), "HS256"), "algorithm is not taken"),
    ],
)
def test_a_bad_token_is_refused_with_the_reason(bad: str, says: str) -> None:
    with pytest.raises(TokenRefused, match=says):
        RING.verify(bad)


def test_issuer_and_audience_are_checked_when_configured() -> None:
    ring = KeyRing([public_key(KEY)], Expected("https://idp.example", "tally"))
    good = {**claims(), "iss": "https://idp.example", "aud": ["tally", "other"]}
    assert ring.verify(signed(good)).tenant == "acme"
    with pytest.raises(TokenRefused, match="not meant for 'tally'"):
        ring.verify(signed({**good, "aud": "another-app"}))
    with pytest.raises(TokenRefused, match="not issued by"):
        ring.verify(signed({**good, "iss": "https://elsewhere"}))
    issued = issue(KEY, "u", "acme", frozenset({"read"}), 60, ring.expected)[0]
    assert ring.verify(issued).subject == "u"  # Tally's own tokens carry both


def test_an_unknown_key_id_fetches_the_providers_key_set_again() -> None:
    provider = [OKPKey.generate_key("Ed25519", parameters={"kid": "idp-1"})]
    fetches = []

    def fetch() -> list[Any]:
        fetches.append(1)
        return [public_key(key) for key in provider]

    ring = KeyRing([])
    ring.follow_provider(fetch)
    rotated = OKPKey.generate_key("Ed25519", parameters={"kid": "idp-2"})
    provider.append(rotated)
    with pytest.raises(TokenRefused, match="does not know"):  # fetched under a minute ago
        ring.verify(signed(claims(), rotated))
    ring.fetched_at -= 61
    assert ring.verify(signed(claims(jti="j2"), rotated)).token_id == "j2"
    assert len(fetches) == 2


def test_an_identity_providers_rsa_key_set_is_taken(tmp_path: Path) -> None:
    provider = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(public_key_set([provider])))
    ring = KeyRing([public_key(KEY), *load_key_set(str(jwks)).keys])
    assert ring.verify(signed(claims(), provider, "RS256")).tenant == "acme"
    with pytest.raises(ValueError, match="cannot read a JSON Web Key Set"):
        load_key_set(str(tmp_path / "missing.json"))


def test_a_remembered_token_still_expires() -> None:
    short = token(lifetime_s=5)
    assert RING.verify(short).tenant == "acme"
    with pytest.raises(TokenRefused, match="expired"):
        RING.verify(short, now=time.time() + 10)


def test_the_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "key.jwk"
    assert signing_key(path, create=False) is None
    first = signing_key(path, create=True)
    again = signing_key(path, create=True)
    assert first is not None and again is not None
    assert first.as_dict(private=True) == again.as_dict(private=True)
    assert path.stat().st_mode & 0o777 == 0o600


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
def test_a_bucket_never_lets_more_through_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    buckets = TokenBuckets(rate, burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        wait = buckets.take("t", now)
        if wait == 0:
            allowed += 1
        else:  # asked again after the wait it named, it lets one through
            now += wait + 1e-6
            assert buckets.take("t", now) == 0
            allowed += 1
    assert allowed <= burst + rate * now + 1e-6


def test_buckets_are_per_key_and_bounded() -> None:
    buckets = TokenBuckets(rate=1, burst=2, max_keys=3)
    assert [buckets.take("a", 0) for _ in range(3)] == [0, 0, 1.0]
    assert buckets.take("b", 0) == 0  # another key is untouched
    for key in "cdef":
        buckets.take(key, 0)
    assert len(buckets._buckets) == 3


# --- the gate, over HTTP -------------------------------------------------------------------


async def answer(request: web.Request) -> web.Response:
    identity = request.get(IDENTITY)
    return web.json_response({"tenant": identity.tenant if identity else None})


def gated_application(gate: Gate) -> web.Application:
    application = web.Application(middlewares=[guard(gate.admit)])
    application.router.add_get("/api/health", answer)
    application.router.add_get("/api/sales/top", answer)
    application.router.add_get("/metrics", answer)
    application.router.add_get("/api/servers/{server_id}/summary", answer)
    application.router.add_post("/api/ingest/{endpoint}", answer)
    application.router.add_post("/registry/subjects/{subject}/versions", answer)
    application.router.add_get("/unlisted", answer)
    return application


def loaded(*revoked: str) -> Revocations:
    revocations = Revocations()
    for token_id in revoked:
        revocations.absorb(token_id.encode(), b'{"reason": "test"}')
    revocations.caught_up()
    return revocations


async def ask(
    gate: Gate, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    runner, url = await serve(gated_application(gate))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, url + path, headers=headers or {}, json={} if method == "POST" else None
            ) as response,
        ):
            return response.status, await response.json(), response.headers
    finally:
        await runner.cleanup()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def default_gate(revocations: Revocations | None = None, rate: float = 0) -> Gate:
    buckets = TokenBuckets(rate, rate) if rate else None
    return Gate(RING, revocations or loaded(), buckets)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "says"),
    [
        ("GET", "/api/health", {}, 200, ""),
        ("GET", "/api/servers/s1/summary", {}, 401, "needs a token"),
        ("GET", "/api/servers/s1/summary", {"Authorization": "Token x"}, 401, "must be 'Bearer"),
        ("GET", "/api/servers/s1/summary", bearer("x.y.z"), 401, "not a JWT"),
        ("GET", "/api/servers/s1/summary", {"Authorization": "Basic ZZé"}, 401, "Basic"),
        ("GET", "/api/servers/s1/summary", bearer(token(scopes="ingest")), 403, "does not grant"),
        ("GET", "/api/servers/s1/summary", bearer(token()), 200, ""),
        ("GET", "/metrics", bearer(token(scopes="metrics")), 403, "operator token"),
        ("GET", "/metrics", bearer(token(OPERATOR, "metrics")), 200, ""),
        ("GET", "/api/sales/top", bearer(token("other")), 200, ""),
        ("POST", "/api/ingest/metrics", bearer(token(scopes="ingest")), 200, ""),
        ("POST", "/api/ingest/metrics", bearer(token(scopes="read")), 403, "ingest"),
        ("POST", "/registry/subjects/s/versions", bearer(token("other", "ingest")), 200, ""),
        ("POST", "/registry/subjects/s/versions", bearer(token(scopes="read")), 403, "admin"),
        ("GET", "/unlisted", bearer(token(OPERATOR, "admin")), 403, "no access rule"),
        ("GET", "/no/such/route", {}, 404, "Not Found"),
    ],
)
def test_the_gate_applies_each_routes_rule(
    method: str, path: str, headers: dict[str, str], status: int, says: str
) -> None:
    got, body, answered = asyncio.run(ask(default_gate(), method, path, headers))
    assert got == status, body
    assert says in str(body.get("error") or body.get("message") or "")
    if status == 401:
        assert answered["WWW-Authenticate"].startswith('Bearer realm="tally"')


def test_basic_auth_with_the_token_as_password_is_a_bearer_token() -> None:
    basic = base64.b64encode(f"anyone:{token()}".encode()).decode()
    got, body, _ = asyncio.run(
        ask(default_gate(), "GET", "/api/servers/s1/summary", {"Authorization": f"Basic {basic}"})
    )
    assert (got, body) == (200, {"tenant": "acme"})


def test_a_revoked_token_is_refused_and_nothing_is_trusted_before_the_list_is_read() -> None:
    value = token()
    token_id = RING.verify(value).token_id
    got, body, _ = asyncio.run(
        ask(default_gate(loaded(token_id)), "GET", "/api/servers/s1/summary", bearer(value))
    )
    assert (got, body["error"]) == (401, "the token was revoked; ask for a new one")
    unread = Revocations()
    got, body, headers = asyncio.run(
        ask(default_gate(unread), "GET", "/api/servers/s1/summary", bearer(value))
    )
    assert got == 503 and headers["Retry-After"] == "1"


def test_a_token_over_its_rate_gets_429_with_retry_after() -> None:
    gate = default_gate(rate=2)

    async def burst() -> list[tuple[int, str]]:
        runner, url = await serve(gated_application(gate))
        try:
            async with aiohttp.ClientSession(headers=bearer(token())) as session:
                seen = []
                for _ in range(4):
                    async with session.get(url + "/api/servers/s1/summary") as response:
                        seen.append((response.status, response.headers.get("Retry-After", "")))
                async with session.get(
                    url + "/api/servers/s1/summary", headers=bearer(token("acme"))
                ) as response:  # another token has its own bucket
                    seen.append((response.status, ""))
                return seen
        finally:
            await runner.cleanup()

    seen = asyncio.run(burst())
    assert seen[:2] == [(200, ""), (200, "")]
    assert seen[2][0] == 429 and int(seen[2][1]) >= 1
    assert seen[-1] == (200, "")


def test_registry_lookups_are_reads_and_other_registry_writes_are_admin() -> None:
    assert access_of("post", "/registry/subjects/{subject}").scopes == {"read", "ingest", "admin"}
    assert access_of("put", "/registry/config").scopes == {"admin"}
    assert access_of("delete", "/registry/subjects/{subject}").scopes == {"admin"}
    assert access_of("get", "/registry/schemas/ids/{schema_id}").reach == "shared"
    assert access_of("head", "/api/sales/top") == access_of("get", "/api/sales/top")
    assert set(SCOPES) == {"ingest", "read", "admin", "metrics", "review"}


def test_reading_the_revocations_again_drops_what_the_topic_no_longer_holds() -> None:
    """A tombstone compacted away while a process was cut off: its next reading of the topic
    does not have the token, and once caught up neither has the process."""
    revocations = loaded("kept", "taken-back")
    revocations.restart()
    revocations.absorb(b"kept", b"{}")
    assert "taken-back" in revocations  # the earlier reading holds until this one caught up
    revocations.caught_up()
    assert "kept" in revocations and "taken-back" not in revocations
    revocations.absorb(b"kept", None)  # a tombstone takes a revocation back
    assert "kept" not in revocations


def test_a_tokens_id_is_read_without_its_signature_for_revoking() -> None:
    issued, stamped = issue(KEY, "u", "acme", frozenset({"read"}), 60)
    assert unverified_id(issued) == stamped["jti"]
    assert unverified_id(signed(claims(), OTHER)) == "j1"  # any signer: revoking takes away
    with pytest.raises(ValueError, match="no readable 'jti'"):
        unverified_id("a.b.c")
