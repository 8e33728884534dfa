"""`tally` / `python -m tally`: the Faust app's CLI with Tally's commands added."""

from __future__ import annotations

import importlib.util
import os
import sys
import time

from tally.core.errors import BrokerError, ConfigurationError

#: Commands that serve HTTP: they load the keys tokens are verified with before starting.
SERVING = ("worker", "ingest")
#: Commands that need the broker, and how long each waits for it to come up.
BROKER_WAIT_S = {"worker": 30.0, "feed": 0.0, "send": 0.0, "dlq": 0.0}


def wait_for_broker(bootstrap_servers: list[str], timeout: float) -> None:
    """Wait for a broker to accept connections, or say what to do (instead of a traceback)."""
    from tally.broker.local import port_accepts

    deadline = time.monotonic() + timeout
    announced = False
    while True:
        for server in bootstrap_servers:
            host, _, port = server.rpartition(":")
            if port_accepts(host or "127.0.0.1", int(port)):
                return
        if time.monotonic() >= deadline:
            break
        if not announced:
            print(
                f"tally: waiting up to {timeout:.0f} s for the broker at "
                f"{', '.join(bootstrap_servers)} ...",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        time.sleep(0.5)
    raise BrokerError(
        f"no broker answers at {', '.join(bootstrap_servers)}: start one with `tally broker` "
        "(or `make run`), or point TALLY_BROKER at a running broker"
    )


def choose_event_loop() -> None:
    """Faust sets its event loop up when it is first imported, from FAUST_LOOP (or F_LOOP,
    which FAUST_LOOP outranks): TALLY_EVENT_LOOP decides unless FAUST_LOOP is set. Child
    processes inherit the choice through FAUST_LOOP."""
    from tally.settings import current_settings

    settings = current_settings()
    if settings.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigurationError(
            "TALLY_EVENT_LOOP=uvloop, but uvloop is not installed (`pip install -e .` installs "
            "it); install it or set TALLY_EVENT_LOOP=asyncio"
        )
    os.environ.setdefault("FAUST_LOOP", settings.faust_loop)


def main() -> None:
    try:
        choose_event_loop()
        import tally.cli  # noqa: F401  (registers broker, dev, feed)
        from tally.app import app, gate, settings
        from tally.http.access import load_keys

        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if command in BROKER_WAIT_S and not {"--help", "-h"} & set(sys.argv):
            wait_for_broker(settings.bootstrap_servers, BROKER_WAIT_S[command])
        if command == "worker" and not {"-l", "--loglevel"} & set(sys.argv):
            sys.argv += ["--loglevel", settings.log_level]  # TALLY_LOG_LEVEL, unless given
        if command in SERVING and not {"--help", "-h"} & set(sys.argv):
            load_keys(gate, settings)
    except (ConfigurationError, BrokerError) as exc:
        print(f"tally: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app.main()


if __name__ == "__main__":
    main()
