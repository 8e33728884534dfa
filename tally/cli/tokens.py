"""`tally tokens issue|revoke|jwks`: the deployment's bearer tokens (tally.access)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

import click
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, argument, option

from tally.access.revocations import revoke
from tally.access.tokens import (
    OPERATOR,
    check_tenant,
    issue,
    parse_scopes,
    public_key,
    public_key_set,
    signing_key,
    unverified_id,
)
from tally.app import app, gate, settings
from tally.cli.errors import fail, parsed_by
from tally.core.errors import BrokerError
from tally.settings import duration_seconds, retention_days


def lifetime_seconds(text: str) -> float:
    """90d, 26w, 1y, 12h, 30m: how long a token stays valid."""
    try:
        return duration_seconds(text)
    except ValueError:
        try:
            return retention_days(text) * 86_400.0
        except ValueError:
            raise ValueError("must be a duration like 90d, 26w, 1y, 12h or 30m") from None


def token_id(given: str) -> str:
    """A token id, or the id inside a whole token."""
    if given.count(".") != 2:
        return given
    try:
        return unverified_id(given)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


#: What a command reading answers asks for.
READ_ONLY = frozenset({"read"})


def own_token(scopes: frozenset[str]) -> str:
    """A token for a command's own requests to workers: TALLY_TOKEN when set, else a
    5-minute operator token signed with the deployment's key, else none (TALLY_AUTH=off)."""
    given = os.environ.get("TALLY_TOKEN", "")
    if given or settings.auth == "off":
        return given
    key = signing_key(settings.signing_key_path, create=False)
    if key is None:
        fail(
            f"no token: set TALLY_TOKEN, or run where the signing key is "
            f"({settings.signing_key_path}, TALLY_AUTH_KEY_FILE)"
        )
    return issue(key, "tally-cli", OPERATOR, scopes, 300, gate.expected)[0]


@app.command(
    argument("action", type=click.Choice(["issue", "revoke", "jwks"])),
    argument("tokens", nargs=-1),
    option(
        "--tenant",
        default=None,
        callback=parsed_by(check_tenant),
        help=f"issue: whose data the token reaches ({OPERATOR}: every tenant's, an operator).",
    ),
    option(
        "--scope",
        "scopes",
        default="read",
        show_default=True,
        callback=parsed_by(parse_scopes),
        help="issue: what it may do, comma-separated: ingest, read, admin, metrics, review.",
    ),
    option(
        "--expires",
        default="90d",
        show_default=True,
        callback=parsed_by(lifetime_seconds),
        help="issue: how long it stays valid (90d, 26w, 1y, 12h, 30m).",
    ),
    option("--subject", default=None, help="issue: who it is for [default: the tenant]."),
    option("--reason", default="revoked by an operator", help="revoke: why (kept with it)."),
)
async def tokens(
    self: AppCommand,
    action: str,
    tokens: tuple[str, ...],
    tenant: str | None,
    scopes: frozenset[str],
    expires: float,
    subject: str | None,
    reason: str,
) -> None:
    """issue: print a new token (once: it is not stored) signed with TALLY_AUTH_KEY_FILE,
    its claims on stderr. revoke TOKEN_OR_ID...: refused by every worker within seconds.
    jwks: the public key set tokens are verified with (for another deployment or a gateway)."""
    key = signing_key(settings.signing_key_path, create=action == "issue")
    if action == "jwks":
        if key is None:
            fail(f"no signing key at {settings.signing_key_path} yet (TALLY_AUTH_KEY_FILE)")
        print(json.dumps(public_key_set([public_key(key)]), indent=2))
        return
    if action == "issue":
        if tenant is None:
            fail(f"say whose data the token reaches: --tenant NAME (or --tenant '{OPERATOR}')")
        assert key is not None  # created when missing
        token, claims = issue(key, subject or tenant, tenant, scopes, expires, gate.expected)
        until = datetime.fromtimestamp(claims["exp"], tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(
            f"token {claims['jti']}: tenant {tenant}, scope {claims['scope']}, until {until} "
            f"(it is shown once; `tally tokens revoke {claims['jti']}` takes it back)",
            file=sys.stderr,
        )
        print(token)
        return
    if not tokens:
        fail("name the tokens to revoke: tally tokens revoke TOKEN_OR_ID ...")
    for given in tokens:
        revoked = token_id(given)
        try:
            await revoke(
                settings.bootstrap_servers,
                settings.revocations_topic,
                settings.replication,
                revoked,
                reason,
            )
        except (KafkaError, BrokerError, OSError) as exc:
            fail(
                f"could not record the revocation on the broker at "
                f"{', '.join(settings.bootstrap_servers)} ({type(exc).__name__}: {exc})"
            )
        print(f"revoked {revoked}: every worker refuses it within seconds")
