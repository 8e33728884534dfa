"""Whether the broker is there: one TCP connection attempt per check, every CHECK_INTERVAL_S.

Kafka clients retry a broker that is gone for as long as they live, so their own state does not
say "gone". Readiness (`/api/health` answers 503 with the reason) and ingest (503 at once
instead of after the acknowledgement timeout) ask this watch instead. A connection attempt
to a closed port is refused at once; one to a host that does not answer times out after
CONNECT_TIMEOUT_S. The broker sees a connection that closes without a request.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

from mode import Service

from tally.telemetry import BROKER_UP

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 1.0
#: Kafka's port, for a broker address that names none.
DEFAULT_PORT = 9092


def host_port(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdecimal() or host.endswith(":"):  # no port, or bare IPv6
        return address.strip("[]"), DEFAULT_PORT
    return host.strip("[]"), int(port)


async def accepts(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when `address` (host:port) takes a TCP connection, else why not."""
    host, port = host_port(address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"{address} did not answer within {timeout:g} s"
    except OSError as exc:
        return f"{address} refused the connection ({exc.strerror or exc})"
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return None


class BrokerWatch(Service):
    """`reachable` while some bootstrap broker takes connections; `gone` is set while none
    does (requests waiting on the broker race it)."""

    def __init__(self, bootstrap_servers: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bootstrap_servers = bootstrap_servers
        self.reachable = True  # until a check says otherwise: no false alarm at start
        self.reason = ""
        self.gone = asyncio.Event()

    async def check(self) -> None:
        reasons = []
        for address in self.bootstrap_servers:
            reason = await accepts(address)
            if reason is None:
                if not self.reachable:
                    logger.warning("the broker is reachable again (%s)", address)
                self.reachable, self.reason = True, ""
                self.gone.clear()
                BROKER_UP.set(1)
                return
            reasons.append(reason)
        if self.reachable:
            logger.error("the broker is unreachable: %s", "; ".join(reasons))
        self.reachable = False
        self.reason = "the broker is unreachable: " + "; ".join(reasons)
        self.gone.set()
        BROKER_UP.set(0)

    @Service.task
    async def _checking(self) -> None:
        while not self.should_stop:
            await self.check()
            await self.sleep(CHECK_INTERVAL_S)
