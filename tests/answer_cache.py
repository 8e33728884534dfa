"""The shipped answer cache (docker/nginx.conf) run by Debian's nginx in front of one worker,
for tests/integration/test_answer_cache_e2e.py and `bench.cached_reads`: the file as shipped,
with the run's worker, port and paths in place of the deployment's."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tally.broker.local import die_with_parent, free_port
from tests.harness import Worker, wait_until

NGINX_CONF = Path(__file__).resolve().parents[1] / "docker" / "nginx.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )
    if found is None:
        raise SystemExit(
            "nginx is not installed: `make test` and `make bench` install it (Debian nginx-light)"
        )
    return found


def cache_config(workdir: Path, upstream_port: int, listen_port: int) -> str:
    """docker/nginx.conf with this run's worker, port and paths."""
    conf = NGINX_CONF.read_text()
    conf = re.sub(
        r"(upstream tally_workers \{\n)(?:\s*server [^\n]*\n)+",
        rf"\g<1>        server 127.0.0.1:{upstream_port};\n",
        conf,
    )
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    conf = conf.replace("/var/cache/tally-answers", str(workdir / "nginx-cache"))
    conf = conf.replace("/tmp/tally-answers-nginx.pid", str(workdir / "nginx.pid"))
    if os.geteuid() == 0:  # nginx's workers would run as nobody, outside the run's directory
        conf = f"user {pwd.getpwuid(0).pw_name};\n" + conf
    return conf


@dataclass
class AnswerCache:
    process: subprocess.Popen[bytes]
    #: The cache as a client of the worker sees it: the same requests, another port.
    client: Worker

    @property
    def url(self) -> str:
        return self.client.url

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_cache(workdir: Path, worker: Worker, ready_path: str) -> AnswerCache:
    """nginx with the shipped configuration in front of `worker`, once `ready_path` answers
    200 through it."""
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(cache_config(workdir, worker.port, port))
    with (workdir / "nginx.log").open("wb") as log:
        process = subprocess.Popen(
            [nginx_binary(), "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    client = Worker(env={}, log_path=workdir / "nginx.log", port=port, token=worker.token)
    cache = AnswerCache(process, client)

    def answering() -> bool:
        try:
            return client.fetch(ready_path)[0] == 200
        except OSError:
            return False

    try:
        wait_until(answering, 20, what="nginx to answer")
    except BaseException:
        cache.stop()
        raise
    return cache
