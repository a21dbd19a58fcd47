"""Broker group settings and group-level overrides (coordinator/config.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.config import (
    BROKER_CONFIG_DEFS,
    GroupBrokerConfig,
    effective_consumer_settings,
    effective_share_settings,
    parse_auto_offset_reset,
    parse_iso8601_duration,
    validate_group_config,
)
from coordinator.errors import ErrorCode, OperatingError

KAFKA_DEFAULTS = {
    "group.share.record.lock.duration.ms": 30_000,
    "group.share.min.record.lock.duration.ms": 15_000,
    "group.share.max.record.lock.duration.ms": 60_000,
    "group.share.delivery.count.limit": 5,
    "group.share.min.delivery.count.limit": 2,
    "group.share.max.delivery.count.limit": 10,
    "group.share.partition.max.record.locks": 2000,
    "group.share.min.partition.max.record.locks": 100,
    "group.share.max.partition.max.record.locks": 4000,
    "group.share.session.timeout.ms": 45_000,
    "group.share.min.session.timeout.ms": 45_000,
    "group.share.max.session.timeout.ms": 60_000,
    "group.share.heartbeat.interval.ms": 5_000,
    "group.share.min.heartbeat.interval.ms": 5_000,
    "group.share.max.heartbeat.interval.ms": 15_000,
    "group.share.max.size": 200,
    "group.share.max.share.sessions": 2000,
    "group.consumer.session.timeout.ms": 45_000,
    "group.consumer.heartbeat.interval.ms": 5_000,
}


def refused(call, *args) -> OperatingError:
    with pytest.raises(OperatingError) as info:
        call(*args)
    assert info.value.code == ErrorCode.INVALID_CONFIG
    return info.value


def test_defaults_are_kafkas():
    mapping = GroupBrokerConfig().to_mapping()
    for name, value in KAFKA_DEFAULTS.items():
        assert mapping[name] == value, name
    # The table's documented defaults and the dataclass defaults agree.
    for _, definition in BROKER_CONFIG_DEFS:
        assert mapping[definition.name] == definition.default, definition.name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"group.share.delivery.count.limit": "11"}, "group.share.delivery.count.limit must be at most 10, got 11"),
        ({"group.share.delivery.count.limit": 1}, "group.share.delivery.count.limit must be at least 2, got 1"),
        (
            {"group.share.record.lock.duration.ms": 10_000},
            "group.share.record.lock.duration.ms must be at least 15000 "
            "(group.share.min.record.lock.duration.ms), got 10000",
        ),
        (
            {"group.share.record.lock.duration.ms": 70_000},
            "group.share.record.lock.duration.ms must be at most 60000 "
            "(group.share.max.record.lock.duration.ms), got 70000",
        ),
        (
            {"group.share.max.share.sessions": 100},
            "group.share.max.share.sessions must be at least group.share.max.size (200), got 100",
        ),
        (
            {"group.share.min.session.timeout.ms": 2000, "group.share.session.timeout.ms": 2000,
             "group.share.min.heartbeat.interval.ms": 2000, "group.share.heartbeat.interval.ms": 2000},
            "group.share.heartbeat.interval.ms (2000) must be less than group.share.session.timeout.ms (2000)",
        ),
        (
            {"group.share.min.record.lock.duration.ms": 400},
            "group.share.min.record.lock.duration.ms must be at least 500, got 400",
        ),
        ({"group.share.max.size": "many"}, "group.share.max.size must be an integer, got 'many'"),
        ({"group.share.max.size": True}, "group.share.max.size must be an integer, got True"),
        ({"group.share.delivery.limit": 3}, "Unknown broker config name 'group.share.delivery.limit'"),
    ],
)
def test_broker_config_refusals_name_the_config_and_bound(settings, message):
    error = refused(GroupBrokerConfig.from_mapping, settings)
    assert error.message == message


def test_short_timers_for_local_clusters_are_allowed_when_min_configs_are_lowered():
    broker = GroupBrokerConfig.from_mapping(
        {
            "group.share.min.record.lock.duration.ms": "1000",
            "group.share.record.lock.duration.ms": "1000",
            "group.share.min.session.timeout.ms": 2000,
            "group.share.session.timeout.ms": 2000,
            "group.share.min.heartbeat.interval.ms": 500,
            "group.share.heartbeat.interval.ms": 500,
            "group.consumer.min.session.timeout.ms": 500,
            "group.consumer.session.timeout.ms": 500,
            "group.consumer.min.heartbeat.interval.ms": 100,
            "group.consumer.heartbeat.interval.ms": 100,
            "log.dirs": "/somewhere",  # another component's setting: ignored
        }
    )
    assert broker.share_record_lock_duration_ms == 1000
    assert broker.share_session_timeout_ms == 2000
    assert broker.consumer_session_timeout_ms == 500


def test_a_mapping_round_trips():
    broker = GroupBrokerConfig.from_mapping({"group.share.max.size": 10, "group.share.delivery.count.limit": 3})
    assert GroupBrokerConfig.from_mapping(broker.to_mapping()) == broker


# --- group level ---------------------------------------------------------------

BROKER = GroupBrokerConfig()


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"share.no.such.thing": "1"}, "Unknown group config name 'share.no.such.thing'"),
        ({"share.isolation.level": "read_committed"}, "share.isolation.level=read_committed is not supported"),
        ({"share.isolation.level": "sometimes"}, "share.isolation.level must be read_uncommitted"),
        ({"share.delivery.count.limit": "11"},
         "share.delivery.count.limit must be at most 10 (group.share.max.delivery.count.limit), got 11"),
        ({"share.record.lock.duration.ms": "1000"},
         "share.record.lock.duration.ms must be at least 15000 (group.share.min.record.lock.duration.ms), got 1000"),
        ({"share.partition.max.record.locks": "5000"},
         "share.partition.max.record.locks must be at most 4000"),
        ({"share.session.timeout.ms": "50000", "share.heartbeat.interval.ms": "15000"}, None),
        ({"consumer.heartbeat.interval.ms": "15000", "consumer.session.timeout.ms": "45000"}, None),
        ({"share.auto.offset.reset": "yesterday"}, "share.auto.offset.reset must be latest, earliest or by_duration"),
        ({"share.auto.offset.reset": "by_duration:-PT1H"}, "is not an ISO-8601 duration"),
        ({"share.renew.acknowledge.enable": "maybe"}, "share.renew.acknowledge.enable must be true or false"),
    ],
)
def test_group_config_validation(updates, message):
    if message is None:
        assert validate_group_config(updates, BROKER) == updates
        return
    error = refused(validate_group_config, updates, BROKER)
    assert message in error.message


def test_session_timeout_must_exceed_heartbeat_interval_with_broker_defaults_filling_gaps():
    broker = GroupBrokerConfig.from_mapping(
        {"group.share.min.session.timeout.ms": 5000, "group.share.min.heartbeat.interval.ms": 1000}
    )
    error = refused(validate_group_config, {"share.session.timeout.ms": "5000"}, broker)
    assert error.message == "share.session.timeout.ms (5000) must be greater than share.heartbeat.interval.ms (5000)"
    assert validate_group_config({"share.session.timeout.ms": "5000", "share.heartbeat.interval.ms": "1000"}, broker)


def test_group_config_values_are_normalised():
    result = validate_group_config(
        {
            "share.auto.offset.reset": "BY_DURATION:PT1H",
            "share.renew.acknowledge.enable": "FALSE",
            "share.isolation.level": "READ_UNCOMMITTED",
            "share.delivery.count.limit": " 3",
        },
        BROKER,
    )
    assert result == {
        "share.auto.offset.reset": "by_duration:PT1H",
        "share.renew.acknowledge.enable": "false",
        "share.isolation.level": "read_uncommitted",
        "share.delivery.count.limit": "3",
    }


def test_effective_settings_take_overrides_then_broker_defaults():
    defaults = effective_share_settings({}, BROKER)
    assert (defaults.record_lock_duration_ms, defaults.delivery_count_limit) == (30_000, 5)
    assert (defaults.partition_max_record_locks, defaults.renew_acknowledge_enable) == (2000, True)
    assert (defaults.session_timeout_ms, defaults.heartbeat_interval_ms) == (45_000, 5000)
    assert defaults.auto_offset_reset == ("latest", None)
    overridden = effective_share_settings(
        {
            "share.record.lock.duration.ms": "20000",
            "share.delivery.count.limit": "3",
            "share.partition.max.record.locks": "500",
            "share.renew.acknowledge.enable": "false",
            "share.auto.offset.reset": "by_duration:P1DT2H",
        },
        BROKER,
    )
    assert overridden.record_lock_duration_ms == 20_000
    assert overridden.delivery_count_limit == 3
    assert overridden.partition_max_record_locks == 500
    assert overridden.renew_acknowledge_enable is False
    assert overridden.auto_offset_reset == ("by_duration", 26 * 3_600_000)


def test_stored_overrides_are_recapped_to_the_current_broker_bounds():
    stored = {"share.delivery.count.limit": "9", "share.record.lock.duration.ms": "16000",
              "consumer.session.timeout.ms": "60000"}
    tighter = GroupBrokerConfig.from_mapping(
        {"group.share.max.delivery.count.limit": 6, "group.share.min.record.lock.duration.ms": 20_000,
         "group.consumer.max.session.timeout.ms": 50_000}
    )
    settings = effective_share_settings(stored, tighter)
    assert settings.delivery_count_limit == 6
    assert settings.record_lock_duration_ms == 20_000
    assert effective_consumer_settings(stored, tighter).session_timeout_ms == 50_000


# --- ISO-8601 durations -------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("PT0S", 0), ("PT1S", 1000), ("PT0.5S", 500), ("PT0.0015S", 1), ("PT1,25S", 1250),
        ("PT15M", 900_000), ("PT1H", 3_600_000), ("P1D", 86_400_000), ("P2DT3H4M5.006S", 183_845_006),
        ("pt1h", 3_600_000),
    ],
)
def test_iso8601_durations(text, ms):
    assert parse_iso8601_duration(text) == ms


@pytest.mark.parametrize("text", ["", "P", "PT", "P1DT", "1D", "-PT1H", "PT-1H", "PT1.S", "P1H", "PT1D", "P1W", "PT1H1H"])
def test_malformed_iso8601_durations_are_refused(text):
    refused(parse_iso8601_duration, text)


@given(
    days=st.integers(0, 10_000), hours=st.integers(0, 100), minutes=st.integers(0, 100),
    seconds=st.integers(0, 100), millis=st.integers(0, 999),
)
def test_iso8601_duration_components_add_up(days, hours, minutes, seconds, millis):
    text = f"P{days}DT{hours}H{minutes}M{seconds}.{millis:03d}S"
    expected = (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000 + millis
    assert parse_iso8601_duration(text) == expected
    assert parse_auto_offset_reset("by_duration:" + text) == ("by_duration", expected)
