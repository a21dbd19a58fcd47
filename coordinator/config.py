"""Group settings: the broker's ``group.*`` configs and the per-group overrides.

Rules
-----
* Every setting has Kafka's name and default where Kafka has one, and an
  explicit, bounded range. A value outside its range is refused with
  ``OperatingError(INVALID_CONFIG, ...)`` naming the config and the bound.
* Broker level (``GroupBrokerConfig``, kip932-facts.md §3.1). Kafka's structure
  is kept: the bounds that limit a group-level override are configs of their own
  (``group.share.min.record.lock.duration.ms``, ``...max...``) and those bound
  configs have an absolute range of their own. The broker's value must lie within
  its min/max configs, ``max.share.sessions >= max.size`` and the heartbeat
  interval must be shorter than the session timeout.
* **Shoal departs from Kafka in the absolute ranges of timers**: a local cluster
  and the tests need short timers, so every ``*.ms`` min config may be set as low
  as 500 ms (heartbeat intervals 100 ms), e.g. ``group.share.min.record.lock.
  duration.ms=1000`` with ``group.share.record.lock.duration.ms=1000``, or
  ``group.share.min.session.timeout.ms=2000``. Kafka's defaults are unchanged, so
  an operator who sets nothing gets Kafka's behaviour.
* Group level (``validate_group_config``, KIP-1240, §3.2). Overrides are stored
  as strings; ``validate_group_config`` is given the *complete* override set of a
  group (so that cross-config rules such as "session timeout > heartbeat
  interval" see the values that will be in force; a missing value is taken from
  the broker). Unknown names are refused ("Unknown group config name").
* ``share.isolation.level=read_committed`` is refused: shoal has no transactions,
  so there is no last stable offset to bound reads at.
* Evaluation (``effective_share_settings``): a stored override is re-capped to
  the *current* broker bounds, as Kafka's ``GroupConfig.evaluate`` does, because
  an operator may tighten the broker bounds after a group override was stored.

Theory of operation
-------------------
One ``ConfigDef`` table per level describes name, type, default, bounds and
documentation. Parsing walks the table; ``GroupBrokerConfig`` is a frozen,
validated dataclass whose fields are the snake_case form of the names, so the
shell reads ``broker.share_record_lock_duration_ms`` rather than strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

from coordinator.errors import ErrorCode, OperatingError

ConfigValue = int | bool | str

#: Upper bound for any duration this module accepts, in ms (Java's Long range is
#: far larger; a reset "by duration" of more than ~292 million years is a typo).
DURATION_MAX_MS = 2**63 - 1


@dataclass(frozen=True)
class ConfigDef:
    """One setting: its name, type, default, bounds and what it means."""

    name: str
    kind: type
    default: ConfigValue
    minimum: int | None = None
    maximum: int | None = None
    allowed: tuple[str, ...] | None = None
    doc: str = ""

    def parse(self, raw: ConfigValue) -> ConfigValue:
        """Converts ``raw`` to this config's type and checks its absolute range."""
        if self.kind is bool:
            return _parse_bool(self.name, raw)
        if self.kind is int:
            value = _parse_int(self.name, raw)
            if self.minimum is not None and value < self.minimum:
                raise _invalid(f"{self.name} must be at least {self.minimum}, got {value}")
            if self.maximum is not None and value > self.maximum:
                raise _invalid(f"{self.name} must be at most {self.maximum}, got {value}")
            return value
        assert self.kind is str, f"unsupported config kind {self.kind}"
        if not isinstance(raw, str):
            raise _invalid(f"{self.name} must be a string, got {raw!r}")
        if self.allowed is not None and raw not in self.allowed:
            raise _invalid(f"{self.name} must be one of {', '.join(self.allowed)}, got {raw!r}")
        return raw


def _invalid(message: str) -> OperatingError:
    return OperatingError(ErrorCode.INVALID_CONFIG, message)


def _parse_int(name: str, raw: ConfigValue) -> int:
    # bool is a subclass of int in Python; "true" is not a number of milliseconds.
    if isinstance(raw, bool):
        raise _invalid(f"{name} must be an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    text = raw.strip()
    if not re.fullmatch(r"[+-]?\d{1,19}", text):
        raise _invalid(f"{name} must be an integer, got {raw!r}")
    return int(text)


def _parse_bool(name: str, raw: ConfigValue) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise _invalid(f"{name} must be true or false, got {raw!r}")


# ---------------------------------------------------------------------------
# Broker level
# ---------------------------------------------------------------------------

_HOUR_MS = 3_600_000

#: (field name of GroupBrokerConfig, definition). Order is documentation order.
BROKER_CONFIG_DEFS: tuple[tuple[str, ConfigDef], ...] = (
    (
        "share_record_lock_duration_ms",
        ConfigDef(
            "group.share.record.lock.duration.ms", int, 30_000, 500, _HOUR_MS,
            doc="Acquisition lock duration of a share-group record when the group sets no "
            "override. Must lie within the min/max record lock duration configs.",
        ),
    ),
    (
        "share_min_record_lock_duration_ms",
        ConfigDef(
            "group.share.min.record.lock.duration.ms", int, 15_000, 500, 30_000,
            doc="Lowest lock duration a group may configure. Kafka's floor is 1000 ms; shoal "
            "allows 500 ms for local clusters and tests.",
        ),
    ),
    (
        "share_max_record_lock_duration_ms",
        ConfigDef(
            "group.share.max.record.lock.duration.ms", int, 60_000, 500, _HOUR_MS,
            doc="Highest lock duration a group may configure (Kafka's floor is 30000 ms; "
            "shoal allows 500 ms so a test can cap it low).",
        ),
    ),
    (
        "share_delivery_count_limit",
        ConfigDef(
            "group.share.delivery.count.limit", int, 5, 2, 10,
            doc="Delivery attempts after which a released or timed-out record is archived.",
        ),
    ),
    (
        "share_min_delivery_count_limit",
        ConfigDef("group.share.min.delivery.count.limit", int, 2, 2, 5,
                  doc="Lowest delivery count limit a group may configure (KIP-1240)."),
    ),
    (
        "share_max_delivery_count_limit",
        ConfigDef("group.share.max.delivery.count.limit", int, 10, 5, 25,
                  doc="Highest delivery count limit a group may configure (KIP-1240)."),
    ),
    (
        "share_partition_max_record_locks",
        ConfigDef(
            "group.share.partition.max.record.locks", int, 2000, 100, 10_000,
            doc="Bound on in-flight records (between start offset and end offset) per share "
            "partition; a full window stops acquisition until the start offset advances.",
        ),
    ),
    (
        "share_min_partition_max_record_locks",
        ConfigDef("group.share.min.partition.max.record.locks", int, 100, 100, 10_000,
                  doc="Lowest in-flight bound a group may configure (KIP-1240)."),
    ),
    (
        "share_max_partition_max_record_locks",
        ConfigDef("group.share.max.partition.max.record.locks", int, 4000, 100, 10_000,
                  doc="Highest in-flight bound a group may configure (KIP-1240)."),
    ),
    (
        "share_session_timeout_ms",
        ConfigDef(
            "group.share.session.timeout.ms", int, 45_000, 500, _HOUR_MS,
            doc="A share-group member that sends no heartbeat for this long is removed and "
            "its acquired records are released.",
        ),
    ),
    (
        "share_min_session_timeout_ms",
        ConfigDef("group.share.min.session.timeout.ms", int, 45_000, 500, _HOUR_MS,
                  doc="Lowest session timeout (broker value and group overrides)."),
    ),
    (
        "share_max_session_timeout_ms",
        ConfigDef("group.share.max.session.timeout.ms", int, 60_000, 500, _HOUR_MS,
                  doc="Highest session timeout (broker value and group overrides)."),
    ),
    (
        "share_heartbeat_interval_ms",
        ConfigDef("group.share.heartbeat.interval.ms", int, 5_000, 100, _HOUR_MS,
                  doc="Interval the coordinator tells share consumers to heartbeat at."),
    ),
    (
        "share_min_heartbeat_interval_ms",
        ConfigDef("group.share.min.heartbeat.interval.ms", int, 5_000, 100, _HOUR_MS,
                  doc="Lowest heartbeat interval (broker value and group overrides)."),
    ),
    (
        "share_max_heartbeat_interval_ms",
        ConfigDef("group.share.max.heartbeat.interval.ms", int, 15_000, 100, _HOUR_MS,
                  doc="Highest heartbeat interval (broker value and group overrides)."),
    ),
    (
        "share_max_size",
        ConfigDef("group.share.max.size", int, 200, 1, 1000,
                  doc="Members per share group; one more is refused with GROUP_MAX_SIZE_REACHED."),
    ),
    (
        "share_max_share_sessions",
        ConfigDef(
            "group.share.max.share.sessions", int, 2000, 1, 100_000,
            doc="Share sessions cached per broker; must be at least group.share.max.size.",
        ),
    ),
    (
        "consumer_session_timeout_ms",
        ConfigDef("group.consumer.session.timeout.ms", int, 45_000, 500, _HOUR_MS,
                  doc="A consumer-group member silent for this long is removed."),
    ),
    (
        "consumer_min_session_timeout_ms",
        ConfigDef("group.consumer.min.session.timeout.ms", int, 45_000, 500, _HOUR_MS,
                  doc="Lowest consumer-group session timeout."),
    ),
    (
        "consumer_max_session_timeout_ms",
        ConfigDef("group.consumer.max.session.timeout.ms", int, 60_000, 500, _HOUR_MS,
                  doc="Highest consumer-group session timeout."),
    ),
    (
        "consumer_heartbeat_interval_ms",
        ConfigDef("group.consumer.heartbeat.interval.ms", int, 5_000, 100, _HOUR_MS,
                  doc="Interval the coordinator tells consumers to heartbeat at."),
    ),
    (
        "consumer_min_heartbeat_interval_ms",
        ConfigDef("group.consumer.min.heartbeat.interval.ms", int, 5_000, 100, _HOUR_MS,
                  doc="Lowest consumer-group heartbeat interval."),
    ),
    (
        "consumer_max_heartbeat_interval_ms",
        ConfigDef("group.consumer.max.heartbeat.interval.ms", int, 15_000, 100, _HOUR_MS,
                  doc="Highest consumer-group heartbeat interval."),
    ),
    (
        "consumer_max_size",
        ConfigDef(
            "group.consumer.max.size", int, 1000, 1, 10_000,
            doc="Members per consumer group. Kafka's default is unbounded (Integer.MAX_VALUE); "
            "shoal bounds every collection, so the default is 1000.",
        ),
    ),
    (
        "max_groups",
        ConfigDef(
            "group.coordinator.max.groups", int, 10_000, 1, 1_000_000,
            doc="shoal-specific: groups (share and consumer) held by one group coordinator "
            "shard; creating one more is refused with GROUP_MAX_SIZE_REACHED.",
        ),
    ),
    (
        "offset_metadata_max_bytes",
        ConfigDef("offset.metadata.max.bytes", int, 4096, 0, 1_048_576,
                  doc="Largest metadata string (UTF-8 bytes) stored with a committed offset."),
    ),
)

_BROKER_DEF_BY_NAME: dict[str, tuple[str, ConfigDef]] = {d.name: (f, d) for f, d in BROKER_CONFIG_DEFS}

#: Prefixes this module owns: an unknown name under one of them is a typo and is
#: refused; any other name belongs to another component and is ignored.
_BROKER_OWNED_PREFIXES = ("group.share.", "group.consumer.", "group.coordinator.")


@dataclass(frozen=True)
class GroupBrokerConfig:
    """The broker's group settings (share and consumer groups), validated.

    Build it with ``from_mapping``; the default constructor gives Kafka's
    defaults and is validated too.
    """

    share_record_lock_duration_ms: int = 30_000
    share_min_record_lock_duration_ms: int = 15_000
    share_max_record_lock_duration_ms: int = 60_000
    share_delivery_count_limit: int = 5
    share_min_delivery_count_limit: int = 2
    share_max_delivery_count_limit: int = 10
    share_partition_max_record_locks: int = 2000
    share_min_partition_max_record_locks: int = 100
    share_max_partition_max_record_locks: int = 4000
    share_session_timeout_ms: int = 45_000
    share_min_session_timeout_ms: int = 45_000
    share_max_session_timeout_ms: int = 60_000
    share_heartbeat_interval_ms: int = 5_000
    share_min_heartbeat_interval_ms: int = 5_000
    share_max_heartbeat_interval_ms: int = 15_000
    share_max_size: int = 200
    share_max_share_sessions: int = 2000
    consumer_session_timeout_ms: int = 45_000
    consumer_min_session_timeout_ms: int = 45_000
    consumer_max_session_timeout_ms: int = 60_000
    consumer_heartbeat_interval_ms: int = 5_000
    consumer_min_heartbeat_interval_ms: int = 5_000
    consumer_max_heartbeat_interval_ms: int = 15_000
    consumer_max_size: int = 1000
    max_groups: int = 10_000
    offset_metadata_max_bytes: int = 4096

    def __post_init__(self) -> None:
        for field_name, definition in BROKER_CONFIG_DEFS:
            definition.parse(getattr(self, field_name))
        self._check_within("share_record_lock_duration_ms", "share_min_record_lock_duration_ms",
                           "share_max_record_lock_duration_ms")
        self._check_within("share_delivery_count_limit", "share_min_delivery_count_limit",
                           "share_max_delivery_count_limit")
        self._check_within("share_partition_max_record_locks", "share_min_partition_max_record_locks",
                           "share_max_partition_max_record_locks")
        self._check_within("share_session_timeout_ms", "share_min_session_timeout_ms",
                           "share_max_session_timeout_ms")
        self._check_within("share_heartbeat_interval_ms", "share_min_heartbeat_interval_ms",
                           "share_max_heartbeat_interval_ms")
        self._check_within("consumer_session_timeout_ms", "consumer_min_session_timeout_ms",
                           "consumer_max_session_timeout_ms")
        self._check_within("consumer_heartbeat_interval_ms", "consumer_min_heartbeat_interval_ms",
                           "consumer_max_heartbeat_interval_ms")
        self._check_less("share_heartbeat_interval_ms", "share_session_timeout_ms")
        self._check_less("consumer_heartbeat_interval_ms", "consumer_session_timeout_ms")
        if self.share_max_share_sessions < self.share_max_size:
            raise _invalid(
                f"{config_name('share_max_share_sessions')} must be at least "
                f"{config_name('share_max_size')} ({self.share_max_size}), "
                f"got {self.share_max_share_sessions}"
            )

    def _check_within(self, value_field: str, min_field: str, max_field: str) -> None:
        value, low, high = getattr(self, value_field), getattr(self, min_field), getattr(self, max_field)
        if low > high:
            raise _invalid(
                f"{config_name(min_field)} ({low}) must not exceed {config_name(max_field)} ({high})"
            )
        if value < low:
            raise _invalid(
                f"{config_name(value_field)} must be at least {low} "
                f"({config_name(min_field)}), got {value}"
            )
        if value > high:
            raise _invalid(
                f"{config_name(value_field)} must be at most {high} "
                f"({config_name(max_field)}), got {value}"
            )

    def _check_less(self, smaller_field: str, larger_field: str) -> None:
        smaller, larger = getattr(self, smaller_field), getattr(self, larger_field)
        if smaller >= larger:
            raise _invalid(
                f"{config_name(smaller_field)} ({smaller}) must be less than "
                f"{config_name(larger_field)} ({larger})"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, str | int]) -> GroupBrokerConfig:
        """Builds a validated config from Kafka-named settings.

        Names this module does not own (outside ``group.share.``,
        ``group.consumer.``, ``group.coordinator.`` and ``offset.metadata.
        max.bytes``) are ignored so that a whole node config can be passed; an
        unknown name under an owned prefix is refused as a likely typo.
        """
        parsed: dict[str, ConfigValue] = {}
        for name, raw in values.items():
            entry = _BROKER_DEF_BY_NAME.get(name)
            if entry is None:
                if name.startswith(_BROKER_OWNED_PREFIXES):
                    raise _invalid(f"Unknown broker config name {name!r}")
                continue
            field_name, definition = entry
            parsed[field_name] = definition.parse(raw)
        return cls(**parsed)  # type: ignore[arg-type]

    def to_mapping(self) -> dict[str, int]:
        """Kafka-named view of every setting (for describe-configs and logs)."""
        return {definition.name: getattr(self, f) for f, definition in BROKER_CONFIG_DEFS}


def config_name(field_name: str) -> str:
    """The Kafka name of a ``GroupBrokerConfig`` field."""
    for candidate, definition in BROKER_CONFIG_DEFS:
        if candidate == field_name:
            return definition.name
    raise AssertionError(f"no broker config for field {field_name}")


assert {f.name for f in fields(GroupBrokerConfig)} == {f for f, _ in BROKER_CONFIG_DEFS}


# ---------------------------------------------------------------------------
# ISO-8601 durations (share.auto.offset.reset=by_duration:...)
# ---------------------------------------------------------------------------

_DURATION_PATTERN = re.compile(
    r"P(?:(?P<days>\d{1,9})D)?"
    r"(?:T(?:(?P<hours>\d{1,12})H)?(?:(?P<minutes>\d{1,14})M)?"
    r"(?:(?P<seconds>\d{1,15})(?:[.,](?P<fraction>\d{1,9}))?S)?)?",
    re.IGNORECASE,
)


def parse_iso8601_duration(text: str) -> int:
    """Parses ``PnDTnHnMn.nS`` (Java's ``Duration.parse`` form) to milliseconds.

    Only non-negative durations are accepted, as Kafka's ``by_duration`` reset
    requires. Fractions of a second finer than a millisecond are truncated.
    Raises ``OperatingError(INVALID_CONFIG)`` for anything else.
    """
    match = _DURATION_PATTERN.fullmatch(text.strip())
    parts = match.groupdict() if match else {}
    has_field = any(parts.get(k) is not None for k in ("days", "hours", "minutes", "seconds"))
    # "PT" alone, or "P1DT" with an empty time part, is not a duration.
    time_part_empty = match is not None and "T" in text.upper() and not any(
        parts.get(k) is not None for k in ("hours", "minutes", "seconds")
    )
    if match is None or not has_field or time_part_empty:
        raise _invalid(
            f"{text!r} is not an ISO-8601 duration of the form PnDTnHnMn.nS "
            "(for example P1D, PT1H30M, PT0.5S)"
        )
    fraction = (parts["fraction"] or "").ljust(3, "0")[:3]
    total_ms = (
        int(parts["days"] or 0) * 86_400_000
        + int(parts["hours"] or 0) * 3_600_000
        + int(parts["minutes"] or 0) * 60_000
        + int(parts["seconds"] or 0) * 1000
        + int(fraction)
    )
    if total_ms > DURATION_MAX_MS:
        raise _invalid(f"duration {text!r} is too long (at most {DURATION_MAX_MS} ms)")
    return total_ms


AutoOffsetResetKind = Literal["latest", "earliest", "by_duration"]


def parse_auto_offset_reset(text: str) -> tuple[AutoOffsetResetKind, int | None]:
    """``latest`` | ``earliest`` | ``by_duration:<ISO-8601>`` → (kind, duration_ms)."""
    value = text.strip()
    lowered = value.lower()
    if lowered == "latest":
        return ("latest", None)
    if lowered == "earliest":
        return ("earliest", None)
    if lowered.startswith("by_duration:"):
        return ("by_duration", parse_iso8601_duration(value[len("by_duration:"):]))
    raise _invalid(
        f"share.auto.offset.reset must be latest, earliest or by_duration:<ISO-8601 duration>, "
        f"got {text!r}"
    )


# ---------------------------------------------------------------------------
# Group level (KIP-1240 and friends)
# ---------------------------------------------------------------------------

#: Group config names with their broker default (field of GroupBrokerConfig)
#: and the broker fields bounding them; None where the config is not numeric.
_GROUP_BOUNDED: dict[str, tuple[str, str, str]] = {
    "share.record.lock.duration.ms": (
        "share_record_lock_duration_ms", "share_min_record_lock_duration_ms",
        "share_max_record_lock_duration_ms",
    ),
    "share.delivery.count.limit": (
        "share_delivery_count_limit", "share_min_delivery_count_limit",
        "share_max_delivery_count_limit",
    ),
    "share.partition.max.record.locks": (
        "share_partition_max_record_locks", "share_min_partition_max_record_locks",
        "share_max_partition_max_record_locks",
    ),
    "share.session.timeout.ms": (
        "share_session_timeout_ms", "share_min_session_timeout_ms", "share_max_session_timeout_ms",
    ),
    "share.heartbeat.interval.ms": (
        "share_heartbeat_interval_ms", "share_min_heartbeat_interval_ms",
        "share_max_heartbeat_interval_ms",
    ),
    "consumer.session.timeout.ms": (
        "consumer_session_timeout_ms", "consumer_min_session_timeout_ms",
        "consumer_max_session_timeout_ms",
    ),
    "consumer.heartbeat.interval.ms": (
        "consumer_heartbeat_interval_ms", "consumer_min_heartbeat_interval_ms",
        "consumer_max_heartbeat_interval_ms",
    ),
}

#: Every group-level config, with its documentation. Numeric defaults come from
#: the broker (the ``default`` here is only what a describe shows with Kafka's
#: broker defaults).
GROUP_CONFIG_DEFS: tuple[ConfigDef, ...] = (
    ConfigDef("share.auto.offset.reset", str, "latest",
              doc="Where a share partition with no state starts: latest, earliest or "
              "by_duration:<ISO-8601 duration> (the first offset at or after now minus the duration)."),
    ConfigDef("share.isolation.level", str, "read_uncommitted", allowed=("read_uncommitted",),
              doc="Only read_uncommitted: shoal has no transactions."),
    ConfigDef("share.record.lock.duration.ms", int, 30_000,
              doc="Acquisition lock duration; within the broker's min/max record lock duration."),
    ConfigDef("share.delivery.count.limit", int, 5,
              doc="Delivery attempts before archiving; within the broker's min/max delivery count limit."),
    ConfigDef("share.partition.max.record.locks", int, 2000,
              doc="In-flight records per share partition; within the broker's min/max."),
    ConfigDef("share.session.timeout.ms", int, 45_000,
              doc="Member session timeout; within broker bounds, greater than the heartbeat interval."),
    ConfigDef("share.heartbeat.interval.ms", int, 5_000,
              doc="Member heartbeat interval; within broker bounds."),
    ConfigDef("share.renew.acknowledge.enable", bool, True,
              doc="Whether RENEW acknowledgements (KIP-1222) are accepted; when false they are "
              "refused with INVALID_RECORD_STATE."),
    ConfigDef("consumer.session.timeout.ms", int, 45_000,
              doc="Consumer-group member session timeout; within broker bounds."),
    ConfigDef("consumer.heartbeat.interval.ms", int, 5_000,
              doc="Consumer-group member heartbeat interval; within broker bounds."),
)

GROUP_CONFIG_NAMES: frozenset[str] = frozenset(d.name for d in GROUP_CONFIG_DEFS)

#: A group's override set can never be larger than the number of known names,
#: which bounds the size of a group-config record.
assert len(GROUP_CONFIG_NAMES) <= 32


def validate_group_config(updates: Mapping[str, str], broker: GroupBrokerConfig) -> dict[str, str]:
    """Validates a group's complete override set; returns it normalised.

    Numeric values must lie within the broker's current min/max configs; session
    timeouts must exceed heartbeat intervals (a missing value is the broker's).
    Raises ``OperatingError(INVALID_CONFIG)`` naming the config and the bound.
    """
    normalised: dict[str, str] = {}
    for name in sorted(updates):
        raw = updates[name]
        if name not in GROUP_CONFIG_NAMES:
            raise _invalid(f"Unknown group config name {name!r}")
        if not isinstance(raw, str):
            raise _invalid(f"{name} must be given as a string, got {raw!r}")
        normalised[name] = _validate_group_value(name, raw, broker)
    for kind in ("share", "consumer"):
        session_ms = _numeric_override(normalised, f"{kind}.session.timeout.ms", broker)
        heartbeat_ms = _numeric_override(normalised, f"{kind}.heartbeat.interval.ms", broker)
        if heartbeat_ms >= session_ms:
            raise _invalid(
                f"{kind}.session.timeout.ms ({session_ms}) must be greater than "
                f"{kind}.heartbeat.interval.ms ({heartbeat_ms})"
            )
    return normalised


def _validate_group_value(name: str, raw: str, broker: GroupBrokerConfig) -> str:
    if name == "share.auto.offset.reset":
        kind, _ = parse_auto_offset_reset(raw)
        return kind if kind != "by_duration" else "by_duration:" + raw.strip()[len("by_duration:"):]
    if name == "share.isolation.level":
        value = raw.strip().lower()
        if value == "read_committed":
            raise _invalid(
                "share.isolation.level=read_committed is not supported: shoal has no "
                "transactions; use read_uncommitted"
            )
        if value != "read_uncommitted":
            raise _invalid(f"share.isolation.level must be read_uncommitted, got {raw!r}")
        return value
    if name == "share.renew.acknowledge.enable":
        return "true" if _parse_bool(name, raw) else "false"
    default_field, min_field, max_field = _GROUP_BOUNDED[name]
    value = _parse_int(name, raw)
    low, high = getattr(broker, min_field), getattr(broker, max_field)
    if value < low:
        raise _invalid(f"{name} must be at least {low} ({config_name(min_field)}), got {value}")
    if value > high:
        raise _invalid(f"{name} must be at most {high} ({config_name(max_field)}), got {value}")
    return str(value)


def _numeric_override(configs: Mapping[str, str], name: str, broker: GroupBrokerConfig) -> int:
    """A numeric group setting in force: the override re-capped to the broker's
    current bounds, or the broker default when there is no override."""
    default_field, min_field, max_field = _GROUP_BOUNDED[name]
    raw = configs.get(name)
    if raw is None:
        return getattr(broker, default_field)
    value = _parse_int(name, raw)
    return max(getattr(broker, min_field), min(getattr(broker, max_field), value))


@dataclass(frozen=True)
class EffectiveShareSettings:
    """The settings in force for one share group (overrides over broker defaults).

    The first four fields are what a share partition needs
    (``SharePartitionSettings``); the shell copies them across.
    """

    record_lock_duration_ms: int
    delivery_count_limit: int
    partition_max_record_locks: int
    renew_acknowledge_enable: bool
    session_timeout_ms: int
    heartbeat_interval_ms: int
    auto_offset_reset: tuple[AutoOffsetResetKind, int | None] = field(default=("latest", None))


@dataclass(frozen=True)
class EffectiveConsumerSettings:
    """The settings in force for one consumer group."""

    session_timeout_ms: int
    heartbeat_interval_ms: int


def effective_share_settings(
    group_configs: Mapping[str, str], broker: GroupBrokerConfig
) -> EffectiveShareSettings:
    """Evaluates a share group's stored overrides against the current broker config."""
    reset_raw = group_configs.get("share.auto.offset.reset")
    renew_raw = group_configs.get("share.renew.acknowledge.enable")
    session_ms = _numeric_override(group_configs, "share.session.timeout.ms", broker)
    heartbeat_ms = _numeric_override(group_configs, "share.heartbeat.interval.ms", broker)
    return EffectiveShareSettings(
        record_lock_duration_ms=_numeric_override(group_configs, "share.record.lock.duration.ms", broker),
        delivery_count_limit=_numeric_override(group_configs, "share.delivery.count.limit", broker),
        partition_max_record_locks=_numeric_override(
            group_configs, "share.partition.max.record.locks", broker
        ),
        renew_acknowledge_enable=True if renew_raw is None else _parse_bool(
            "share.renew.acknowledge.enable", renew_raw
        ),
        session_timeout_ms=session_ms,
        # Re-capping may have pushed the heartbeat interval up to the session
        # timeout; a member told to heartbeat no sooner than it expires would be
        # removed, so keep the interval below the timeout.
        heartbeat_interval_ms=min(heartbeat_ms, max(1, session_ms - 1)),
        auto_offset_reset=("latest", None) if reset_raw is None else parse_auto_offset_reset(reset_raw),
    )


def effective_consumer_settings(
    group_configs: Mapping[str, str], broker: GroupBrokerConfig
) -> EffectiveConsumerSettings:
    """Evaluates a consumer group's stored overrides against the current broker config."""
    session_ms = _numeric_override(group_configs, "consumer.session.timeout.ms", broker)
    heartbeat_ms = _numeric_override(group_configs, "consumer.heartbeat.interval.ms", broker)
    return EffectiveConsumerSettings(
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=min(heartbeat_ms, max(1, session_ms - 1)),
    )
