"""Client configs: Kafka names, defaults, and typed errors that name the bad setting."""

from __future__ import annotations

import pytest

from client import Admin, Consumer, Producer, ShareConsumer
from client.config import consumer_config, producer_config, share_consumer_config
from client.errors import (
    ConfigError,
    IllegalStateError,
    InvalidConfigError,
    NotLeaderOrFollowerError,
    ShoalError,
    TopicAlreadyExistsError,
    error_for_code,
)

BOOT = {"bootstrap.servers": "127.0.0.1:1"}


def test_producer_defaults_follow_kafka() -> None:
    cfg = producer_config(BOOT)
    assert cfg["acks"] == "all"
    assert cfg["linger.ms"] == 5
    assert cfg["delivery.timeout.ms"] == 120000
    assert cfg["enable.idempotence"] is True
    assert cfg["max.in.flight.requests.per.connection"] == 5
    assert cfg["compression.type"] == "none"


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"bootstrap.server": "x:1"}, "bootstrap.server"),  # a typo is not ignored
        ({**BOOT, "acks": "2"}, "acks"),
        ({**BOOT, "linger.ms": -1}, "linger.ms"),
        ({**BOOT, "linger.ms": "soon"}, "linger.ms"),
        ({**BOOT, "compression.type": "gzip"}, "compression.type"),
        ({**BOOT, "enable.idempotence": "yes"}, "enable.idempotence"),
        ({**BOOT, "enable.idempotence": True, "acks": "1"}, "acks=all"),
        ({**BOOT, "enable.idempotence": True, "max.in.flight.requests.per.connection": 6}, "max.in.flight"),
        ({**BOOT, "share.acknowledgement.mode": "explicit"}, "share.acknowledgement.mode"),
        ({**BOOT, "delivery.timeout.ms": 1000}, "delivery.timeout.ms"),
        ({"bootstrap.servers": "no-port"}, "bootstrap.servers"),
        ({}, "bootstrap.servers"),
        ({**BOOT, "key.serializer": "utf-8"}, "key.serializer"),
    ],
)
def test_producer_config_errors_name_the_setting(config: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        producer_config(config)
    assert named in info.value.message
    assert info.value.code == 40 and info.value.name == "INVALID_CONFIG" and not info.value.retriable


def test_default_idempotence_yields_to_explicit_acks() -> None:
    # As in Kafka: idempotence on by default is switched off by acks=1, but
    # asking for both explicitly is an error (tested above).
    assert producer_config({**BOOT, "acks": "1"})["enable.idempotence"] is False


@pytest.mark.parametrize(
    "name",
    ["auto.offset.reset", "enable.auto.commit", "isolation.level", "group.instance.id",
     "partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms", "group.protocol"],
)
def test_share_consumer_refuses_consumer_only_configs(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        share_consumer_config({**BOOT, "group.id": "g", name: "x"})
    assert name in info.value.message and "not supported by a share consumer" in info.value.message


def test_share_consumer_needs_a_group_and_valid_modes() -> None:
    with pytest.raises(ConfigError, match="group.id"):
        share_consumer_config(BOOT)
    with pytest.raises(ConfigError, match="share.acknowledgement.mode"):
        share_consumer_config({**BOOT, "group.id": "g", "share.acknowledgement.mode": "auto"})
    with pytest.raises(ConfigError, match="share.acquire.mode"):
        share_consumer_config({**BOOT, "group.id": "g", "share.acquire.mode": "greedy"})
    cfg = share_consumer_config({**BOOT, "group.id": "g"})
    assert cfg["share.acknowledgement.mode"] == "implicit"
    assert cfg["share.acquire.mode"] == "batch_optimized"
    assert cfg["max.poll.records"] == 500


def test_consumer_refuses_share_configs_and_bad_reset() -> None:
    with pytest.raises(ConfigError, match="share.acquire.mode"):
        consumer_config({**BOOT, "share.acquire.mode": "record_limit"})
    with pytest.raises(ConfigError, match="auto.offset.reset"):
        consumer_config({**BOOT, "auto.offset.reset": "smallest"})


def test_clients_validate_in_their_constructors() -> None:
    for cls in (Producer, Consumer, Admin):
        with pytest.raises(ConfigError):
            cls({**BOOT, "no.such.config": 1})
    with pytest.raises(ConfigError):
        ShareConsumer({**BOOT, "group.id": "g", "auto.offset.reset": "earliest"})


def test_share_consumer_rules_without_a_cluster() -> None:
    consumer = ShareConsumer({**BOOT, "group.id": "g"})
    try:
        with pytest.raises(IllegalStateError, match="subscribe"):
            consumer.poll(0)
        with pytest.raises(ValueError):
            consumer.subscribe([""])
    finally:
        consumer.close()
    with pytest.raises(IllegalStateError, match="closed"):
        consumer.poll(0)


def test_errors_carry_kafka_codes() -> None:
    error = error_for_code(6, "moved")
    assert isinstance(error, NotLeaderOrFollowerError)
    assert (error.code, error.name, error.retriable) == (6, "NOT_LEADER_OR_FOLLOWER", True)
    assert isinstance(error_for_code(36), TopicAlreadyExistsError)
    assert not error_for_code(36).retriable
    assert isinstance(error_for_code(40), InvalidConfigError)
    unknown = error_for_code(9999, "strange")
    assert isinstance(unknown, ShoalError) and unknown.code == 9999
    assert error.to_dict() == {"error": "NOT_LEADER_OR_FOLLOWER", "code": 6, "message": "moved", "retriable": True}
