"""Faust's fetch loop hands each message over by racing the delivery against the flow's
suspension (`wait_first`); `faust_compat.deliver_messages_inline` runs the delivery inline
and races only a delivery that waits. These check it keeps Faust's outcomes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from mode import Service

import tally.app  # noqa: F401  (installs the patches)


class FetchLoop(Service):
    """What the patched `wait_first` reads of a consumer: its suspension and its service
    events."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


def hand_over(loop: FetchLoop, delivery: Any) -> Any:
    """The fetch loop's call, as Faust makes it."""
    wait_first: Any = FaustConsumer.wait_first
    return wait_first(loop, delivery, loop.suspend_flow.wait())


def test_the_patch_is_installed() -> None:
    assert getattr(FaustConsumer.wait_first, "delivers_inline", False)


def test_a_delivery_that_does_not_wait_runs_inline_and_makes_no_task() -> None:
    async def scenario() -> None:
        loop = FetchLoop()
        delivered: list[int] = []

        async def deliver() -> str:
            delivered.append(1)
            return "done"

        suspended = loop.suspend_flow.wait()
        tasks = len(asyncio.all_tasks())
        wait_first: Any = FaustConsumer.wait_first
        handing = wait_first(loop, deliver(), suspended)
        results = await handing
        assert delivered == [1] and results.results == ["done"] and not results.stopped
        assert len(asyncio.all_tasks()) == tasks
        assert suspended.cr_frame is None  # closed, never to warn of not being awaited

    asyncio.run(scenario())


def test_other_tasks_run_between_two_inline_deliveries() -> None:
    """A query's handler waits no longer than one delivery, as with Faust's race."""

    async def scenario() -> None:
        loop = FetchLoop()
        order: list[str] = []

        async def deliver(n: int) -> None:
            order.append(f"delivery {n}")

        async def fetch_loop() -> None:
            for n in range(3):
                await hand_over(loop, deliver(n))

        async def query() -> None:
            for _ in range(3):
                order.append("query")
                await asyncio.sleep(0)

        await asyncio.gather(fetch_loop(), query())
        assert order == ["delivery 0", "query", "delivery 1", "query", "delivery 2", "query"]

    asyncio.run(scenario())


def test_a_delivery_that_waits_finishes_with_its_result_and_sees_what_it_waited_for() -> None:
    async def scenario() -> None:
        loop = FetchLoop()
        room: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        failing: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def deliver() -> str:
            got = await room  # a full buffer: waits for room
            try:
                await failing
            except ValueError as exc:
                return f"{got}, then {exc}"
            return "no error"

        handing = asyncio.ensure_future(hand_over(loop, deliver()))
        await asyncio.sleep(0.01)
        assert not handing.done()
        room.set_result("room")
        await asyncio.sleep(0.01)
        failing.set_exception(ValueError("refused"))
        results = await asyncio.wait_for(handing, 1)
        assert results.results == ["room, then refused"] and not results.stopped

    asyncio.run(scenario())


def test_a_waiting_delivery_is_cancelled_when_the_flow_is_suspended() -> None:
    async def scenario() -> None:
        loop = FetchLoop()
        ended: list[str] = []

        async def deliver() -> None:
            try:
                await asyncio.Event().wait()  # never room
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

        handing = asyncio.ensure_future(hand_over(loop, deliver()))
        await asyncio.sleep(0.01)
        loop.suspend_flow.set()  # a rebalance
        results = await asyncio.wait_for(handing, 1)
        await asyncio.sleep(0)  # the cancelled delivery's task runs its cancellation
        assert results.results == [True] and not results.stopped
        assert ended == ["cancelled"]

    asyncio.run(scenario())


def test_a_delivery_that_raises_inline_raises_to_the_fetch_loop() -> None:
    async def scenario() -> None:
        async def deliver() -> None:
            raise KeyError("no callback for this partition")

        with pytest.raises(KeyError):
            await hand_over(FetchLoop(), deliver())

    asyncio.run(scenario())


def test_a_delivery_that_only_yields_once_finishes_in_its_task() -> None:
    async def scenario() -> None:
        async def deliver() -> str:
            await asyncio.sleep(0)  # a bare yield: asks to be run again, waits on nothing
            return "slept"

        results = await asyncio.wait_for(hand_over(FetchLoop(), deliver()), 1)
        assert results.results == ["slept"] and not results.stopped

    asyncio.run(scenario())


def test_a_delivery_whose_wait_ends_before_its_task_starts_still_sees_the_result() -> None:
    async def scenario() -> None:
        room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def deliver() -> str:
            return await room

        handing = hand_over(FetchLoop(), deliver())
        stepping = asyncio.ensure_future(handing)
        asyncio.get_running_loop().call_soon(room.set_result, "early")
        results = await asyncio.wait_for(stepping, 1)
        assert results.results == ["early"]

    asyncio.run(scenario())


def test_a_waiting_delivery_of_a_consumer_that_stops_ends_as_stopped() -> None:
    async def scenario() -> None:
        loop = FetchLoop()

        async def deliver() -> None:
            await asyncio.Event().wait()

        handing = asyncio.ensure_future(hand_over(loop, deliver()))
        await asyncio.sleep(0.01)
        loop._stopped.set()
        results = await asyncio.wait_for(handing, 1)
        assert results.stopped and results.done == []

    asyncio.run(scenario())
