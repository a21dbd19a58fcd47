"""Topic names and topic configs: Kafka's names, defaults and bounds.

Rules
-----
* A topic config is a string key/value pair with Kafka's name
  (``retention.ms``, ``cleanup.policy``, ...). Only configs set explicitly on a
  topic (its *overrides*) are stored in the metadata; every other config takes
  the default below. Changing a default therefore changes every topic that did
  not set the config, exactly as in Kafka.
* ``validate_topic_configs`` is the single gate: it refuses unknown names and
  out-of-range values with ``INVALID_CONFIG`` and a message that names the
  config and its bound or allowed values, and returns the overrides in a
  normal form (``"TRUE"`` → ``"true"``, ``"delete,compact"`` →
  ``"compact,delete"``), so that two nodes always store the same strings.
* ``TopicConfig.from_mapping`` turns validated overrides into typed fields
  with defaults filled in; the data plane reads configs only through it.
* Topic names follow Kafka: 1..249 characters of ``[a-zA-Z0-9._-]``, not
  ``"."`` or ``".."``. Names starting with ``"__"`` belong to internal topics
  (``__consumer_offsets``, ``__share_group_state``) and are refused unless the
  caller creates an internal topic.

Theory of operation
-------------------
Each config has one ``_ConfigSpec``: a parser from the string form to a typed
value (which raises ``OperatingError(INVALID_CONFIG, ...)``), a default, and a
normaliser back to the stored string. The table ``_SPECS`` is the whole
contract; the docstrings of the defaults say why shoal picked them where it
differs from Kafka.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

from coordinator.errors import ErrorCode, OperatingError

#: Java's Long.MAX_VALUE: Kafka's upper bound for every long-valued config and
#: its spelling of "never" for flush.messages.
LONG_MAX = 2**63 - 1

MAX_TOPIC_NAME_LENGTH = 249
INTERNAL_TOPIC_PREFIX = "__"
_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
_INTEGER = re.compile(r"-?[0-9]+")

#: Bounds on the config map itself, so that a single CreateTopic cannot bloat
#: the replicated metadata (every node holds and snapshots it).
MAX_CONFIG_VALUE_LENGTH = 256

MS_PER_DAY = 24 * 60 * 60 * 1000
MIB = 1024 * 1024

CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
TIMESTAMP_TYPES = ("CreateTime", "LogAppendTime")
COMPRESSION_TYPES = ("producer", "none", "zstd", "lz4")


def validate_topic_name(name: str, allow_internal: bool = False) -> str:
    """Return ``name`` if Kafka would accept it as a topic name, else raise.

    Raises ``OperatingError(INVALID_TOPIC_EXCEPTION)`` naming the rule broken.
    """
    if not isinstance(name, str) or not name:
        raise OperatingError(ErrorCode.INVALID_TOPIC_EXCEPTION, "topic name must be a non-empty string")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise OperatingError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name is {len(name)} characters long; the limit is {MAX_TOPIC_NAME_LENGTH}",
        )
    if name in (".", ".."):
        raise OperatingError(ErrorCode.INVALID_TOPIC_EXCEPTION, f"topic name cannot be {name!r}")
    if not _LEGAL_TOPIC_NAME.fullmatch(name):
        raise OperatingError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name {name!r} has characters outside [a-zA-Z0-9._-]",
        )
    if name.startswith(INTERNAL_TOPIC_PREFIX) and not allow_internal:
        raise OperatingError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name {name!r} starts with '__', which is reserved for internal topics",
        )
    return name


def topic_name_collision_key(name: str) -> str:
    """Kafka refuses two topics whose names differ only by '.' versus '_',
    because metric names replace '.' with '_' and the two would share series."""
    return name.replace(".", "_")


# ---------------------------------------------------------------------------
# Parsers. Each takes (config name, string value) and returns the typed value
# or raises INVALID_CONFIG naming the config and its bound.


def _invalid(name: str, value: str, expectation: str) -> OperatingError:
    shown = value if len(value) <= 40 else value[:40] + "..."
    return OperatingError(ErrorCode.INVALID_CONFIG, f"{name}={shown!r} is invalid: {expectation}")


def _long_in_range(low: int, high: int = LONG_MAX) -> Callable[[str, str], int]:
    def parse(name: str, value: str) -> int:
        # A strict pattern: Python's int() would also take " 12", "1_000" and
        # "+3", which Kafka refuses and which would be stored un-normalised.
        if not _INTEGER.fullmatch(value):
            raise _invalid(name, value, f"expected an integer in [{low}, {high}]")
        number = int(value)
        if not low <= number <= high:
            raise _invalid(name, value, f"expected an integer in [{low}, {high}]")
        return number

    return parse


def _one_of(allowed: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        resolved = (aliases or {}).get(value, value)
        if resolved not in allowed:
            raise _invalid(name, value, f"allowed values are {', '.join(allowed)}")
        return resolved

    return parse


def _cleanup_policy(name: str, value: str) -> str:
    parts = sorted({part.strip() for part in value.lower().split(",")})
    normal = ",".join(parts)
    if normal not in CLEANUP_POLICIES:
        raise _invalid(name, value, "allowed values are delete, compact, compact,delete")
    return normal


def _boolean(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise _invalid(name, value, "expected true or false")
    return lowered == "true"


def _unclean_leader_election(name: str, value: str) -> bool:
    enabled = _boolean(name, value)
    if enabled:
        raise OperatingError(
            ErrorCode.INVALID_CONFIG,
            f"{name}=true is refused: shoal never elects an unclean leader "
            "(a replica outside the ISR would lose acknowledged records)",
        )
    return enabled


@dataclass(frozen=True)
class _ConfigSpec:
    parse: Callable[[str, str], object]
    default: str

    def normalise(self, typed: object) -> str:
        if isinstance(typed, bool):
            return "true" if typed else "false"
        return str(typed)


_SPECS: dict[str, _ConfigSpec] = {
    # -1 keeps records forever (Kafka's spelling of "infinite").
    "retention.ms": _ConfigSpec(_long_in_range(-1), str(7 * MS_PER_DAY)),
    "retention.bytes": _ConfigSpec(_long_in_range(-1), "-1"),
    # 16 MiB instead of Kafka's 1 GiB: retention deletes whole segments, and a
    # restarted node rescans its active segment in Python (tens of MB/s when
    # it checks CRCs), so smaller segments give finer-grained retention and a
    # recovery bounded to well under a second per partition. 1024 is the
    # floor so that tests can roll segments after a handful of batches.
    "segment.bytes": _ConfigSpec(_long_in_range(1024, 1024 * MIB), str(16 * MIB)),
    "segment.ms": _ConfigSpec(_long_in_range(1), str(7 * MS_PER_DAY)),
    "index.interval.bytes": _ConfigSpec(_long_in_range(0, 2**31 - 1), "4096"),
    "cleanup.policy": _ConfigSpec(_cleanup_policy, "delete"),
    "delete.retention.ms": _ConfigSpec(_long_in_range(0), str(MS_PER_DAY)),
    "min.compaction.lag.ms": _ConfigSpec(_long_in_range(0), "0"),
    # Kafka's default: 1 MiB of records plus the 12-byte log overhead (base
    # offset + batch length). It bounds one record batch, hence one append.
    # The ceiling keeps a batch far below gRPC's message limit and the sizes
    # where protobuf handling becomes disproportionately slow.
    "max.message.bytes": _ConfigSpec(_long_in_range(1, 64 * MIB), str(MIB + 12)),
    # Default 1, as in Kafka's topic config; the controller sets 2 for topics
    # with replication factor >= 3 when the caller did not choose (see
    # cluster.controller.effective_topic_configs).
    "min.insync.replicas": _ConfigSpec(_long_in_range(1, 2**31 - 1), "1"),
    # Like Kafka, durability comes from replication, not from fsync per write:
    # never flush by message count, and flush dirty segments every second,
    # which bounds what a power loss of *every* replica at once can take away.
    # A kill -9 loses nothing (the page cache survives the process).
    "flush.messages": _ConfigSpec(_long_in_range(1), str(LONG_MAX)),
    "flush.ms": _ConfigSpec(_long_in_range(0), "1000"),
    "message.timestamp.type": _ConfigSpec(_one_of(TIMESTAMP_TYPES), "CreateTime"),
    # Kafka's topic-level spelling of "no compression" is "uncompressed"; it is
    # accepted and stored as "none".
    "compression.type": _ConfigSpec(_one_of(COMPRESSION_TYPES, {"uncompressed": "none"}), "producer"),
    "unclean.leader.election.enable": _ConfigSpec(_unclean_leader_election, "false"),
}

TOPIC_CONFIG_NAMES: tuple[str, ...] = tuple(sorted(_SPECS))
DEFAULT_TOPIC_CONFIGS: dict[str, str] = {name: spec.default for name, spec in _SPECS.items()}


def validate_topic_configs(configs: Mapping[str, str]) -> dict[str, str]:
    """Validate topic config overrides; return them normalised.

    Raises ``OperatingError(INVALID_CONFIG)`` naming the first bad config
    (in name order, so that the message is the same on every call).
    """
    normalised: dict[str, str] = {}
    for name in sorted(configs):
        value = configs[name]
        spec = _SPECS.get(name)
        if spec is None:
            raise OperatingError(
                ErrorCode.INVALID_CONFIG,
                f"unknown topic config {name!r}; known configs: {', '.join(TOPIC_CONFIG_NAMES)}",
            )
        if not isinstance(value, str):
            raise OperatingError(ErrorCode.INVALID_CONFIG, f"{name} must be given as a string, not {type(value).__name__}")
        if len(value) > MAX_CONFIG_VALUE_LENGTH:
            raise OperatingError(
                ErrorCode.INVALID_CONFIG, f"{name} value is {len(value)} characters; the limit is {MAX_CONFIG_VALUE_LENGTH}"
            )
        normalised[name] = spec.normalise(spec.parse(name, value))
    return normalised


def validate_min_insync_replicas(configs: Mapping[str, str], replication_factor: int) -> None:
    """Refuse min.insync.replicas above the replication factor: every
    ``acks=all`` produce to such a topic would fail with NOT_ENOUGH_REPLICAS."""
    min_insync = int(configs.get("min.insync.replicas", DEFAULT_TOPIC_CONFIGS["min.insync.replicas"]))
    if min_insync > replication_factor:
        raise OperatingError(
            ErrorCode.INVALID_CONFIG,
            f"min.insync.replicas={min_insync} exceeds the replication factor {replication_factor}; "
            "every acks=all produce would fail",
        )


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic's effective configuration: overrides with defaults filled in."""

    retention_ms: int
    retention_bytes: int
    segment_bytes: int
    segment_ms: int
    index_interval_bytes: int
    cleanup_policy: str
    delete_retention_ms: int
    min_compaction_lag_ms: int
    max_message_bytes: int
    min_insync_replicas: int
    flush_messages: int
    flush_ms: int
    message_timestamp_type: str
    compression_type: str
    unclean_leader_election_enable: bool

    @classmethod
    def from_mapping(cls, configs: Mapping[str, str]) -> TopicConfig:
        """Validate ``configs`` (overrides) and fill in every default."""
        merged = dict(DEFAULT_TOPIC_CONFIGS)
        merged.update(validate_topic_configs(configs))
        typed = {name.replace(".", "_"): _SPECS[name].parse(name, value) for name, value in merged.items()}
        return cls(**typed)  # type: ignore[arg-type]

    @property
    def retention_infinite(self) -> bool:
        return self.retention_ms == -1 and self.retention_bytes == -1

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy.split(",")

    @property
    def deletes(self) -> bool:
        return "delete" in self.cleanup_policy.split(",")
