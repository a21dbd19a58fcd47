"""Topic names and topic configs: Kafka's names, defaults, bounds, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.topic_config import (
    DEFAULT_TOPIC_CONFIGS,
    LONG_MAX,
    TOPIC_CONFIG_NAMES,
    TopicConfig,
    validate_min_insync_replicas,
    validate_topic_configs,
    validate_topic_name,
)
from coordinator.errors import ErrorCode, OperatingError


def refused(configs: dict[str, str]) -> OperatingError:
    with pytest.raises(OperatingError) as info:
        validate_topic_configs(configs)
    assert info.value.code == ErrorCode.INVALID_CONFIG
    return info.value


def test_defaults() -> None:
    config = TopicConfig.from_mapping({})
    assert config.retention_ms == 7 * 24 * 3600 * 1000
    assert config.retention_bytes == -1
    assert config.segment_bytes == 16 * 1024 * 1024
    assert config.segment_ms == 7 * 24 * 3600 * 1000
    assert config.index_interval_bytes == 4096
    assert config.cleanup_policy == "delete" and config.deletes and not config.compacted
    assert config.delete_retention_ms == 24 * 3600 * 1000
    assert config.min_compaction_lag_ms == 0
    assert config.max_message_bytes == 1024 * 1024 + 12
    assert config.min_insync_replicas == 1
    assert config.flush_messages == LONG_MAX
    assert config.flush_ms == 1000
    assert config.message_timestamp_type == "CreateTime"
    assert config.compression_type == "producer"
    assert config.unclean_leader_election_enable is False
    assert not config.retention_infinite
    assert set(DEFAULT_TOPIC_CONFIGS) == set(TOPIC_CONFIG_NAMES)


def test_overrides_are_typed_and_normalised() -> None:
    overrides = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete,compact",
        "compression.type": "uncompressed",
        "unclean.leader.election.enable": "FALSE",
        "segment.bytes": "1024",
        "message.timestamp.type": "LogAppendTime",
    }
    assert validate_topic_configs(overrides) == {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "compact,delete",
        "compression.type": "none",
        "unclean.leader.election.enable": "false",
        "segment.bytes": "1024",
        "message.timestamp.type": "LogAppendTime",
    }
    config = TopicConfig.from_mapping(overrides)
    assert config.retention_infinite and config.compacted and config.deletes
    assert config.segment_bytes == 1024 and config.compression_type == "none"


@pytest.mark.parametrize(
    ("configs", "named", "bound"),
    [
        ({"retention.ms": "-2"}, "retention.ms", "[-1,"),
        ({"retention.bytes": "-5"}, "retention.bytes", "[-1,"),
        ({"segment.bytes": "1023"}, "segment.bytes", "[1024, 1073741824]"),
        ({"segment.bytes": str(2 * 1024**3)}, "segment.bytes", "[1024, 1073741824]"),
        ({"segment.ms": "0"}, "segment.ms", "[1,"),
        ({"index.interval.bytes": "-1"}, "index.interval.bytes", "[0,"),
        ({"cleanup.policy": "forever"}, "cleanup.policy", "delete, compact, compact,delete"),
        ({"delete.retention.ms": "-1"}, "delete.retention.ms", "[0,"),
        ({"min.compaction.lag.ms": "-1"}, "min.compaction.lag.ms", "[0,"),
        ({"max.message.bytes": "0"}, "max.message.bytes", "[1, 67108864]"),
        ({"min.insync.replicas": "0"}, "min.insync.replicas", "[1,"),
        ({"flush.messages": "0"}, "flush.messages", "[1,"),
        ({"flush.ms": "-1"}, "flush.ms", "[0,"),
        ({"message.timestamp.type": "createtime"}, "message.timestamp.type", "CreateTime, LogAppendTime"),
        ({"compression.type": "gzip"}, "compression.type", "producer, none, zstd, lz4"),
        ({"unclean.leader.election.enable": "maybe"}, "unclean.leader.election.enable", "true or false"),
        ({"retention.ms": str(LONG_MAX + 1)}, "retention.ms", str(LONG_MAX)),
    ],
)
def test_out_of_bounds_values_name_config_and_bound(configs: dict[str, str], named: str, bound: str) -> None:
    error = refused(configs)
    assert named in error.message and bound in error.message


@pytest.mark.parametrize("value", [" 12", "1_000", "+3", "1.5", "", "0x10", "12 "])
def test_integers_are_strict(value: str) -> None:
    assert "retention.ms" in refused({"retention.ms": value}).message


def test_unclean_leader_election_is_refused() -> None:
    error = refused({"unclean.leader.election.enable": "true"})
    assert "shoal never elects an unclean leader" in error.message


def test_unknown_config_lists_known_names() -> None:
    error = refused({"retention.hours": "1"})
    assert "retention.hours" in error.message and "retention.ms" in error.message


def test_non_string_value_refused() -> None:
    assert "retention.ms" in refused({"retention.ms": 5}).message  # type: ignore[dict-item]


def test_min_insync_replicas_bounded_by_replication_factor() -> None:
    validate_min_insync_replicas({"min.insync.replicas": "2"}, 3)
    with pytest.raises(OperatingError) as info:
        validate_min_insync_replicas({"min.insync.replicas": "3"}, 2)
    assert info.value.code == ErrorCode.INVALID_CONFIG
    assert "min.insync.replicas=3" in info.value.message and "replication factor 2" in info.value.message


@given(
    st.dictionaries(
        st.sampled_from(["retention.ms", "segment.bytes", "flush.ms", "min.insync.replicas"]),
        st.integers(min_value=1024, max_value=10**9).map(str),
    )
)
def test_validation_is_idempotent(configs: dict[str, str]) -> None:
    normal = validate_topic_configs(configs)
    assert validate_topic_configs(normal) == normal
    assert TopicConfig.from_mapping(normal) == TopicConfig.from_mapping(configs)


@pytest.mark.parametrize("name", ["orders", "a", "a.b_c-D9", "x" * 249, "..."])
def test_legal_topic_names(name: str) -> None:
    assert validate_topic_name(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "non-empty"),
        (".", "cannot be '.'"),
        ("..", "cannot be '..'"),
        ("x" * 250, "250 characters long; the limit is 249"),
        ("has space", "outside [a-zA-Z0-9._-]"),
        ("ümlaut", "outside [a-zA-Z0-9._-]"),
        ("a/b", "outside [a-zA-Z0-9._-]"),
        ("__consumer_offsets", "reserved for internal topics"),
    ],
)
def test_illegal_topic_names(name: str, fragment: str) -> None:
    with pytest.raises(OperatingError) as info:
        validate_topic_name(name)
    assert info.value.code == ErrorCode.INVALID_TOPIC_EXCEPTION
    assert fragment in info.value.message


def test_internal_names_allowed_for_internal_topics() -> None:
    assert validate_topic_name("__share_group_state", allow_internal=True) == "__share_group_state"
