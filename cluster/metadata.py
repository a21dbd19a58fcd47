"""The replicated cluster-metadata state machine (pure: no clock, no I/O).

Rules
-----
1. ``MetadataState.apply(command)`` is the only way metadata changes. It runs
   on every node, in log order, so it is deterministic: no clock, no
   randomness, no I/O, no iteration over unordered sets. The active controller
   stamps times, topic ids and expected epochs into the command before it
   proposes it.
2. ``apply`` never raises for a bad command: an expected refusal returns a
   ``Rejected(code, message)`` and leaves the state unchanged (a command is
   checked completely before anything is replaced). An exception inside
   pysyncobj's tick thread would make it re-apply the same log entry forever.
   A broken invariant is an ``AssertionError``: the node's metadata replica is
   wrong and the node must stop (see ``cluster.raft``).
3. No unclean leader election, enforced here and not only in the controller:
   an election may only shrink the ISR and must pick the leader from the new
   ISR. The ISR grows only through ``AlterPartition`` from the partition
   leader, which knows that the follower caught up. When no ISR member is
   live the partition goes offline (leader -1) and keeps its ISR: every ISR
   member holds every committed record, so any of them is a legal leader
   later, and nobody else ever is.
4. Compare-and-set everywhere a decision was taken on a possibly stale view:
   ``AlterPartition`` applies only if the leader, leader epoch and partition
   epoch all match; ``ElectLeaders`` only if the partition epoch matches;
   ``FenceBroker``/``UnfenceBroker`` only for the current broker epoch. A
   command computed by a deposed controller, or retried after a timeout, is
   therefore refused instead of applied twice. Commands may also carry the
   topic id, so that a command aimed at a deleted topic never applies to a
   new topic of the same name.
5. Epochs: ``leader_epoch`` increases whenever the partition leader changes
   (including going offline and coming back); ``partition_epoch`` increases on
   every change of leader or ISR. A broker's epoch is the metadata version of
   its registration, so it increases with every new incarnation.
6. ``version`` increases by one for every command that changed the state, and
   only then; a node can compare versions to know whether it is behind.
7. Every collection is bounded (``MAX_*`` below); the metadata is snapshotted
   by pickling it in pysyncobj, so it must stay small.

Theory of operation
-------------------
The state is an immutable ``MetadataImage`` (as in Kafka's KRaft
``MetadataImage``). ``apply`` builds a new image with copied dicts and
swaps one reference. Readers in other threads (gRPC handlers, the node's event
loop) take ``state.image`` once and read a consistent snapshot without locks,
while pysyncobj's tick thread applies the next command.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, Sequence, Union

from cluster.topic_config import (
    TopicConfig,
    topic_name_collision_key,
    validate_min_insync_replicas,
    validate_topic_configs,
    validate_topic_name,
)
from coordinator.errors import ErrorCode, OperatingError

NO_LEADER = -1

#: Bounds on the replicated metadata. Snapshots pickle the whole image in
#: pysyncobj's tick thread (about 3.4 ms per 1 000 entries measured), so the
#: totals stay well below the 10^5 entries where snapshot pauses start to
#: cost elections on a 2-core host.
MAX_BROKERS = 1024
MAX_BROKER_ID = 2**31 - 1
MAX_TOPICS = 10_000
MAX_PARTITIONS_PER_TOPIC = 10_000
MAX_PARTITIONS_TOTAL = 50_000
MAX_HOST_LENGTH = 255
MAX_INCARNATION_ID_LENGTH = 64
MAX_TOPIC_ID_LENGTH = 64
MAX_CONFIGS_PER_TOPIC = 64
#: One ElectLeaders command is one log entry; pysyncobj sends entries above
#: 64 KiB as chunked transmissions, so the controller splits large batches.
MAX_ELECTIONS_PER_COMMAND = 500
#: Kafka hands out producer ids in blocks of 1000; a broker may ask for fewer.
MAX_PRODUCER_ID_BLOCK = 10_000
MAX_PRODUCER_ID = 2**63 - 1


# ---------------------------------------------------------------------------
# Records of the image


@dataclass(frozen=True, slots=True)
class BrokerRegistration:
    broker_id: int
    host: str
    port: int  # the node's gRPC listener
    incarnation_id: str  # new for every process start
    broker_epoch: int  # metadata version of the registration
    fenced: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PartitionRegistration:
    topic: str
    partition: int
    replicas: tuple[int, ...]  # ordered; replicas[0] is the preferred leader
    isr: tuple[int, ...]  # in replica order
    leader: int  # NO_LEADER when offline
    leader_epoch: int
    partition_epoch: int

    @property
    def preferred_leader(self) -> int:
        return self.replicas[0]

    @property
    def offline(self) -> bool:
        return self.leader == NO_LEADER


@dataclass(frozen=True, slots=True)
class TopicRegistration:
    topic_id: str
    name: str
    configs: dict[str, str]  # overrides only, normalised; never mutated
    config: TopicConfig  # overrides with defaults filled in
    internal: bool
    partitions: tuple[PartitionRegistration, ...]

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].replicas)


@dataclass(frozen=True, slots=True)
class ProducerIdBlock:
    first_id: int
    count: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The result of a refused command. The state is unchanged."""

    code: ErrorCode
    message: str

    def to_error(self) -> OperatingError:
        return OperatingError(self.code, self.message)


# ---------------------------------------------------------------------------
# Commands: small, frozen, picklable. Sequences are stored as tuples so that a
# command cannot change after it was proposed.


def _tuple_of_ints(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(values)


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    broker_id: int
    host: str
    port: int
    incarnation_id: str


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class FenceBroker:
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class CreateTopic:
    name: str
    topic_id: str
    replica_assignment: tuple[tuple[int, ...], ...]
    configs: dict[str, str] = field(default_factory=dict)
    internal: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "replica_assignment", tuple(_tuple_of_ints(r) for r in self.replica_assignment))
        object.__setattr__(self, "configs", dict(self.configs))


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    name: str


@dataclass(frozen=True, slots=True)
class AlterTopicConfigs:
    """Set configs; a value of None removes the override (back to default)."""

    name: str
    configs: dict[str, str | None]

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", dict(self.configs))


@dataclass(frozen=True, slots=True)
class PartitionElection:
    topic: str
    partition: int
    new_leader: int  # NO_LEADER to take the partition offline
    new_isr: tuple[int, ...]
    expected_partition_epoch: int
    topic_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "new_isr", _tuple_of_ints(self.new_isr))


@dataclass(frozen=True, slots=True)
class ElectLeaders:
    """Controller-driven leader and ISR changes, each compare-and-set on its
    partition epoch and applied or refused on its own."""

    elections: tuple[PartitionElection, ...]

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "elections",
            tuple(e if isinstance(e, PartitionElection) else PartitionElection(*e) for e in self.elections),
        )


@dataclass(frozen=True, slots=True)
class AlterPartition:
    """An ISR change requested by the partition leader."""

    topic: str
    partition: int
    leader_id: int
    leader_epoch: int
    partition_epoch: int
    new_isr: tuple[int, ...]
    topic_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "new_isr", _tuple_of_ints(self.new_isr))


@dataclass(frozen=True, slots=True)
class AllocateProducerIds:
    broker_id: int
    count: int


MetadataCommand = Union[
    RegisterBroker,
    UnfenceBroker,
    FenceBroker,
    CreateTopic,
    DeleteTopic,
    AlterTopicConfigs,
    ElectLeaders,
    AlterPartition,
    AllocateProducerIds,
]


# ---------------------------------------------------------------------------
# The image and its read helpers


@dataclass(frozen=True, slots=True)
class MetadataImage:
    """One immutable version of the cluster metadata. Never mutate its dicts."""

    version: int
    brokers: dict[int, BrokerRegistration]
    topics_by_name: dict[str, TopicRegistration]
    topic_names_by_id: dict[str, str]
    next_producer_id: int
    total_partitions: int

    @classmethod
    def empty(cls) -> MetadataImage:
        return cls(
            version=0, brokers={}, topics_by_name={}, topic_names_by_id={}, next_producer_id=0, total_partitions=0
        )

    def broker(self, broker_id: int) -> BrokerRegistration | None:
        return self.brokers.get(broker_id)

    def brokers_list(self) -> list[BrokerRegistration]:
        return [self.brokers[b] for b in sorted(self.brokers)]

    def live_broker_ids(self) -> list[int]:
        """Registered, unfenced brokers, by id."""
        return sorted(b for b, reg in self.brokers.items() if not reg.fenced)

    def is_live(self, broker_id: int) -> bool:
        registration = self.brokers.get(broker_id)
        return registration is not None and not registration.fenced

    def topics(self) -> list[TopicRegistration]:
        return [self.topics_by_name[name] for name in sorted(self.topics_by_name)]

    def topic_by_name(self, name: str) -> TopicRegistration | None:
        return self.topics_by_name.get(name)

    def topic_by_id(self, topic_id: str) -> TopicRegistration | None:
        name = self.topic_names_by_id.get(topic_id)
        return None if name is None else self.topics_by_name[name]

    def partition(self, topic: str, partition: int) -> PartitionRegistration:
        """The partition's registration; raises UNKNOWN_TOPIC_OR_PARTITION."""
        registration = self.topics_by_name.get(topic)
        if registration is None:
            raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist")
        if not 0 <= partition < len(registration.partitions):
            raise OperatingError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {topic!r} has partitions 0..{len(registration.partitions) - 1}, not {partition}",
            )
        return registration.partitions[partition]

    def all_partitions(self) -> Iterator[PartitionRegistration]:
        for name in sorted(self.topics_by_name):
            yield from self.topics_by_name[name].partitions

    def partitions_led_by(self, broker_id: int) -> list[PartitionRegistration]:
        return [p for p in self.all_partitions() if p.leader == broker_id]

    def partitions_replicated_on(self, broker_id: int) -> list[PartitionRegistration]:
        return [p for p in self.all_partitions() if broker_id in p.replicas]

    def replica_counts(self) -> dict[int, int]:
        """Replicas hosted per registered broker (placement load)."""
        counts = {b: 0 for b in self.brokers}
        for p in self.all_partitions():
            for r in p.replicas:
                counts[r] = counts.get(r, 0) + 1
        return counts


# ---------------------------------------------------------------------------
# The state machine


def _require_int(value: object, name: str, low: int, high: int) -> int:
    # bool is an int subclass; a True broker id is a bug in the proposer.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _require_str(value: object, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST, f"{name} must be a non-empty string of at most {max_length} characters"
        )
    return value


def _in_replica_order(members: Sequence[int], replicas: Sequence[int]) -> tuple[int, ...]:
    return tuple(r for r in replicas if r in members)


class MetadataState:
    """The metadata state machine: ``apply(command)`` plus read helpers that
    read the current image (take ``image`` once for several consistent reads)."""

    def __init__(self, image: MetadataImage | None = None) -> None:
        self._image = image if image is not None else MetadataImage.empty()

    @property
    def image(self) -> MetadataImage:
        return self._image

    @property
    def version(self) -> int:
        return self._image.version

    def load_image(self, image: MetadataImage) -> None:
        """Replace the whole state (a snapshot was installed)."""
        assert isinstance(image, MetadataImage)
        self._image = image

    # Read helpers (each reads one image).
    def partition(self, topic: str, partition: int) -> PartitionRegistration:
        return self._image.partition(topic, partition)

    def topics(self) -> list[TopicRegistration]:
        return self._image.topics()

    def topic_by_name(self, name: str) -> TopicRegistration | None:
        return self._image.topic_by_name(name)

    def topic_by_id(self, topic_id: str) -> TopicRegistration | None:
        return self._image.topic_by_id(topic_id)

    def broker(self, broker_id: int) -> BrokerRegistration | None:
        return self._image.broker(broker_id)

    def brokers(self) -> list[BrokerRegistration]:
        return self._image.brokers_list()

    def live_brokers(self) -> list[int]:
        return self._image.live_broker_ids()

    def partitions_led_by(self, broker_id: int) -> list[PartitionRegistration]:
        return self._image.partitions_led_by(broker_id)

    def partitions_replicated_on(self, broker_id: int) -> list[PartitionRegistration]:
        return self._image.partitions_replicated_on(broker_id)

    # The single entry point for changes.
    def apply(self, command: MetadataCommand) -> object:
        """Apply one command; return its result or a ``Rejected``."""
        handler = _HANDLERS.get(type(command))
        # An unknown command type means this node runs older code than the
        # proposer; applying nothing would silently diverge from the others.
        assert handler is not None, f"unknown metadata command {type(command).__name__}"
        try:
            new_image, result = handler(self._image, command)
        except OperatingError as error:
            return Rejected(error.code, error.message)
        if new_image is not self._image:
            assert new_image.version == self._image.version + 1
            self._image = new_image
        return result


# Each handler takes (image, command) and returns (new image, result). It
# returns the same image object when nothing changed and raises
# OperatingError before building anything when it refuses.


def _bumped(image: MetadataImage, **changes: object) -> MetadataImage:
    return replace(image, version=image.version + 1, **changes)


def _register_broker(image: MetadataImage, command: RegisterBroker) -> tuple[MetadataImage, int]:
    broker_id = _require_int(command.broker_id, "broker_id", 0, MAX_BROKER_ID)
    host = _require_str(command.host, "host", MAX_HOST_LENGTH)
    port = _require_int(command.port, "port", 1, 65535)
    incarnation_id = _require_str(command.incarnation_id, "incarnation_id", MAX_INCARNATION_ID_LENGTH)
    for other in image.brokers.values():
        if other.broker_id != broker_id and other.host == host and other.port == port:
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"broker {broker_id} registers {host}:{port}, which broker {other.broker_id} already uses; "
                "each node needs its own listener",
            )
    existing = image.brokers.get(broker_id)
    if existing is not None and existing.incarnation_id == incarnation_id:
        # A retried registration of the same process: idempotent.
        if (existing.host, existing.port) != (host, port):
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"broker {broker_id} incarnation {incarnation_id} already registered {existing.address}; "
                "a running process cannot change its listener",
            )
        return image, existing.broker_epoch
    if existing is None and len(image.brokers) >= MAX_BROKERS:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"cluster already has the maximum of {MAX_BROKERS} brokers")
    # A new incarnation lost whatever the previous process held in memory, so
    # it starts fenced and is unfenced once it has caught up with metadata.
    epoch = image.version + 1
    registration = BrokerRegistration(broker_id, host, port, incarnation_id, epoch, fenced=True)
    brokers = dict(image.brokers)
    brokers[broker_id] = registration
    return _bumped(image, brokers=brokers), epoch


def _current_broker(image: MetadataImage, broker_id: int, broker_epoch: int) -> BrokerRegistration:
    registration = image.brokers.get(broker_id)
    if registration is None:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"broker {broker_id} is not registered")
    if registration.broker_epoch != broker_epoch:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST,
            f"stale broker epoch {broker_epoch} for broker {broker_id}; its current epoch is "
            f"{registration.broker_epoch} (the broker registered again)",
        )
    return registration


def _set_fenced(image: MetadataImage, broker_id: int, broker_epoch: int, fenced: bool) -> tuple[MetadataImage, BrokerRegistration]:
    registration = _current_broker(image, broker_id, broker_epoch)
    if registration.fenced == fenced:
        return image, registration
    updated = replace(registration, fenced=fenced)
    brokers = dict(image.brokers)
    brokers[broker_id] = updated
    return _bumped(image, brokers=brokers), updated


def _unfence_broker(image: MetadataImage, command: UnfenceBroker) -> tuple[MetadataImage, BrokerRegistration]:
    return _set_fenced(image, command.broker_id, command.broker_epoch, fenced=False)


def _fence_broker(image: MetadataImage, command: FenceBroker) -> tuple[MetadataImage, BrokerRegistration]:
    # Fencing changes only the broker; the controller follows with the
    # elections that move its leaderships (cluster.controller.on_broker_fenced).
    return _set_fenced(image, command.broker_id, command.broker_epoch, fenced=True)


def _create_topic(image: MetadataImage, command: CreateTopic) -> tuple[MetadataImage, TopicRegistration]:
    name = validate_topic_name(command.name, allow_internal=bool(command.internal))
    if command.internal and not name.startswith("__"):
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"internal topic {name!r} must start with '__'")
    topic_id = _require_str(command.topic_id, "topic_id", MAX_TOPIC_ID_LENGTH)
    if name in image.topics_by_name:
        raise OperatingError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
    collision = topic_name_collision_key(name)
    for other in image.topics_by_name:
        if topic_name_collision_key(other) == collision:
            raise OperatingError(
                ErrorCode.INVALID_TOPIC_EXCEPTION,
                f"topic {name!r} collides with existing topic {other!r} ('.' and '_' are the same in metric names)",
            )
    if topic_id in image.topic_names_by_id:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"topic id {topic_id} is already used")
    if len(image.topics_by_name) >= MAX_TOPICS:
        raise OperatingError(ErrorCode.POLICY_VIOLATION, f"the cluster already has the maximum of {MAX_TOPICS} topics")
    assignment = command.replica_assignment
    if not 1 <= len(assignment) <= MAX_PARTITIONS_PER_TOPIC:
        raise OperatingError(
            ErrorCode.INVALID_PARTITIONS, f"a topic needs 1..{MAX_PARTITIONS_PER_TOPIC} partitions, got {len(assignment)}"
        )
    if image.total_partitions + len(assignment) > MAX_PARTITIONS_TOTAL:
        raise OperatingError(
            ErrorCode.POLICY_VIOLATION,
            f"{len(assignment)} more partitions would exceed the cluster limit of {MAX_PARTITIONS_TOTAL} "
            f"(it has {image.total_partitions})",
        )
    replication_factor = len(assignment[0])
    for index, replicas in enumerate(assignment):
        if len(replicas) != replication_factor or replication_factor == 0:
            raise OperatingError(
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                f"every partition needs the same non-zero number of replicas; partition {index} has {len(replicas)}, "
                f"partition 0 has {replication_factor}",
            )
        if len(set(replicas)) != len(replicas):
            raise OperatingError(
                ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"partition {index} lists a broker twice: {list(replicas)}"
            )
        for broker_id in replicas:
            if broker_id not in image.brokers:
                raise OperatingError(
                    ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                    f"partition {index} names broker {broker_id}, which is not registered",
                )
        if not any(image.is_live(b) for b in replicas):
            raise OperatingError(
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                f"partition {index} has no live replica among {list(replicas)}; it could not get a leader",
            )
    if len(command.configs) > MAX_CONFIGS_PER_TOPIC:
        raise OperatingError(ErrorCode.INVALID_CONFIG, f"at most {MAX_CONFIGS_PER_TOPIC} configs per topic")
    configs = validate_topic_configs(command.configs)
    validate_min_insync_replicas(configs, replication_factor)

    partitions = []
    for index, replicas in enumerate(assignment):
        # Every log is empty at creation, so every live replica is in sync; a
        # fenced replica joins the ISR later through AlterPartition.
        isr = tuple(b for b in replicas if image.is_live(b))
        partitions.append(
            PartitionRegistration(
                topic=name,
                partition=index,
                replicas=tuple(replicas),
                isr=isr,
                leader=isr[0],
                leader_epoch=0,
                partition_epoch=0,
            )
        )
    registration = TopicRegistration(
        topic_id=topic_id,
        name=name,
        configs=configs,
        config=TopicConfig.from_mapping(configs),
        internal=bool(command.internal),
        partitions=tuple(partitions),
    )
    topics = dict(image.topics_by_name)
    topics[name] = registration
    ids = dict(image.topic_names_by_id)
    ids[topic_id] = name
    new_image = _bumped(
        image, topics_by_name=topics, topic_names_by_id=ids, total_partitions=image.total_partitions + len(partitions)
    )
    return new_image, registration


def _delete_topic(image: MetadataImage, command: DeleteTopic) -> tuple[MetadataImage, str]:
    registration = image.topics_by_name.get(command.name)
    if registration is None:
        raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {command.name!r} does not exist")
    if registration.internal:
        raise OperatingError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"internal topic {command.name!r} cannot be deleted: it holds group and share state",
        )
    topics = dict(image.topics_by_name)
    del topics[command.name]
    ids = dict(image.topic_names_by_id)
    del ids[registration.topic_id]
    new_image = _bumped(
        image,
        topics_by_name=topics,
        topic_names_by_id=ids,
        total_partitions=image.total_partitions - len(registration.partitions),
    )
    return new_image, registration.topic_id


def _alter_topic_configs(image: MetadataImage, command: AlterTopicConfigs) -> tuple[MetadataImage, TopicRegistration]:
    registration = image.topics_by_name.get(command.name)
    if registration is None:
        raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {command.name!r} does not exist")
    merged = dict(registration.configs)
    for name, value in command.configs.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    if len(merged) > MAX_CONFIGS_PER_TOPIC:
        raise OperatingError(ErrorCode.INVALID_CONFIG, f"at most {MAX_CONFIGS_PER_TOPIC} configs per topic")
    configs = validate_topic_configs(merged)
    validate_min_insync_replicas(configs, registration.replication_factor)
    if configs == registration.configs:
        return image, registration
    updated = replace(registration, configs=configs, config=TopicConfig.from_mapping(configs))
    topics = dict(image.topics_by_name)
    topics[command.name] = updated
    return _bumped(image, topics_by_name=topics), updated


def _locate(image: MetadataImage, topic: str, partition: int, topic_id: str | None) -> PartitionRegistration:
    registration = image.topics_by_name.get(topic)
    if registration is None or (topic_id is not None and registration.topic_id != topic_id):
        raise OperatingError(
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            f"topic {topic!r}" + (f" with id {topic_id}" if topic_id is not None else "") + " does not exist",
        )
    if not isinstance(partition, int) or not 0 <= partition < len(registration.partitions):
        raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} has no partition {partition!r}")
    return registration.partitions[partition]


def _check_isr_shape(current: PartitionRegistration, new_isr: tuple[int, ...]) -> None:
    where = f"{current.topic}-{current.partition}"
    if not new_isr:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"the ISR of {where} cannot be empty")
    if len(set(new_isr)) != len(new_isr):
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"the new ISR of {where} lists a broker twice: {list(new_isr)}")
    outside = [b for b in new_isr if b not in current.replicas]
    if outside:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST,
            f"brokers {outside} are not replicas of {where} (replicas {list(current.replicas)})",
        )


def _with_partition(image: MetadataImage, updated: Mapping[tuple[str, int], PartitionRegistration]) -> MetadataImage:
    topics = dict(image.topics_by_name)
    for name in sorted({topic for topic, _ in updated}):
        registration = topics[name]
        partitions = tuple(updated.get((name, p.partition), p) for p in registration.partitions)
        topics[name] = replace(registration, partitions=partitions)
    return _bumped(image, topics_by_name=topics)


def _elect_one(image: MetadataImage, election: PartitionElection) -> PartitionRegistration:
    current = _locate(image, election.topic, election.partition, election.topic_id)
    where = f"{current.topic}-{current.partition}"
    if election.expected_partition_epoch != current.partition_epoch:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST,
            f"partition epoch mismatch for {where}: the election expected {election.expected_partition_epoch}, "
            f"the partition is at {current.partition_epoch}",
        )
    new_isr = election.new_isr
    _check_isr_shape(current, new_isr)
    # Rule 3: the controller may only remove members; growth needs the leader.
    added = [b for b in new_isr if b not in current.isr]
    if added:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST,
            f"an election cannot add {added} to the ISR of {where} (ISR {list(current.isr)}); "
            "only the partition leader adds caught-up replicas",
        )
    leader = election.new_leader
    if leader != NO_LEADER:
        if leader not in new_isr:
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"broker {leader} is not in the new ISR {list(new_isr)} of {where}; shoal never elects an unclean leader",
            )
        if not image.is_live(leader):
            raise OperatingError(
                ErrorCode.INVALID_REQUEST, f"broker {leader} is fenced or unregistered and cannot lead {where}"
            )
    ordered_isr = _in_replica_order(new_isr, current.replicas)
    if leader == current.leader and ordered_isr == current.isr:
        return current
    return replace(
        current,
        isr=ordered_isr,
        leader=leader,
        leader_epoch=current.leader_epoch + (1 if leader != current.leader else 0),
        partition_epoch=current.partition_epoch + 1,
    )


def _elect_leaders(image: MetadataImage, command: ElectLeaders) -> tuple[MetadataImage, tuple[object, ...]]:
    if len(command.elections) > MAX_ELECTIONS_PER_COMMAND:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST,
            f"{len(command.elections)} elections in one command; the limit is {MAX_ELECTIONS_PER_COMMAND}",
        )
    outcomes: list[object] = []
    updated: dict[tuple[str, int], PartitionRegistration] = {}
    for election in command.elections:
        key = (election.topic, election.partition)
        if key in updated:
            outcomes.append(
                Rejected(ErrorCode.INVALID_REQUEST, f"{election.topic}-{election.partition} appears twice in one command")
            )
            continue
        try:
            result = _elect_one(image, election)
        except OperatingError as error:
            outcomes.append(Rejected(error.code, error.message))
            continue
        outcomes.append(result)
        current = image.topics_by_name[election.topic].partitions[election.partition]
        if result is not current:
            updated[key] = result
    if not updated:
        return image, tuple(outcomes)
    return _with_partition(image, updated), tuple(outcomes)


def _alter_partition(image: MetadataImage, command: AlterPartition) -> tuple[MetadataImage, PartitionRegistration]:
    current = _locate(image, command.topic, command.partition, command.topic_id)
    where = f"{current.topic}-{current.partition}"
    if command.leader_id != current.leader:
        raise OperatingError(
            ErrorCode.NOT_LEADER_OR_FOLLOWER,
            f"broker {command.leader_id} is not the leader of {where}; the leader is {current.leader}",
        )
    if command.leader_epoch != current.leader_epoch:
        raise OperatingError(
            ErrorCode.FENCED_LEADER_EPOCH,
            f"leader epoch {command.leader_epoch} of {where} is not current; the current leader epoch is "
            f"{current.leader_epoch}",
        )
    if command.partition_epoch != current.partition_epoch:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST,
            f"partition epoch mismatch for {where}: the request carries {command.partition_epoch}, the partition "
            f"is at {current.partition_epoch} (refresh metadata and retry)",
        )
    new_isr = command.new_isr
    _check_isr_shape(current, new_isr)
    if current.leader not in new_isr:
        raise OperatingError(
            ErrorCode.INVALID_REQUEST, f"the new ISR {list(new_isr)} of {where} must include its leader {current.leader}"
        )
    for broker_id in new_isr:
        if broker_id not in current.isr and not image.is_live(broker_id):
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"broker {broker_id} is fenced or unregistered and cannot join the ISR of {where}",
            )
    ordered_isr = _in_replica_order(new_isr, current.replicas)
    if ordered_isr == current.isr:
        return image, current
    updated = replace(current, isr=ordered_isr, partition_epoch=current.partition_epoch + 1)
    return _with_partition(image, {(current.topic, current.partition): updated}), updated


def _allocate_producer_ids(image: MetadataImage, command: AllocateProducerIds) -> tuple[MetadataImage, ProducerIdBlock]:
    if command.broker_id not in image.brokers:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"broker {command.broker_id} is not registered")
    count = _require_int(command.count, "count", 1, MAX_PRODUCER_ID_BLOCK)
    first_id = image.next_producer_id
    if first_id + count - 1 > MAX_PRODUCER_ID:
        raise OperatingError(ErrorCode.POLICY_VIOLATION, "the cluster has used up every producer id")
    return _bumped(image, next_producer_id=first_id + count), ProducerIdBlock(first_id, count)


_HANDLERS = {
    RegisterBroker: _register_broker,
    UnfenceBroker: _unfence_broker,
    FenceBroker: _fence_broker,
    CreateTopic: _create_topic,
    DeleteTopic: _delete_topic,
    AlterTopicConfigs: _alter_topic_configs,
    ElectLeaders: _elect_leaders,
    AlterPartition: _alter_partition,
    AllocateProducerIds: _allocate_producer_ids,
}


def as_image(state: MetadataState | MetadataImage) -> MetadataImage:
    """Accept either the live state or one image (controller functions)."""
    return state.image if isinstance(state, MetadataState) else state
