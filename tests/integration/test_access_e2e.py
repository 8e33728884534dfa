"""Access control end to end: real workers, the real broker, real HTTP.

- The access matrix is generated from the OpenAPI document the worker serves: every operation
  by {no token, malformed, bad signature, expired, revoked, wrong scope, another tenant's token,
  a good one} gets the status its declared rule (`x-tally-access`) says.
- A revocation (`tally tokens revoke`, the real command) is refused by every worker within 2 s.
- A request forwarded to the key's owner acts for its caller only: extra or changed headers
  do not make it act for anyone else, and no token is no answer, wherever the key lives.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import OKPKey

from tally.access import revocations
from tally.access.tokens import OPERATOR, SCOPES, SIGNING_ALGORITHM, unverified_id
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, load_schema
from tally.codecs.registry import FileSchemaRegistry
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter
from tests.conftest import WorkerFactory
from tests.harness import (
    ACCESS,
    Worker,
    bearer,
    consume,
    headers_of,
    produce,
    purchase_record,
    purchase_row,
    start_all,
    wait_until,
)

#: A value for each path parameter: keys that exist nowhere (nothing is changed by a call).
PATH_VALUES = {
    "{server_id}": "web-1",
    "{metric_id}": "cpu",
    "{item_id}": "item-1",
    "{subject}": "matrix-subject",
    "{version}": "1",
    "{schema_id}": "1",
    "{name}": "dashboard.js",
    "{merchant_id}": "default",  # the default tenant, as a merchant: holds the stored row
    "{alert_id}": "x:no-such-post",
    "{action}": "ack",
    "{order_id}": "no-such-order",
}
REFUSED = {401, 403}


def concrete(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    return path


def status_of(worker: Worker, method: str, path: str, headers: dict[str, str]) -> int:
    """The status only (a live stream answers its headers, then is closed unread)."""
    return answer_of(worker, method, path, headers, read=False)[0]


def answer_of(
    worker: Worker, method: str, path: str, headers: dict[str, str], read: bool = True
) -> tuple[int, bytes]:
    """(status, body); the body unread when not `read` (or of a live stream)."""
    body = b"{}" if method in ("post", "put") else None
    request = urllib.request.Request(
        worker.url + path,
        data=body,
        method=method.upper(),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            streamed = response.headers.get("Content-Type", "").startswith("text/event-stream")
            return int(response.status), response.read() if read and not streamed else b""
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def signed_with_another_key() -> str:
    stranger = OKPKey.generate_key("Ed25519", parameters={"kid": ACCESS.key.kid})
    claims = {"sub": "x", "tenant": OPERATOR, "scope": " ".join(SCOPES), "jti": "forged",
              "exp": int(time.time()) + 600}  # fmt: skip
    return jwt.encode(
        {"alg": SIGNING_ALGORITHM, "kid": stranger.kid}, claims, stranger, [SIGNING_ALGORITHM]
    )


def tally_command(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **worker.env},
    )


def revoke(worker: Worker, token: str) -> None:
    revoked = tally_command(worker, "tokens", "revoke", token)
    assert revoked.returncode == 0, revoked.stderr


def test_every_operation_answers_each_kind_of_caller_as_its_rule_says(
    make_worker: WorkerFactory,
) -> None:
    # A low rate, so the limit is seen too; the matrix itself spends one request per token.
    # Every pipeline, so that every route is in the document and the matrix.
    everything = "sales,metrics,archive,merchants,social,fraud"
    worker = make_worker(TALLY_AUTH_RATE="5", TALLY_PIPELINES=everything).start()
    # The default tenant's data under the very ids the matrix asks for: another tenant's
    # token asking for them must get none of it.
    wall = now_ms()
    sample = {"server_id": "web-1", "metric_id": "cpu", "ts_ms": wall, "value": 4242.25}
    assert worker.post("/api/ingest/metrics", json.dumps([sample]).encode())[0] == 202
    row = purchase_row(1, "item-1", 7_777_777, wall)
    assert worker.post("/api/ingest/purchases", json.dumps([row]).encode())[0] == 202
    wait_until(
        lambda: (
            worker.get("/api/sales/items/item-1")["quantity"] == 7_777_777
            and worker.get("/api/servers/web-1/summary")["metrics"]
            and worker.get("/api/merchants/default/summary")["units"] == 7_777_777
        ),
        30,
        interval=1.0,  # within the rate of 5 a second this worker allows a token
        what="the default tenant's data counted",
    )
    wait_until(lambda: worker.get("/api/sales/top")["items"], 30, 1.0, "the site-wide top-K")
    stored = (b"7777777", b"4242.25")
    document = worker.get("/api/openapi.json")
    assert "bearer" in document["components"]["securitySchemes"]
    revoked = ACCESS.token(OPERATOR, SCOPES)
    revoke(worker, revoked)
    wait_until(
        lambda: status_of(worker, "get", "/metrics", bearer(revoked)) == 401, 10, what="revoked"
    )
    checked = leaks_checked = 0
    for route, operations in document["paths"].items():
        path = concrete(route)
        for method, operation in operations.items():
            rule = operation["x-tally-access"]
            scopes, reach = set(rule["scopes"]), rule["reach"]
            where = f"{method.upper()} {path}"
            if not scopes:
                assert operation["security"] == []
                assert status_of(worker, method, path, {}) not in REFUSED, where
                checked += 1
                continue
            assert {"401", "403", "429"} <= set(operation["responses"]), where
            unscoped = sorted(set(SCOPES) - scopes)
            cases = {
                "no token": ({}, 401),
                "malformed": ({"Authorization": "Bearer not.a.token"}, 401),
                "not a bearer": ({"Authorization": "Digest abc"}, 401),
                "bad signature": (bearer(signed_with_another_key()), 401),
                "expired": (bearer(ACCESS.token(OPERATOR, SCOPES, lifetime_s=-1)), 401),
                "revoked": (bearer(revoked), 401),
                "wrong scope": (bearer(ACCESS.token(OPERATOR, unscoped)), 403),
                # Another tenant's token reads its own tenant's data (the two-tenant test
                # checks what it gets); only every tenant's data at once needs an operator.
                "another tenant": (
                    bearer(ACCESS.token("other-tenant", scopes)),
                    403 if reach == "site" else None,
                ),
                "a good token": (bearer(ACCESS.token(OPERATOR, scopes)), None),
            }
            for case, (headers, expected) in cases.items():
                got, body = answer_of(worker, method, path, headers)
                if expected is None:
                    assert got not in REFUSED and got < 500, (where, case, got)
                else:
                    assert got == expected, (where, case, got)
                if case == "another tenant":  # the other tenant's keys: none of its data
                    assert not any(value in body for value in stored), (where, body[:300])
                    leaks_checked += method == "get" and got == 200
                checked += 1
    assert checked > 150 and leaks_checked >= 6, (checked, leaks_checked)
    # The check can fail: the operator's token does see the stored values.
    operator = bearer(ACCESS.token(OPERATOR, ["read"]))
    assert all(
        value in answer_of(worker, "get", path, operator)[1]
        for value, path in (
            (stored[0], "/api/sales/items/item-1"),
            (stored[1], "/api/servers/web-1/summary"),
            (stored[0], "/api/merchants/default/summary"),
        )
    )
    token = ACCESS.token(OPERATOR, ["read"])
    statuses = [status_of(worker, "get", "/api/sales/top", bearer(token)) for _ in range(30)]
    assert 429 in statuses, statuses  # TALLY_AUTH_RATE=5: a burst of 10, then 5 a second
    assert worker.get_status("/api/health")[0] == 200


def test_a_revocation_reaches_every_worker_within_two_seconds(make_worker: WorkerFactory) -> None:
    first, second = start_all(make_worker("w1"), make_worker("w2"))
    token = ACCESS.token("default", ["read"])
    path = "/api/servers/web-1/summary"
    for worker in (first, second):
        assert status_of(worker, "get", path, bearer(token)) == 200
    token_id = unverified_id(token)
    topic = f"{first.env['TALLY_APP_ID']}-revoked-tokens"
    bootstrap = [first.env["TALLY_BROKER"].split("://", 1)[1]]
    asyncio.run(revocations.revoke(bootstrap, topic, 1, token_id, "test"))  # in process: timed
    acknowledged = time.monotonic()
    refused_after = {}
    while len(refused_after) < 2 and time.monotonic() - acknowledged < 10:
        for worker in (first, second):
            if (
                worker.url not in refused_after
                and status_of(worker, "get", path, bearer(token)) == 401
            ):
                refused_after[worker.url] = time.monotonic() - acknowledged
        time.sleep(0.05)
    print(f"revocation refused after {sorted(round(s, 2) for s in refused_after.values())} s")
    assert len(refused_after) == 2 and max(refused_after.values()) <= 2.0, refused_after
    other = ACCESS.token("default", ["read"])  # other tokens are untouched
    assert status_of(second, "get", path, bearer(other)) == 200


def twice_authorized(worker: Worker, server: str, good: str) -> int:
    """A request with two Authorization headers, a good one and another tenant's."""
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=15)
    try:
        connection.putrequest("GET", f"/api/servers/{server}/summary")
        connection.putheader("Authorization", good)
        connection.putheader("Authorization", f"Bearer {ACCESS.token('other-tenant', ['read'])}")
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_forwarded_request_acts_for_its_caller_only(make_worker: WorkerFactory) -> None:
    first, second = start_all(make_worker("w1"), make_worker("w2"))
    servers = [f"web-{n}" for n in range(12)]  # their keys live on both workers
    wall = now_ms()
    rows = [{"server_id": s, "metric_id": "cpu", "ts_ms": wall, "value": 1.0} for s in servers]
    status, answer, _ = first.post("/api/ingest/metrics", json.dumps(rows).encode())
    assert status == 202 and answer["rejected"] == 0, answer
    reader = bearer(ACCESS.token("default", ["read"]))
    stranger = bearer(ACCESS.token("other-tenant", ["read"]))
    forged_headers = {
        "Tally-Forwarded-By-Generation": "1",
        "X-Forwarded-For": "127.0.0.1",
        "X-Tally-Tenant": "default",
        "Tally-Tenant": "default",
        "X-Forwarded-User": "operator",
    }

    def summary(
        worker: Worker, server: str, headers: dict[str, str], query: str = ""
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{worker.url}/api/servers/{server}/summary{query}", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def counted(worker: Worker, server: str) -> bool:
        status, body = summary(worker, server, reader)
        return status == 200 and body.get("metrics", {}).get("cpu", {}).get("count") == 1

    for server in servers:  # from either worker, whichever owns the key
        wait_until(lambda server=server: counted(first, server), 30, what=server)
        assert counted(second, server)
        for worker in (first, second):
            assert summary(worker, server, {})[0] == 401
            # Another tenant's token, with forged headers: that tenant's (empty) answer.
            status, body = summary(worker, server, {**stranger, **forged_headers})
            assert (status, body["tenant"], body["metrics"]) == (200, "other-tenant", {})
            assert (
                summary(worker, server, {**stranger, "Tally-Tenant": "default"})[1]["metrics"] == {}
            )
            # ... and naming the tenant it wants is refused outright.
            assert summary(worker, server, stranger, "?tenant=default")[0] == 403
            assert summary(worker, server, forged_headers)[0] == 401
            assert twice_authorized(worker, server, reader["Authorization"]) == 401


def test_records_carry_their_tenant_and_old_records_count_as_the_default_tenants(
    broker: LocalBroker, make_worker: WorkerFactory, registry_dir: Path
) -> None:
    """Ingest stamps the token's tenant on every row and refuses a row naming another one;
    records written with the schema of before the tenant still decode and count as the
    default tenant's (the registry took the new version as BACKWARD compatible); a record
    naming another tenant counts as that tenant's; one naming no usable tenant is
    dead-lettered."""
    newer = ("tenant",)
    old_schema = {
        **load_schema("purchase"),
        "fields": [f for f in load_schema("purchase")["fields"] if f["name"] not in newer],
    }
    old_writer = AvroCodec(FileSchemaRegistry(registry_dir), "purchases-value", old_schema)
    worker = make_worker().start()  # registers the current schema: a second version
    current = AvroCodec(
        FileSchemaRegistry(registry_dir), "purchases-value", load_schema("purchase")
    )
    assert current.schema_id != old_writer.schema_id
    wall = now_ms()
    sent = [
        (b"item-old", old_writer.dumps(purchase_record("o1", "item-old", wall, quantity=3))),
        (
            b"item-new",
            current.dumps({**purchase_record("n1", "item-new", wall), "tenant": "default"}),
        ),
        (
            b"item-acme",
            current.dumps({**purchase_record("a1", "item-acme", wall), "tenant": "acme"}),
        ),
        (
            b"item-bad",
            current.dumps({**purchase_record("b1", "item-bad", wall), "tenant": "ac|me"}),
        ),
    ]
    produce(broker.bootstrap, "purchases", sent)

    producer = {"Authorization": f"Bearer {ACCESS.token('default', ['ingest'])}"}
    rows = [
        purchase_row(1, "item-http", 2, wall),  # no tenant: the token's
        {**purchase_row(2, "item-http", 5, wall), "tenant": "default"},
        {**purchase_row(3, "item-http", 7, wall), "tenant": "acme"},  # another tenant's
    ]
    status, answer, _ = worker.post("/api/ingest/purchases", json.dumps(rows).encode(), producer)
    assert status == 202 and answer["accepted"] == 2, answer
    (refused,) = answer["rejections"]
    assert (refused["index"], refused["rule"]) == (2, "tenant_mismatch")
    assert "token is tenant 'default'" in refused["reason"]

    def quantity(item: str, tenant: str = "default") -> int:
        return int(worker.get(f"/api/sales/items/{item}?tenant={tenant}")["quantity"])

    wait_until(lambda: quantity("item-http") == 7, 30, what="the stamped rows counted")
    wait_until(lambda: quantity("item-old") == 3, 30, what="the old record counted")
    assert quantity("item-new") == 1
    letters = consume(broker.bootstrap, "dead-letters", expect=2, timeout=30)
    rules = {}
    for record in letters:
        letter = DeadLetter.from_headers(headers_of(record))
        rules[letter.rule] = letter
    assert set(rules) == {"tenant_mismatch", "bad_tenant"}, rules
    assert rules["bad_tenant"].topic == "purchases" and rules["bad_tenant"].offset >= 0
    assert "'ac|me' is not a tenant name" in rules["bad_tenant"].reason
    assert rules["tenant_mismatch"].request.startswith("POST /api/ingest/purchases")
    wait_until(lambda: quantity("item-acme", "acme") == 1, 30, what="acme's record counted")
    assert quantity("item-acme") == 0 and quantity("item-old", "acme") == 0


def test_an_owners_refusal_reaches_the_client_with_what_it_asks_of_it(
    make_worker: WorkerFactory,
) -> None:
    """A request routed to the key's owner and refused there (its own rate limit) comes back
    with the owner's `Retry-After`, not as a bare status."""
    entry, _owner = start_all(
        make_worker("w1", TALLY_AUTH_RATE="0"), make_worker("w2", TALLY_AUTH_RATE="1")
    )
    token = bearer(ACCESS.token("default", ["read"]))
    refused = []
    # The entry answers its own keys without a limit; the owner of the others allows 2 at
    # once, then 1 a second: most of those are refused there.
    for server in (f"web-{n}" for n in range(40)):
        request = urllib.request.Request(f"{entry.url}/api/servers/{server}/summary", headers=token)
        try:
            with urllib.request.urlopen(request, timeout=15):
                pass
        except urllib.error.HTTPError as exc:
            refused.append((exc.code, exc.headers.get("Retry-After")))
    assert refused, "no request was refused by the owner"
    assert all(code == 429 and after is not None and int(after) >= 1 for code, after in refused)
