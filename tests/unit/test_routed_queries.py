"""routed_by_key: a key this worker owns is answered here without Faust's router; any other
goes to its owner through the router, and an owner that cannot be reached or does not answer
in time is a 503 that says what a client should do (a write's: read before retrying)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from faust.app.router import Router
from faust.exceptions import SameNode

from tally.runtime import queries

TABLE: Any = SimpleNamespace(name="sales_topk")
VIEW: Any = SimpleNamespace(web=None)


def routed(method: str = "GET") -> Any:
    """What routed_by_key returns for a GET (or `method`) of key "top": "here" when the
    answer was made here."""

    async def answer() -> Any:
        return "here"

    request: Any = SimpleNamespace(method=method)
    return asyncio.run(queries.routed_by_key(TABLE, "top", VIEW, request, answer))


def owner(monkeypatch: pytest.MonkeyPatch, here: bool, route: Any) -> list[str]:
    """This worker owns the key (`here`) or not; Faust's router answers with `route`; the
    keys routed are listed."""
    routes: list[str] = []

    async def route_req(self: Router, table: str, key: str, web: Any, request: Any) -> Any:
        routes.append(key)
        return await route()

    monkeypatch.setattr(queries, "owns_key", lambda router, table, key: here)
    monkeypatch.setattr(Router, "route_req", route_req)
    return routes


def test_an_owned_key_is_answered_here_without_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    async def relayed() -> str:
        return "there"

    routes = owner(monkeypatch, True, relayed)
    assert routed() == "here" and routes == []


def test_another_workers_key_goes_to_it_and_this_worker_named_otherwise_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def relayed() -> str:
        return "there"

    async def same_node() -> str:
        raise SameNode()

    routes = owner(monkeypatch, False, relayed)
    assert routed() == "there" and routes == ["top"]
    owner(monkeypatch, False, same_node)
    assert routed() == "here"


def test_an_owner_that_cannot_be_reached_or_is_slow_is_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused() -> str:
        raise aiohttp.ClientConnectionError("connection refused")

    async def slow() -> str:
        await asyncio.sleep(5)
        return "too late"

    owner(monkeypatch, False, refused)
    with pytest.raises(queries.OwnerUnavailable, match="retry shortly"):
        routed()
    with pytest.raises(queries.OwnerUnavailable, match="read the current state before retrying"):
        routed("POST")
    monkeypatch.setattr(queries, "QUERY_TIMEOUT_S", 0.05)
    owner(monkeypatch, False, slow)
    with pytest.raises(queries.OwnerUnavailable, match="TimeoutError"):
        routed()
