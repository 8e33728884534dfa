from __future__ import annotations

from pathlib import Path

import pytest

from tally.core.errors import ConfigurationError
from tally.settings import Settings, documented_settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.broker == "tansu://127.0.0.1:9092"
    assert settings.uses_local_broker
    assert settings.web_port == 6066
    assert settings.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.registry_url.startswith("file://")


def test_environment_overrides() -> None:
    settings = Settings.from_env(
        {
            "TALLY_BROKER": "kafka://k1:9092;kafka://k2:9093",
            "TALLY_DATA_DIR": "/var/tally",
            "TALLY_PARTITIONS": "12",
            "TALLY_GRACE_SECONDS": "2.5",
            "TALLY_PROCESSING_GUARANTEE": "exactly_once",
        }
    )
    assert not settings.uses_local_broker
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.data_dir == Path("/var/tally")
    assert settings.partitions == 12
    assert settings.grace_seconds == 2.5
    assert settings.processing_guarantee == "exactly_once"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TALLY_BROKER", "localhost:9092", "needs a scheme"),
        ("TALLY_BROKER", "redis://x:1", "not a broker URL"),
        ("TALLY_WEB_PORT", "70000", "TCP port"),
        ("TALLY_PARTITIONS", "0", "at least 1"),
        ("TALLY_PARTITIONS", "four", "whole number"),
        ("TALLY_GRACE_SECONDS", "-1", "0 or more"),
        ("TALLY_GRACE_SECONDS", "nan", "finite"),
        ("TALLY_GRACE_SECONDS", "inf", "finite"),
        ("TALLY_PROCESSING_GUARANTEE", "maybe", "at_least_once"),
        ("TALLY_PIPELINES", "sales,billing", "billing is not a pipeline"),
        ("TALLY_PIPELINES", " , ", "nothing is not a pipeline"),
        ("TALLY_GENERATION", "0", "at least 1"),
        ("TALLY_ROLE", "write", "one of process, read"),
        ("TALLY_PROCESSING_URLS", "w1:6066", "not an http"),
    ],
)
def test_bad_values_name_the_variable_and_the_rule(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)
    assert message in str(caught.value)


def test_a_generation_has_its_own_group_and_internal_topics() -> None:
    first = Settings.from_env({"TALLY_APP_ID": "shop"})
    assert first.faust_app_id == "shop"
    assert first.generation_topic("metric-ticks") == "metric-ticks"
    assert first.pipelines == {"sales", "metrics", "archive"}
    third = Settings.from_env(
        {"TALLY_APP_ID": "shop", "TALLY_GENERATION": "3", "TALLY_PIPELINES": "sales"}
    )
    assert third.faust_app_id == "shop-g3"
    assert third.generation_topic("metric-ticks") == "metric-ticks.g3"
    assert third.serving_topic == first.serving_topic == "shop-serving"
    assert third.pipelines == {"sales"}


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for variable, _default, doc in documented_settings():
        assert doc
        assert variable in readme, f"{variable} is missing from docs/configuration.md"


def test_broker_lists_and_advertised_host() -> None:
    settings = Settings.from_env(
        {"TALLY_BROKER": "kafka://a:9092,b:9093", "TALLY_WEB_HOST": "0.0.0.0"}
    )
    assert settings.broker_urls == ["kafka://a:9092", "kafka://b:9093"]
    assert settings.bootstrap_servers == ["a:9092", "b:9093"]
    assert settings.advertised_host not in ("0.0.0.0", "")
    pinned = Settings.from_env({"TALLY_WEB_HOST": "0.0.0.0", "TALLY_WEB_ADVERTISED_HOST": "w1"})
    assert pinned.web_url == "http://w1:6066"
    with pytest.raises(ConfigurationError, match="same scheme"):
        Settings.from_env({"TALLY_BROKER": "kafka://a:1;tansu://b:2"})


def test_exactly_once_on_the_local_broker_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError, match="no InitProducerId"):
        Settings.from_env({"TALLY_PROCESSING_GUARANTEE": "exactly_once"})


def test_a_reader_serves_the_merchants_queries_only() -> None:
    with pytest.raises(ConfigurationError, match="TALLY_PIPELINES=merchants"):
        Settings.from_env({"TALLY_ROLE": "read"})
    reader = Settings.from_env(
        {
            "TALLY_ROLE": "read",
            "TALLY_PIPELINES": "merchants",
            "TALLY_PROCESSING_URLS": "http://w1:6066/, http://w2:6066",
        }
    )
    assert reader.reads_only
    assert reader.processing_urls == ("http://w1:6066", "http://w2:6066")
    assert not Settings.from_env({}).reads_only
