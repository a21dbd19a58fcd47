"""Node configuration: command-line flags, an optional TOML file, broker settings.

Rules
* Precedence: built-in defaults < ``--config FILE.toml`` < command-line flags
  < ``--set key=value`` (repeatable). The TOML file uses the flag names as keys
  (``node_id``, ``listen``, ``data_dir``, ``controller_quorum``,
  ``metrics_port``) and a ``[settings]`` table of broker settings.
* Settings use Kafka's names. The ones this node process owns are typed and
  range-checked here (`SETTING_SPECS`); settings of the group and share
  services (``group.*``, ``share.*`` except the state-topic partition count)
  pass through as strings, and those services validate them.
* Anything invalid raises `ConfigError`; ``python -m node`` prints it on stderr
  and exits with status 2, before any file or port is touched.

Defaults that differ from Kafka, and why
* ``broker.session.timeout.ms`` = 2000 (Kafka: 9000). A local cluster on one
  box should fail over within a few seconds; the broker heartbeats every
  ``broker.heartbeat.interval.ms`` = 250 (Kafka: 2000), so 2000 ms still
  tolerates seven lost heartbeats, i.e. GC or GIL pauses of well over a second.
* ``replica.lag.time.max.ms`` = 3000 (Kafka: 30000) for the same reason: a
  dead or paused follower leaves the ISR within seconds so that acks=all
  producers are unblocked quickly.
* Internal topics have `DEFAULT_INTERNAL_TOPIC_PARTITIONS` partitions (Kafka: 50);
  see node/interfaces.py.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from node.interfaces import DEFAULT_INTERNAL_TOPIC_PARTITIONS


class ConfigError(Exception):
    """A flag, file or setting is invalid; the message says which and why."""


@dataclass(frozen=True)
class SettingSpec:
    default: Any
    parse: Callable[[str], Any]
    check: Callable[[Any], bool]
    rule: str  # what `check` requires, for the error message


def _int(text: str) -> int:
    return int(str(text).strip())


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _positive(value: int) -> bool:
    return value > 0


#: Settings owned by the node process (data plane, controller, replication).
SETTING_SPECS: dict[str, SettingSpec] = {
    "broker.session.timeout.ms": SettingSpec(2000, _int, lambda v: 500 <= v <= 600_000, "500..600000"),
    "broker.heartbeat.interval.ms": SettingSpec(250, _int, lambda v: 50 <= v <= 60_000, "50..60000"),
    "default.replication.factor": SettingSpec(-1, _int, lambda v: v == -1 or 1 <= v <= 16, "-1 (min(3, live brokers)) or 1..16"),
    "num.partitions": SettingSpec(1, _int, lambda v: 1 <= v <= 10_000, "1..10000"),
    "min.insync.replicas": SettingSpec(1, _int, lambda v: 1 <= v <= 16, "1..16"),
    "replica.lag.time.max.ms": SettingSpec(3000, _int, lambda v: 100 <= v <= 600_000, "100..600000"),
    "replica.fetch.max.bytes": SettingSpec(1 << 20, _int, lambda v: 1024 <= v <= 64 << 20, "1024..67108864"),
    "replica.fetch.wait.max.ms": SettingSpec(500, _int, lambda v: 1 <= v <= 30_000, "1..30000"),
    # Broker defaults for new topics (stamped into the topic's configs at
    # creation when set explicitly; otherwise the topic defaults apply).
    "message.max.bytes": SettingSpec(1 << 20, _int, lambda v: 64 <= v <= 32 << 20, "64..33554432"),
    "auto.leader.rebalance.enable": SettingSpec(True, _bool, lambda v: True, "true or false"),
    "leader.imbalance.check.interval.seconds": SettingSpec(30, _int, lambda v: 1 <= v <= 3600, "1..3600"),
    "controlled.shutdown.timeout.ms": SettingSpec(5000, _int, lambda v: 0 <= v <= 300_000, "0..300000"),
    "offsets.topic.num.partitions": SettingSpec(DEFAULT_INTERNAL_TOPIC_PARTITIONS, _int, lambda v: 1 <= v <= 1000, "1..1000"),
    "share.coordinator.state.topic.num.partitions": SettingSpec(DEFAULT_INTERNAL_TOPIC_PARTITIONS, _int, lambda v: 1 <= v <= 1000, "1..1000"),
    "log.retention.check.interval.ms": SettingSpec(30_000, _int, lambda v: 100 <= v <= 3_600_000, "100..3600000"),
    # Metadata proposals one node keeps waiting at once (cluster/raft.py caps
    # them too): bursts of thousands destabilised the quorum on two cores.
    "controller.max.inflight.commands": SettingSpec(64, _int, lambda v: 1 <= v <= 1000, "1..1000"),
    "grpc.max.message.bytes": SettingSpec(64 << 20, _int, lambda v: 1 << 20 <= v <= 512 << 20, "1048576..536870912"),
}

#: Prefixes of settings that belong to other services (validated there).
PASS_THROUGH_PREFIXES = ("group.", "share.", "metrics.")


@dataclass(frozen=True)
class BrokerSettings:
    """Validated broker settings: typed values for the node's own keys plus raw strings."""

    values: dict[str, Any]
    raw: dict[str, str]
    #: Keys the operator set (file or --set), as opposed to defaults.
    explicit: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def parse_settings(raw: dict[str, Any]) -> BrokerSettings:
    values: dict[str, Any] = {key: spec.default for key, spec in SETTING_SPECS.items()}
    raw_strings: dict[str, str] = {}
    for key, text in raw.items():
        if isinstance(text, bool):
            text = "true" if text else "false"
        text = str(text)
        raw_strings[key] = text
        spec = SETTING_SPECS.get(key)
        if spec is None:
            if key.startswith(PASS_THROUGH_PREFIXES):
                values[key] = text
                continue
            raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(sorted(SETTING_SPECS))} and group.*/share.* settings")
        try:
            value = spec.parse(text)
        except ValueError:
            raise ConfigError(f"setting {key}={text!r} is not valid: expected {spec.rule}") from None
        if not spec.check(value):
            raise ConfigError(f"setting {key}={text!r} is out of range: expected {spec.rule}")
        values[key] = value
    if values["broker.heartbeat.interval.ms"] * 2 > values["broker.session.timeout.ms"]:
        raise ConfigError(
            "broker.heartbeat.interval.ms must be at most half of broker.session.timeout.ms "
            f"(got {values['broker.heartbeat.interval.ms']} and {values['broker.session.timeout.ms']})"
        )
    # Every broker setting is handed on as a string too, including defaults, so
    # that other services see the effective value.
    for key, value in values.items():
        if key not in raw_strings:
            raw_strings[key] = str(value).lower() if isinstance(value, bool) else str(value)
    explicit = frozenset(raw)
    return BrokerSettings(values=values, raw=raw_strings, explicit=explicit)


@dataclass(frozen=True)
class QuorumMember:
    node_id: int
    host: str
    raft_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.raft_port}"


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    listen_host: str
    listen_port: int
    data_dir: Path
    controller_quorum: tuple[QuorumMember, ...]
    metrics_port: int | None
    settings: BrokerSettings = field(default_factory=lambda: parse_settings({}))

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def raft_member(self) -> QuorumMember | None:
        """This node's quorum entry; None for a node that only observes the metadata
        (a non-voting pysyncobj member: it applies the log but never votes)."""
        for member in self.controller_quorum:
            if member.node_id == self.node_id:
                return member
        return None


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port_text = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {text!r} must be HOST:PORT, e.g. 127.0.0.1:9092")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {text!r}: port must be 1..65535")
    return host, port


def parse_quorum(text: str) -> tuple[QuorumMember, ...]:
    members: list[QuorumMember] = []
    for entry in [part.strip() for part in str(text).split(",") if part.strip()]:
        id_text, sep, address = entry.partition("@")
        if not sep:
            raise ConfigError(f"controller quorum entry {entry!r} must be ID@HOST:RAFTPORT")
        try:
            node_id = int(id_text)
        except ValueError:
            raise ConfigError(f"controller quorum entry {entry!r}: node id {id_text!r} is not a number") from None
        host, port = parse_host_port(address, "controller quorum address")
        members.append(QuorumMember(node_id, host, port))
    if not members:
        raise ConfigError("--controller-quorum is empty: give ID@HOST:RAFTPORT[,...]")
    ids = [m.node_id for m in members]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"controller quorum lists a node id twice: {ids}")
    addresses = [m.address for m in members]
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"controller quorum lists an address twice: {addresses}")
    return tuple(sorted(members, key=lambda m: m.node_id))


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit itself; we want one path
        raise ConfigError(message)


def _argument_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m node", description="Run one shoal node.")
    parser.add_argument("--node-id", type=str)
    parser.add_argument("--listen", type=str, help="HOST:PORT of the gRPC listener")
    parser.add_argument("--data-dir", type=str)
    parser.add_argument("--controller-quorum", type=str, help="ID@HOST:RAFTPORT[,...]")
    parser.add_argument("--metrics-port", type=str)
    parser.add_argument("--config", type=str, help="a TOML file with the same keys and a [settings] table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a broker setting (repeatable)")
    return parser


def parse_args(argv: list[str]) -> NodeConfig:
    args = _argument_parser().parse_args(argv)
    file_values: dict[str, Any] = {}
    raw_settings: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            with path.open("rb") as handle:
                file_values = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        known = {"node_id", "listen", "data_dir", "controller_quorum", "metrics_port", "settings"}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ConfigError(f"config file {path}: unknown keys {unknown}; known: {sorted(known)}")
        settings_table = file_values.get("settings", {})
        if not isinstance(settings_table, dict):
            raise ConfigError(f"config file {path}: [settings] must be a table")
        raw_settings.update(settings_table)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must be KEY=VALUE")
        raw_settings[key.strip()] = value.strip()

    def pick(flag_value: Any, key: str) -> Any:
        return flag_value if flag_value is not None else file_values.get(key)

    node_id_value = pick(args.node_id, "node_id")
    if node_id_value is None:
        raise ConfigError("--node-id is required")
    try:
        node_id = int(node_id_value)
    except (TypeError, ValueError):
        raise ConfigError(f"--node-id {node_id_value!r} is not a number") from None
    if not 0 <= node_id <= 1_000_000:
        raise ConfigError(f"--node-id {node_id} must be 0..1000000")
    listen = pick(args.listen, "listen")
    if listen is None:
        raise ConfigError("--listen HOST:PORT is required")
    listen_host, listen_port = parse_host_port(listen, "--listen")
    data_dir = pick(args.data_dir, "data_dir")
    if not data_dir:
        raise ConfigError("--data-dir is required")
    quorum_text = pick(args.controller_quorum, "controller_quorum")
    if quorum_text is None:
        raise ConfigError("--controller-quorum ID@HOST:RAFTPORT[,...] is required")
    if isinstance(quorum_text, list):
        quorum_text = ",".join(str(entry) for entry in quorum_text)
    quorum = parse_quorum(quorum_text)
    metrics_value = pick(args.metrics_port, "metrics_port")
    metrics_port: int | None = None
    if metrics_value is not None:
        try:
            metrics_port = int(metrics_value)
        except (TypeError, ValueError):
            raise ConfigError(f"--metrics-port {metrics_value!r} is not a number") from None
        if not 0 <= metrics_port <= 65535:
            raise ConfigError("--metrics-port must be 0..65535")
    settings = parse_settings(raw_settings)
    config = NodeConfig(
        node_id=node_id,
        listen_host=listen_host,
        listen_port=listen_port,
        data_dir=Path(data_dir),
        controller_quorum=quorum,
        metrics_port=metrics_port,
        settings=settings,
    )
    return config
