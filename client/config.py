"""Client configuration: Kafka's config names and defaults, validated up front.

Each client takes a plain ``dict`` with Kafka's names (``bootstrap.servers``,
``acks``, ``group.id``, ...). :func:`parse_config` checks it against the schema
of that client kind and returns a :class:`ClientConfig` of normalised values;
every problem is a :class:`~client.errors.ConfigError` that names the config:

* an unknown name (a typo should fail loudly, not be ignored);
* a name Kafka refuses for this client (``auto.offset.reset`` on a share
  consumer: for share groups it is the *group* config ``share.auto.offset.reset``);
* a value of the wrong type or out of range;
* a bad combination (``enable.idempotence`` with ``acks`` other than all, or
  more than 5 requests in flight).

Defaults follow Kafka except where a Python client is better served otherwise,
and then the reason is written next to the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from client.errors import ConfigError

Serializer = Callable[[Any], bytes | None]
Deserializer = Callable[[bytes | None], Any]


@dataclass(frozen=True)
class Setting:
    """One config: its name, how to parse a value, its default, and its bounds."""

    name: str
    kind: str  # "str", "int", "bool", "choice", "callable", "list"
    default: Any
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()


def _parse(setting: Setting, raw: Any) -> Any:
    name = setting.name
    if setting.kind == "int":
        if isinstance(raw, bool):
            raise ConfigError(f"{name} must be an integer, got {raw!r}")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if setting.minimum is not None and value < setting.minimum:
            raise ConfigError(f"{name} must be >= {setting.minimum}, got {value}")
        if setting.maximum is not None and value > setting.maximum:
            raise ConfigError(f"{name} must be <= {setting.maximum}, got {value}")
        return value
    if setting.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if setting.kind == "choice":
        value = str(raw).lower()
        if value not in setting.choices:
            raise ConfigError(f"{name} must be one of {', '.join(setting.choices)}; got {raw!r}")
        return value
    if setting.kind == "callable":
        if raw is not None and not callable(raw):
            raise ConfigError(f"{name} must be a callable, got {type(raw).__name__}")
        return raw
    if setting.kind == "list":
        if isinstance(raw, str):
            items = [x.strip() for x in raw.split(",") if x.strip()]
        elif isinstance(raw, (list, tuple)):
            items = [str(x).strip() for x in raw]
        else:
            raise ConfigError(f"{name} must be a comma-separated string or a list, got {raw!r}")
        if not items:
            raise ConfigError(f"{name} must not be empty")
        return items
    if not isinstance(raw, str):
        raise ConfigError(f"{name} must be a string, got {raw!r}")
    return raw


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


_COMMON = (
    Setting("bootstrap.servers", "list", None),
    Setting("client.id", "str", "shoal-python"),
    Setting("request.timeout.ms", "int", 30000, minimum=1),
    Setting("retry.backoff.ms", "int", 100, minimum=0),
    Setting("retry.backoff.max.ms", "int", 1000, minimum=0),
    Setting("metadata.max.age.ms", "int", 300000, minimum=0),
)

_FETCH = (
    Setting("fetch.max.wait.ms", "int", 500, minimum=0),
    Setting("fetch.min.bytes", "int", 1, minimum=0),
    Setting("fetch.max.bytes", "int", 52428800, minimum=0),
    Setting("max.partition.fetch.bytes", "int", 1048576, minimum=0),
    Setting("max.poll.records", "int", 500, minimum=1),
    Setting("check.crcs", "bool", True),
    Setting("key.deserializer", "callable", None),
    Setting("value.deserializer", "callable", None),
    Setting("group.id", "str", None),
)

PRODUCER_SETTINGS = _settings(
    *_COMMON,
    Setting("acks", "choice", "all", choices=("0", "1", "all", "-1")),
    Setting("linger.ms", "int", 5, minimum=0),
    # Kafka's default is 16384. A Python producer pays per batch (a build, a
    # CRC, an RPC), not per byte, so bigger batches buy throughput; 64 KiB
    # keeps one produce request well inside the ~100-256 KB sweet spot that
    # dependencies-notes.md measured for gRPC messages.
    Setting("batch.size", "int", 65536, minimum=1),
    Setting("delivery.timeout.ms", "int", 120000, minimum=1),
    Setting("retries", "int", 2147483647, minimum=0),
    Setting("max.request.size", "int", 1048576, minimum=1),
    Setting("buffer.memory", "int", 33554432, minimum=1),
    Setting("max.block.ms", "int", 60000, minimum=0),
    Setting("compression.type", "choice", "none", choices=("none", "zstd", "lz4")),
    Setting("enable.idempotence", "bool", True),
    Setting("max.in.flight.requests.per.connection", "int", 5, minimum=1),
    Setting("key.serializer", "callable", None),
    Setting("value.serializer", "callable", None),
    Setting("partitioner", "callable", None),
    Setting("metrics.port", "int", None, minimum=0, maximum=65535),
)

CONSUMER_SETTINGS = _settings(
    *_COMMON,
    *_FETCH,
    Setting("auto.offset.reset", "choice", "latest", choices=("earliest", "latest", "none")),
    Setting("enable.auto.commit", "bool", True),
    Setting("auto.commit.interval.ms", "int", 5000, minimum=0),
    Setting("session.timeout.ms", "int", 45000, minimum=1),
    Setting("heartbeat.interval.ms", "int", 3000, minimum=1),
    Setting("isolation.level", "choice", "read_uncommitted", choices=("read_uncommitted",)),
)

SHARE_CONSUMER_SETTINGS = _settings(
    *_COMMON,
    *_FETCH,
    Setting("share.acknowledgement.mode", "choice", "implicit", choices=("implicit", "explicit")),
    Setting("share.acquire.mode", "choice", "batch_optimized", choices=("batch_optimized", "record_limit")),
    Setting("max.poll.interval.ms", "int", 300000, minimum=1),
    Setting("metrics.port", "int", None, minimum=0, maximum=65535),
)

ADMIN_SETTINGS = _settings(*_COMMON)

#: Configs a share consumer refuses, with the reason shown to the user
#: (Kafka's ShareConsumerConfig throws for the same names).
SHARE_CONSUMER_REFUSED: dict[str, str] = {
    "auto.offset.reset": "share groups use the group config share.auto.offset.reset (shoal groups config G --set share.auto.offset.reset=earliest)",
    "enable.auto.commit": "share consumers acknowledge records instead of committing offsets",
    "auto.commit.interval.ms": "share consumers acknowledge records instead of committing offsets",
    "group.instance.id": "share groups have no static membership",
    "isolation.level": "share groups use the group config share.isolation.level",
    "partition.assignment.strategy": "share groups are assigned by the broker",
    "interceptor.classes": "not supported by share consumers",
    "session.timeout.ms": "share groups use the group config share.session.timeout.ms",
    "heartbeat.interval.ms": "share groups use the group config share.heartbeat.interval.ms",
    "group.protocol": "share consumers always use the share group protocol",
    "group.remote.assignor": "share groups are assigned by the broker",
}

#: Configs a regular consumer refuses (Kafka's ConsumerConfig does the same).
CONSUMER_REFUSED: dict[str, str] = {
    "share.acknowledgement.mode": "only share consumers acknowledge records (use ShareConsumer)",
    "share.acquire.mode": "only share consumers acquire records (use ShareConsumer)",
}


class ClientConfig(Mapping[str, Any]):
    """Validated config values (every known name present, defaults filled in)."""

    def __init__(self, values: dict[str, Any], user_keys: frozenset[str]) -> None:
        self._values = values
        self.user_keys = user_keys  # what the caller set explicitly

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ClientConfig({self._values!r})"


def parse_config(
    kind: str,
    config: Mapping[str, Any] | None,
    *,
    schema: dict[str, Setting],
    refused: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Validate ``config`` for a client ``kind`` ("producer", "consumer", ...)."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{kind} config must be a dict of Kafka config names, got {type(config).__name__}")
    refused = refused or {}
    values: dict[str, Any] = {}
    for name, raw in config.items():
        if name in refused:
            raise ConfigError(f"{name} is not supported by a {kind}: {refused[name]}")
        setting = schema.get(name)
        if setting is None:
            raise ConfigError(f"unknown {kind} config {name!r}")
        values[name] = _parse(setting, raw)
    for name, setting in schema.items():
        values.setdefault(name, setting.default)
    if not values.get("bootstrap.servers"):
        raise ConfigError(f"bootstrap.servers is required (host:port[,host:port...]) for a {kind}")
    for address in values["bootstrap.servers"]:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap.servers entry {address!r} is not host:port")
    if values["retry.backoff.max.ms"] < values["retry.backoff.ms"]:
        values["retry.backoff.max.ms"] = values["retry.backoff.ms"]
    return ClientConfig(values, frozenset(config))


def producer_config(config: Mapping[str, Any] | None) -> ClientConfig:
    cfg = parse_config("producer", config, schema=PRODUCER_SETTINGS, refused=CONSUMER_REFUSED)
    if cfg["enable.idempotence"]:
        # Kafka: idempotence needs acks=all and at most 5 requests in flight.
        # Turned on by default, it yields quietly to an explicit acks/in-flight
        # setting (as Kafka does); asked for explicitly, a conflict is an error.
        explicit = "enable.idempotence" in cfg.user_keys
        conflict = None
        if cfg["acks"] not in ("all", "-1"):
            conflict = f"enable.idempotence requires acks=all, got acks={cfg['acks']}"
        elif cfg["max.in.flight.requests.per.connection"] > 5:
            conflict = "enable.idempotence requires max.in.flight.requests.per.connection <= 5"
        elif cfg["retries"] == 0:
            conflict = "enable.idempotence requires retries > 0"
        if conflict:
            if explicit:
                raise ConfigError(conflict)
            cfg._values["enable.idempotence"] = False
    if cfg["delivery.timeout.ms"] < cfg["linger.ms"] + cfg["request.timeout.ms"]:
        raise ConfigError(
            "delivery.timeout.ms should be equal to or larger than linger.ms + request.timeout.ms "
            f"({cfg['delivery.timeout.ms']} < {cfg['linger.ms']} + {cfg['request.timeout.ms']})"
        )
    return cfg


def consumer_config(config: Mapping[str, Any] | None) -> ClientConfig:
    cfg = parse_config("consumer", config, schema=CONSUMER_SETTINGS, refused=CONSUMER_REFUSED)
    if cfg["heartbeat.interval.ms"] >= cfg["session.timeout.ms"]:
        raise ConfigError("heartbeat.interval.ms must be lower than session.timeout.ms")
    return cfg


def share_consumer_config(config: Mapping[str, Any] | None) -> ClientConfig:
    cfg = parse_config("share consumer", config, schema=SHARE_CONSUMER_SETTINGS, refused=SHARE_CONSUMER_REFUSED)
    if not cfg["group.id"]:
        raise ConfigError("group.id is required for a share consumer (the share group to join)")
    return cfg


def admin_config(config: Mapping[str, Any] | None) -> ClientConfig:
    return parse_config("admin client", config, schema=ADMIN_SETTINGS, refused={})


def default_serializer(value: Any) -> bytes | None:
    """bytes as is, str as UTF-8, None stays None (a null key or tombstone value)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(
        f"cannot serialize {type(value).__name__}: pass bytes or str, or set key.serializer/value.serializer"
    )


def default_deserializer(data: bytes | None) -> Any:
    """Records come back as bytes unless a deserializer is configured."""
    return data
