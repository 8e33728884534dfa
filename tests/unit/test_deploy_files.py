"""The production deploy files (docker/), checked without Docker: what they must carry.

docker/docker-compose.yml is parsed with PyYAML, docker/Dockerfile with a small reader of its
instructions. Tally settings are checked against `tally.settings` itself, so a renamed or
mistyped TALLY_* variable, or a broker URL Tally would reject, fails here rather than at
`docker compose up`.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tally import topics
from tally.core.errors import ConfigurationError
from tally.settings import Settings, documented_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
KAFKA_IMAGE = "apache/kafka:"
WORKER_DOCKERFILE = "docker/Dockerfile"


# ---------------------------------------------------------------------------------------------
# Reading the files


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), f"{COMPOSE_FILE} is not a YAML mapping"
    assert isinstance(document.get("services"), dict), f"{COMPOSE_FILE} has no `services`"
    return document


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from either compose syntax (mapping or KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def kafka_brokers() -> dict[str, dict[str, str]]:
    """Kafka broker services (those with KRaft process roles): name -> environment."""
    return {
        name: environment(service)
        for name, service in services().items()
        if "KAFKA_PROCESS_ROLES" in environment(service)
    }


def tally_workers() -> dict[str, dict[str, Any]]:
    """Services built from the worker Dockerfile: name -> service."""
    return {
        name: service
        for name, service in services().items()
        if isinstance(service.get("build"), dict)
        and service["build"].get("dockerfile") == WORKER_DOCKERFILE
    }


def command_text(service: dict[str, Any]) -> str:
    """entrypoint + command of a service, as one string (either may be a list or a string)."""
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, list):
            parts.extend(str(v) for v in value)
        elif value is not None:
            parts.append(str(value))
    return " ".join(parts)


def worker_settings(name: str) -> Settings:
    """The settings a worker would run with: the image's ENV, overridden by compose's."""
    env = {**dockerfile_env(), **environment(tally_workers()[name])}
    try:
        return Settings.from_env(env)
    except ConfigurationError as exc:
        raise AssertionError(f"{name}: Tally rejects its environment: {exc}") from exc


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, from short ("src:/dst[:ro]") or long syntax."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[str(volume["target"])] = str(volume.get("source", ""))
        else:
            source, _, rest = str(volume).partition(":")
            mounts[rest.split(":")[0] if rest else source] = source if rest else ""
    return mounts


def published_ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) of each published port."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append((int(port["published"]), int(port["target"])))
        else:
            *_, host, container = str(port).split("/")[0].split(":")
            ports.append((int(host), int(container)))
    return ports


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [arguments for kw, arguments in dockerfile_instructions() if kw == keyword]


def exec_form(arguments: str) -> list[str]:
    """ENTRYPOINT/CMD/VOLUME arguments as a list (JSON exec form or shell words)."""
    if arguments.startswith("["):
        return [str(item) for item in json.loads(arguments)]
    return shlex.split(arguments)


@cache
def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in dockerfile_args("ENV"):
        words = shlex.split(arguments)
        if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
            env[words[0]] = " ".join(words[1:])
            continue
        env.update(word.split("=", 1) for word in words)
    return env


def documented_variables() -> set[str]:
    return {variable for variable, _default, _meaning in documented_settings()}


def tally_topics() -> set[str]:
    """The topics every pipeline shares (tally.topics; workers create their internal ones)."""
    return {topics.PURCHASES, topics.METRIC_SAMPLES, topics.DEAD_LETTERS, topics.LATE_EVENTS}


# ---------------------------------------------------------------------------------------------
# Kafka


def test_compose_has_exactly_three_kafka_brokers_on_the_apache_image():
    brokers = kafka_brokers()
    assert len(brokers) == 3, (
        f"expected exactly 3 Kafka broker services (with KAFKA_PROCESS_ROLES), found "
        f"{len(brokers)}: {sorted(brokers)}"
    )
    for name in brokers:
        image = str(services()[name].get("image", ""))
        assert image.startswith(KAFKA_IMAGE), (
            f"{name} runs image {image!r}, not Apache Kafka ({KAFKA_IMAGE}...)"
        )


def test_kafka_brokers_run_in_kraft_mode_as_one_cluster():
    brokers = kafka_brokers()
    cluster_ids = {env.get("CLUSTER_ID", "") for env in brokers.values()}
    assert len(cluster_ids) == 1 and "" not in cluster_ids, (
        f"the brokers must share one non-empty CLUSTER_ID, found {sorted(cluster_ids)}"
    )
    node_ids = {}
    for name, env in brokers.items():
        roles = set(env["KAFKA_PROCESS_ROLES"].replace(" ", "").split(","))
        assert roles == {"broker", "controller"}, (
            f"{name}: KAFKA_PROCESS_ROLES is {env['KAFKA_PROCESS_ROLES']!r}; each node must be "
            "both broker and controller (combined KRaft mode)"
        )
        assert not any(key.startswith("KAFKA_ZOOKEEPER") for key in env), (
            f"{name} configures ZooKeeper; the cluster runs in KRaft mode without it"
        )
        assert "KAFKA_NODE_ID" in env, f"{name} has no KAFKA_NODE_ID"
        node_ids[name] = env["KAFKA_NODE_ID"]
    assert len(set(node_ids.values())) == len(node_ids), (
        f"broker node ids must be distinct, found {node_ids}"
    )
    expected_voters = {(node_ids[name], name, "9093") for name in brokers}
    for name, env in brokers.items():
        voters_text = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
        voters = {
            tuple(re.split("[@:]", voter.strip())) for voter in voters_text.split(",") if voter
        }
        assert voters == expected_voters, (
            f"{name}: KAFKA_CONTROLLER_QUORUM_VOTERS is {voters_text!r}; it must list every "
            f"broker as id@service:9093, i.e. "
            f"{','.join(f'{i}@{h}:{p}' for i, h, p in sorted(expected_voters))}"
        )


def test_kafka_listeners_are_plaintext_9092_and_controller_9093():
    for name, env in kafka_brokers().items():
        listeners = env.get("KAFKA_LISTENERS", "")
        assert re.search(r"(^|,)PLAINTEXT://[^,]*:9092(,|$)", listeners), (
            f"{name}: KAFKA_LISTENERS {listeners!r} has no PLAINTEXT listener on port 9092"
        )
        assert re.search(r"(^|,)CONTROLLER://[^,]*:9093(,|$)", listeners), (
            f"{name}: KAFKA_LISTENERS {listeners!r} has no CONTROLLER listener on port 9093"
        )
        assert env.get("KAFKA_CONTROLLER_LISTENER_NAMES") == "CONTROLLER", (
            f"{name}: KAFKA_CONTROLLER_LISTENER_NAMES must be CONTROLLER"
        )
        advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")
        assert f"PLAINTEXT://{name}:9092" in advertised.split(","), (
            f"{name}: KAFKA_ADVERTISED_LISTENERS {advertised!r} must advertise "
            f"PLAINTEXT://{name}:9092, the address workers reach it at"
        )


def test_kafka_replicates_everything_three_times_with_two_in_sync():
    required = {
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }
    for name, env in kafka_brokers().items():
        for key, value in required.items():
            assert env.get(key, "").lower() == value, (
                f"{name}: {key} is {env.get(key)!r}, must be {value}"
            )


def test_each_kafka_broker_keeps_its_log_in_its_own_named_volume():
    declared = set(compose().get("volumes") or {})
    sources = []
    for name, env in kafka_brokers().items():
        log_dir = env.get("KAFKA_LOG_DIRS", "")
        assert log_dir, f"{name} sets no KAFKA_LOG_DIRS, so its log is not in a known place"
        source = volume_mounts(services()[name]).get(log_dir)
        assert source, f"{name}: nothing is mounted at its log dir {log_dir}; data would be lost"
        assert source in declared, (
            f"{name}: {source!r} mounted at {log_dir} is not a named volume declared under the "
            "top-level `volumes`"
        )
        sources.append(source)
    assert len(set(sources)) == len(sources), f"brokers share log volumes: {sources}"


def test_each_kafka_broker_has_a_healthcheck():
    for name in kafka_brokers():
        check = services()[name].get("healthcheck") or {}
        test = check.get("test")
        assert test and not check.get("disable"), f"{name} has no healthcheck"
        text = " ".join(test) if isinstance(test, list) else str(test)
        assert "9092" in text, f"{name}: its healthcheck {text!r} does not probe port 9092"


def test_the_topics_tally_uses_are_created_since_auto_creation_is_off():
    topics = tally_topics()
    creators = {
        name: command_text(service)
        for name, service in services().items()
        if "kafka-topics" in command_text(service) and "--create" in command_text(service)
    }
    assert creators, (
        "no service creates topics (kafka-topics.sh --create); with "
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE=false Tally's source topics would never exist"
    )
    text = " ".join(creators.values())
    words = set(re.findall(r"[\w.-]+", text))
    missing = sorted(topics - words)
    assert not missing, f"topics Tally uses but no service creates: {missing}"
    partitions = set(re.findall(r"--partitions[ =](\d+)", text))
    replication = set(re.findall(r"--replication-factor[ =](\d+)", text))
    assert replication == {"3"}, f"topics must be created with 3 replicas, found {replication}"
    for worker in tally_workers():
        expected = str(worker_settings(worker).partitions)
        assert partitions == {expected}, (
            f"topics are created with {sorted(partitions)} partitions but {worker} uses "
            f"TALLY_PARTITIONS={expected}; Faust needs source topics and table changelogs "
            "co-partitioned"
        )
        depends = services()[worker].get("depends_on")
        for creator in creators:
            condition = (
                (depends.get(creator) or {}).get("condition") if isinstance(depends, dict) else None
            )
            assert condition == "service_completed_successfully", (
                f"{worker} must wait for {creator} (condition: service_completed_successfully)"
            )


# ---------------------------------------------------------------------------------------------
# Tally workers


def test_there_are_at_least_two_tally_workers():
    workers = tally_workers()
    assert len(workers) >= 2, (
        f"expected at least 2 services built from {WORKER_DOCKERFILE}, found {sorted(workers)}"
    )
    for name, service in workers.items():
        assert service["build"].get("context") == "..", (
            f"{name}: the build context must be the repository root (`context: ..`), "
            f"found {service['build'].get('context')!r}"
        )


def test_every_tally_variable_in_the_deploy_files_is_a_real_setting():
    known = documented_variables()
    used = set(re.findall(r"\bTALLY_[A-Z0-9_]+", COMPOSE_FILE.read_text()))
    used |= {key for service in services().values() for key in environment(service)}
    used = {key for key in used if key.startswith("TALLY_")}
    unknown = sorted(used - known)
    assert not unknown, (
        f"docker-compose.yml uses TALLY_* variables Tally does not read: {unknown} "
        f"(known: {sorted(known)})"
    )
    unknown = sorted(
        key for key in dockerfile_env() if key.startswith("TALLY_") and key not in known
    )
    assert not unknown, f"the Dockerfile sets TALLY_* variables Tally does not read: {unknown}"


def test_workers_use_plain_kafka_urls_naming_the_kafka_brokers():
    assert "tansu://" not in COMPOSE_FILE.read_text(), (
        "docker-compose.yml mentions tansu:// (the local development broker); production "
        "workers must use kafka:// URLs"
    )
    brokers = {f"{name}:9092" for name in kafka_brokers()}
    for name in tally_workers():
        settings = worker_settings(name)
        urls = settings.broker.split(";")
        assert all(url.startswith("kafka://") for url in urls), (
            f"{name}: TALLY_BROKER {settings.broker!r} must be kafka:// URLs only"
        )
        assert not settings.uses_local_broker, f"{name} would use the local broker shim"
        assert set(settings.bootstrap_servers) == brokers, (
            f"{name}: TALLY_BROKER names {sorted(settings.bootstrap_servers)}, "
            f"must name every Kafka broker: {sorted(brokers)}"
        )


def test_workers_replicate_topics_and_keep_standby_tables():
    workers = tally_workers()
    for name in workers:
        settings = worker_settings(name)
        assert settings.replication == 3, (
            f"{name}: TALLY_REPLICATION is {settings.replication}, must be 3 (one per broker)"
        )
        assert settings.replication <= len(kafka_brokers()), (
            f"{name}: TALLY_REPLICATION={settings.replication} exceeds the number of brokers"
        )
        assert settings.standby_replicas >= 1, (
            f"{name}: TALLY_STANDBY_REPLICAS is {settings.standby_replicas}; at least 1 standby "
            "is needed for a fast failover"
        )
        assert settings.standby_replicas < len(workers), (
            f"{name}: TALLY_STANDBY_REPLICAS={settings.standby_replicas} needs more than "
            f"{len(workers)} workers"
        )


def test_all_workers_share_one_configuration():
    # One consumer group: the same app id, topics, partitions and guarantee everywhere.
    keys = (
        "broker",
        "app_id",
        "partitions",
        "replication",
        "standby_replicas",
        "processing_guarantee",
    )
    configs = {
        name: tuple(getattr(worker_settings(name), key) for key in keys) for name in tally_workers()
    }
    assert len(set(configs.values())) == 1, f"workers are configured differently: {configs}"


def test_each_worker_keeps_its_tables_in_its_own_persistent_volume():
    declared = set(compose().get("volumes") or {})
    sources = {}
    for name, service in tally_workers().items():
        data_dir = str(worker_settings(name).data_dir)
        assert data_dir == "/data", f"{name}: TALLY_DATA_DIR is {data_dir!r}, must be /data"
        source = volume_mounts(service).get("/data")
        assert source, f"{name}: nothing is mounted at /data; its tables would not survive"
        assert not source.startswith((".", "/", "~")), (
            f"{name}: /data is a bind mount of {source!r}; use a named volume"
        )
        assert source in declared, (
            f"{name}: volume {source!r} is not declared under the top-level `volumes`"
        )
        sources[name] = source
    assert len(set(sources.values())) == len(sources), (
        f"workers must not share a data volume (RocksDB takes a lock): {sources}"
    )


def test_each_worker_publishes_its_web_port_on_a_distinct_host_port():
    host_ports = {}
    for name, service in tally_workers().items():
        web_port = worker_settings(name).web_port
        assert worker_settings(name).web_host == "0.0.0.0", (
            f"{name}: TALLY_WEB_HOST must be 0.0.0.0, or the published port reaches nothing"
        )
        ports = published_ports(service)
        assert [container for _host, container in ports] == [web_port], (
            f"{name}: must publish exactly its web port {web_port}, publishes {ports}"
        )
        host_ports[name] = ports[0][0]
    assert len(set(host_ports.values())) == len(host_ports), (
        f"workers publish the same host port: {host_ports}"
    )


def test_each_worker_advertises_its_own_host_name():
    # Table routing (/api/sales/items/{id}) forwards to the owner's advertised address: each
    # worker must advertise a distinct name the others can reach, not the 0.0.0.0 it binds.
    advertised = {}
    for name, service in tally_workers().items():
        host = worker_settings(name).advertised_host
        assert host in (name, service.get("hostname")), (
            f"{name}: advertises {host!r}, not this service's own name "
            "(set TALLY_WEB_ADVERTISED_HOST)"
        )
        advertised[name] = host
    assert len(set(advertised.values())) == len(advertised), (
        f"workers advertise the same host: {advertised}"
    )


def test_workers_wait_for_healthy_brokers_and_restart():
    for name, service in tally_workers().items():
        depends = service.get("depends_on")
        assert isinstance(depends, dict), (
            f"{name}: depends_on must be the long form, with condition: service_healthy"
        )
        for broker in kafka_brokers():
            condition = (depends.get(broker) or {}).get("condition")
            assert condition == "service_healthy", (
                f"{name} must wait for {broker} with condition: service_healthy, "
                f"found {condition!r}"
            )
        assert service.get("restart") == "unless-stopped", (
            f"{name}: restart is {service.get('restart')!r}, must be unless-stopped"
        )


def test_compose_names_only_services_and_volumes_that_exist():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        depends = service.get("depends_on") or []
        for other in depends:
            assert other in services(), f"{name} depends on {other!r}, which is not a service"
        for source in volume_mounts(service).values():
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_starts_from_python_3_11_slim():
    images = dockerfile_args("FROM")
    assert images and images[-1].split()[0] == "python:3.11-slim", (
        f"the worker image must be built FROM python:3.11-slim, found {images}"
    )


def test_dockerfile_installs_the_package_without_dev_extras():
    copied = " ".join(dockerfile_args("COPY"))
    for needed in ("pyproject.toml", "tally"):
        assert needed in copied, f"the Dockerfile does not COPY {needed}"
    installs = [run for run in dockerfile_args("RUN") if "pip install" in run]
    assert installs, "the Dockerfile never runs pip install"
    assert any(re.search(r"pip install\b[^&;]*\s\.(\s|$)", run) for run in installs), (
        f"the Dockerfile does not `pip install .` the package: {installs}"
    )
    assert not any("[dev]" in run or "-e " in run for run in installs), (
        "the image must install the package itself, without dev extras or editable mode"
    )


def test_every_file_the_dockerfile_copies_exists_in_the_build_context():
    for arguments in dockerfile_args("COPY"):
        words = [w for w in exec_form(arguments) if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), (
                f"docker/Dockerfile copies {source}, which does not exist at the repository "
                "root (the build context): `docker build` would fail"
            )


def test_dockerfile_sets_the_data_dir_and_web_address():
    env = dockerfile_env()
    expected = {"TALLY_DATA_DIR": "/data", "TALLY_WEB_HOST": "0.0.0.0", "TALLY_WEB_PORT": "6066"}
    for key, value in expected.items():
        assert env.get(key) == value, (
            f"the Dockerfile must set ENV {key}={value}, found {env.get(key)!r}"
        )
    try:
        Settings.from_env(env)
    except ConfigurationError as exc:
        raise AssertionError(f"Tally rejects the Dockerfile's ENV: {exc}") from exc


def test_dockerfile_declares_the_data_volume_and_web_port():
    volumes = [v for arguments in dockerfile_args("VOLUME") for v in exec_form(arguments)]
    assert "/data" in volumes, f"the Dockerfile must declare VOLUME /data, declares {volumes}"
    exposed = [
        port.split("/")[0] for arguments in dockerfile_args("EXPOSE") for port in arguments.split()
    ]
    assert "6066" in exposed, f"the Dockerfile must EXPOSE 6066, exposes {exposed}"


def test_dockerfile_does_not_run_as_root():
    users = dockerfile_args("USER")
    assert users, "the Dockerfile has no USER line, so the worker would run as root"
    user = users[-1].split(":")[0].strip()
    assert user not in ("root", "0", ""), (
        f"the Dockerfile's last USER is {users[-1]!r}, so the worker would run as root"
    )


def test_dockerfile_entrypoint_is_the_tally_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert "tally" in scripts, "pyproject.toml [project.scripts] has no `tally` console script"
    entrypoints = dockerfile_args("ENTRYPOINT")
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == ["tally"], (
        f"the ENTRYPOINT must be the `tally` console script in exec form, found {entrypoints[-1]}"
    )
    commands = dockerfile_args("CMD")
    assert commands and exec_form(commands[-1]) == ["worker", "--loglevel", "info"], (
        f"the default command must be `worker --loglevel info`, found {commands}"
    )


# ---------------------------------------------------------------------------------------------
# The answer cache (docker/nginx.conf)

NGINX_CONF = ROOT / "docker" / "nginx.conf"


def test_the_answer_cache_fronts_every_worker_with_the_shipped_configuration():
    """Every worker is an upstream of the cache on its container port, never taken out for a
    503; the cache revalidates with the ETag in the background, serves an expired copy only as
    long as the answer's stale-while-revalidate says (proxy_cache_use_stale would serve one
    without end: a revoked token would keep getting it), and keys no token into its files
    (Vary keeps copies apart); the workers share one token signing key."""
    conf = NGINX_CONF.read_text()
    upstreams = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)\s+max_fails=0;", conf, re.M))
    port = Settings().web_port
    assert upstreams == {f"{name}:{port}" for name in tally_workers()}
    assert "proxy_cache_revalidate on;" in conf
    assert re.findall(r"^\s*proxy_cache_background_update on;", conf, re.M)
    assert re.findall(r"^\s*proxy_cache_use_stale", conf, re.M) == []
    assert "http_authorization" not in conf
    keys = {environment(services()[name]).get("TALLY_AUTH_KEY_FILE") for name in tally_workers()}
    assert keys == {"/auth/signing-key.jwk"}
    assert all("tally-auth:/auth" in services()[name]["volumes"] for name in tally_workers())
    answers = services()["answers"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in answers["volumes"]
    assert set(answers["depends_on"]) == set(tally_workers())
    # nginx's workers ahead of the others: a nice value it may set, a container weight above
    # the default 1024 (nice ranks processes within one container only)
    assert re.findall(r"^worker_priority -\d+;", conf, re.M)
    assert "SYS_NICE" in answers["cap_add"] and answers["cpu_shares"] > 1024
