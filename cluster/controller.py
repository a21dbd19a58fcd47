"""The active controller's decisions, as pure functions of the metadata.

Rules
-----
* Every function here reads a ``MetadataImage`` (or the live
  ``MetadataState``) and returns the commands to propose; none of them
  changes anything. The shell (the node's controller loop) proposes the
  commands through ``cluster.raft.MetadataQuorum`` and stamps nothing else:
  expected partition epochs and broker epochs are already in the commands,
  so a decision taken on a stale view is refused by the state machine
  instead of applied (compare-and-set), and retrying a timed-out proposal is
  harmless.
* Leaders come from the ISR only, in replica order (the first live ISR
  member in ``replicas`` order wins, so leadership returns to the preferred
  replica when it can). A broker that dies leaves the ISR, unless no live
  member would remain: then the partition goes offline with its ISR kept, and
  only a member of that ISR may lead it again (see ``cluster.metadata`` rule
  3).
* Level-triggered: ``reconcile_partitions`` computes every needed change from
  the image alone. A newly active controller runs it first, because the
  previous controller may have died between fencing a broker and moving its
  leaderships. The edge functions (``on_broker_fenced``, ...) are the same
  computation restricted to the partitions an event touched.
* Time arrives as ``now_ms``; ``BrokerLiveness`` is the controller's private
  heartbeat book (not replicated: a new controller starts it afresh and gives
  every live broker a full session timeout of grace).

Internal topics
---------------
``__consumer_offsets`` and ``__share_group_state`` are created once
``min(3, voters)`` brokers are live, with replication factor ``min(3, live
brokers)``, ``min.insync.replicas = min(2, RF)`` and infinite retention (their
coordinators prune with DeleteRecords). Waiting for three brokers rather than
a quorum of voters is deliberate: shoal cannot change a topic's replication
factor later, and an internal topic created with RF 2 on a three-node cluster
would stay one failure away from unavailability forever. The price is that a
brand-new three-node cluster serves no groups until all three nodes have
started once; a one- or two-voter development cluster creates them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from cluster.metadata import (
    MAX_BROKERS,
    MAX_ELECTIONS_PER_COMMAND,
    MAX_PARTITIONS_PER_TOPIC,
    NO_LEADER,
    CreateTopic,
    ElectLeaders,
    FenceBroker,
    MetadataImage,
    MetadataState,
    PartitionElection,
    PartitionRegistration,
    UnfenceBroker,
    as_image,
)
from cluster.topic_config import validate_topic_configs, validate_topic_name
from coordinator.errors import ErrorCode, OperatingError

CONSUMER_OFFSETS_TOPIC = "__consumer_offsets"
SHARE_STATE_TOPIC = "__share_group_state"
INTERNAL_TOPIC_REPLICATION_FACTOR_MAX = 3


# ---------------------------------------------------------------------------
# Placement


def place_replicas(
    brokers: Sequence[int],
    num_partitions: int,
    replication_factor: int,
    existing_load: Mapping[int, int] | None = None,
) -> list[list[int]]:
    """Spread partitions over ``brokers``; the first replica is the leader.

    Like Kafka's rack-unaware assignment, leaders go round-robin over the
    brokers, and followers are taken at a growing offset from the leader so
    that the partitions a broker leads have their followers on different
    brokers (when it dies, its leaderships spread out). Two refinements, both
    deterministic (Kafka starts at a random broker; shoal's core has no
    randomness): the round-robin starts at the least-loaded broker
    (``existing_load``: replicas per broker), and each follower slot goes to
    the least-loaded remaining broker, the offset only breaking ties.

    Properties (tested): every partition gets ``replication_factor`` distinct
    brokers; the new leaderships per broker differ by at most 1; the total
    load spread ends at most ``max(2, initial spread)``.
    """
    live = sorted(set(brokers))
    if len(live) != len(brokers):
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"broker list {list(brokers)} has duplicates")
    if not 1 <= num_partitions <= MAX_PARTITIONS_PER_TOPIC:
        raise OperatingError(
            ErrorCode.INVALID_PARTITIONS, f"number of partitions must be in [1, {MAX_PARTITIONS_PER_TOPIC}], got {num_partitions}"
        )
    if replication_factor < 1:
        raise OperatingError(
            ErrorCode.INVALID_REPLICATION_FACTOR, f"replication factor must be at least 1, got {replication_factor}"
        )
    if replication_factor > len(live):
        raise OperatingError(
            ErrorCode.INVALID_REPLICATION_FACTOR,
            f"replication factor {replication_factor} exceeds the {len(live)} live broker(s) {live}",
        )
    load = dict(existing_load or {})
    order = sorted(live, key=lambda b: (load.get(b, 0), b))
    position = {b: i for i, b in enumerate(order)}
    replica_load = {b: load.get(b, 0) for b in order}
    count = len(order)
    assignment: list[list[int]] = []
    for p in range(num_partitions):
        leader_index = p % count
        leader = order[leader_index]
        # Kafka's "nextReplicaShift": grows by one after each full round so
        # that the same leader gets different followers in the next round.
        shift = p // count

        def follower_key(b: int) -> tuple[int, int]:
            return (replica_load[b], (position[b] - leader_index - 1 - shift) % count)

        followers = sorted((b for b in order if b != leader), key=follower_key)[: replication_factor - 1]
        replicas = [leader, *followers]
        for b in replicas:
            replica_load[b] += 1
        assignment.append(replicas)
    return assignment


def effective_topic_configs(configs: Mapping[str, str], replication_factor: int) -> dict[str, str]:
    """Validated overrides plus the controller's defaults: topics with
    replication factor >= 3 get min.insync.replicas=2 unless the caller chose,
    so that acks=all survives one failure without ever acknowledging a record
    held by one replica only."""
    effective = validate_topic_configs(configs)
    if replication_factor >= 3 and "min.insync.replicas" not in effective:
        effective["min.insync.replicas"] = "2"
    return effective


def plan_create_topic(
    state: MetadataState | MetadataImage,
    name: str,
    topic_id: str,
    num_partitions: int,
    replication_factor: int,
    configs: Mapping[str, str] | None = None,
) -> CreateTopic:
    """The CreateTopic command for an admin request, placed over live brokers.

    Refuses early what the state machine would refuse, so that the admin gets
    the error without a round through the log.
    """
    image = as_image(state)
    validate_topic_name(name)
    if image.topic_by_name(name) is not None:
        raise OperatingError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
    effective = effective_topic_configs(configs or {}, replication_factor)
    assignment = place_replicas(image.live_broker_ids(), num_partitions, replication_factor, image.replica_counts())
    return CreateTopic(name=name, topic_id=topic_id, replica_assignment=assignment, configs=effective, internal=False)


# ---------------------------------------------------------------------------
# Elections


def _target(
    image: MetadataImage, p: PartitionRegistration, dead: frozenset[int], revived: frozenset[int], topic_id: str
) -> PartitionElection | None:
    """The election that makes ``p`` consistent with who is live, or None."""

    def live(b: int) -> bool:
        return b not in dead and (b in revived or image.is_live(b))

    live_isr = tuple(b for b in p.isr if live(b))
    if live_isr:
        new_isr = live_isr
        if p.leader in live_isr:
            new_leader = p.leader
        else:
            # Replica order is preference order; live_isr is in replica order.
            new_leader = live_isr[0]
    else:
        # No live member: offline, ISR kept (every member holds every
        # committed record; removing one would lose a legal future leader).
        new_isr = p.isr
        new_leader = NO_LEADER
    if new_leader == p.leader and new_isr == p.isr:
        return None
    return PartitionElection(p.topic, p.partition, new_leader, new_isr, p.partition_epoch, topic_id)


def _batched(elections: Iterable[PartitionElection]) -> list[ElectLeaders]:
    pending = list(elections)
    return [
        ElectLeaders(tuple(pending[i : i + MAX_ELECTIONS_PER_COMMAND]))
        for i in range(0, len(pending), MAX_ELECTIONS_PER_COMMAND)
    ]


def _plan(
    image: MetadataImage,
    only_broker: int | None,
    dead: frozenset[int] = frozenset(),
    revived: frozenset[int] = frozenset(),
) -> list[ElectLeaders]:
    elections = []
    for topic in image.topics():
        for p in topic.partitions:
            if only_broker is not None and only_broker not in p.replicas:
                continue
            election = _target(image, p, dead, revived, topic.topic_id)
            if election is not None:
                elections.append(election)
    return _batched(elections)


def reconcile_partitions(state: MetadataState | MetadataImage) -> list[ElectLeaders]:
    """Every election needed so that no partition is led by, or keeps in its
    ISR, a fenced broker (except an offline partition's kept ISR), and every
    offline partition with a live ISR member gets a leader."""
    return _plan(as_image(state), only_broker=None)


def on_broker_fenced(state: MetadataState | MetadataImage, broker_id: int) -> list[ElectLeaders]:
    """Move ``broker_id``'s leaderships to the next live ISR member and drop it
    from every ISR it is in, except where it is the last member. Works whether
    or not the FenceBroker command has applied yet."""
    return _plan(as_image(state), only_broker=broker_id, dead=frozenset({broker_id}))


def on_broker_unfenced(state: MetadataState | MetadataImage, broker_id: int) -> list[ElectLeaders]:
    """Give a leader to each offline partition whose kept ISR contains the
    returning broker. (It rejoins other ISRs through AlterPartition once the
    leaders see it caught up.)"""
    image = as_image(state)
    elections = []
    for topic in image.topics():
        for p in topic.partitions:
            if p.offline and broker_id in p.isr:
                election = _target(image, p, frozenset(), frozenset({broker_id}), topic.topic_id)
                if election is not None:
                    elections.append(election)
    return _batched(elections)


def preferred_leader_elections(
    state: MetadataState | MetadataImage, max_elections: int = MAX_ELECTIONS_PER_COMMAND
) -> list[ElectLeaders]:
    """auto.leader.rebalance.enable: move leadership back to the preferred
    replica where it is live and in the ISR. Bounded per call so that one
    rebalance does not restart hundreds of partitions at once."""
    assert max_elections >= 1
    image = as_image(state)
    elections: list[PartitionElection] = []
    for topic in image.topics():
        for p in topic.partitions:
            preferred = p.preferred_leader
            if p.leader != preferred and preferred in p.isr and image.is_live(preferred):
                elections.append(
                    PartitionElection(p.topic, p.partition, preferred, p.isr, p.partition_epoch, topic.topic_id)
                )
                if len(elections) == max_elections:
                    return _batched(elections)
    return _batched(elections)


def controlled_shutdown(state: MetadataState | MetadataImage, broker_id: int) -> list[ElectLeaders | FenceBroker]:
    """A clean stop (SIGTERM): hand over leaderships and leave ISRs first, then
    fence the broker, so that producers move before the process exits instead
    of waiting a session timeout. A partition for which the broker is the only
    live ISR member goes offline, keeping it as the legal next leader."""
    image = as_image(state)
    registration = image.broker(broker_id)
    if registration is None:
        raise OperatingError(ErrorCode.INVALID_REQUEST, f"broker {broker_id} is not registered")
    commands: list[ElectLeaders | FenceBroker] = list(on_broker_fenced(image, broker_id))
    commands.append(FenceBroker(broker_id, registration.broker_epoch))
    return commands


# ---------------------------------------------------------------------------
# Broker liveness


@dataclass(slots=True)
class _Heartbeat:
    broker_epoch: int
    last_heartbeat_ms: int


class BrokerLiveness:
    """The active controller's heartbeat book. Pure: time is ``now_ms``.

    Not replicated on purpose: heartbeats are frequent and only the active
    controller acts on them. A new controller calls ``sync`` with the image,
    which gives every live broker a full session timeout from ``now_ms``
    before it can be fenced (it cannot know when they last heartbeated).
    """

    def __init__(self, max_brokers: int = MAX_BROKERS) -> None:
        assert max_brokers >= 1
        self._max_brokers = max_brokers
        self._heartbeats: dict[int, _Heartbeat] = {}

    def sync(self, state: MetadataState | MetadataImage, now_ms: int) -> None:
        """Track exactly the live brokers of the image; new ones get grace."""
        image = as_image(state)
        live = set(image.live_broker_ids())
        for broker_id in list(self._heartbeats):
            if broker_id not in live:
                del self._heartbeats[broker_id]
        for broker_id in sorted(live):
            epoch = image.brokers[broker_id].broker_epoch
            current = self._heartbeats.get(broker_id)
            if current is None or current.broker_epoch != epoch:
                self._heartbeats[broker_id] = _Heartbeat(epoch, now_ms)

    def record_heartbeat(self, broker_id: int, broker_epoch: int, now_ms: int) -> None:
        """Record a heartbeat the shell already checked against the image.

        Refuses a heartbeat from an older incarnation that arrives late.
        """
        current = self._heartbeats.get(broker_id)
        if current is None:
            if len(self._heartbeats) >= self._max_brokers:
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST, f"tracking the maximum of {self._max_brokers} brokers already"
                )
            self._heartbeats[broker_id] = _Heartbeat(broker_epoch, now_ms)
            return
        if broker_epoch < current.broker_epoch:
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"stale heartbeat from broker {broker_id} epoch {broker_epoch}; its current epoch is {current.broker_epoch}",
            )
        # max(): a late-delivered heartbeat must not move the time back.
        last = now_ms if broker_epoch > current.broker_epoch else max(now_ms, current.last_heartbeat_ms)
        self._heartbeats[broker_id] = _Heartbeat(broker_epoch, last)

    def last_heartbeat_ms(self, broker_id: int) -> int | None:
        current = self._heartbeats.get(broker_id)
        return None if current is None else current.last_heartbeat_ms

    def forget(self, broker_id: int) -> None:
        self._heartbeats.pop(broker_id, None)

    def expired(self, now_ms: int, session_timeout_ms: int) -> list[int]:
        """Brokers whose last heartbeat is ``session_timeout_ms`` or more ago."""
        assert session_timeout_ms > 0
        return sorted(
            broker_id
            for broker_id, heartbeat in self._heartbeats.items()
            if now_ms - heartbeat.last_heartbeat_ms >= session_timeout_ms
        )


def fence_expired_brokers(
    state: MetadataState | MetadataImage, liveness: BrokerLiveness, now_ms: int, session_timeout_ms: int
) -> list[FenceBroker]:
    """FenceBroker commands for live brokers whose session expired (the
    controller then proposes ``on_broker_fenced`` for each)."""
    image = as_image(state)
    commands = []
    for broker_id in liveness.expired(now_ms, session_timeout_ms):
        registration = image.broker(broker_id)
        if registration is not None and not registration.fenced:
            commands.append(FenceBroker(broker_id, registration.broker_epoch))
    return commands


def should_unfence(
    state: MetadataState | MetadataImage, broker_id: int, broker_epoch: int, broker_metadata_version: int
) -> UnfenceBroker | None:
    """Unfence a heartbeating broker once it has applied metadata at least up
    to its own registration: before that it does not know which partitions it
    hosts and must not be chosen as a leader or ISR member."""
    registration = as_image(state).broker(broker_id)
    if registration is None or not registration.fenced or registration.broker_epoch != broker_epoch:
        return None
    if broker_metadata_version < registration.broker_epoch:
        return None
    return UnfenceBroker(broker_id, broker_epoch)


# ---------------------------------------------------------------------------
# Internal topics


def internal_topic_plan(
    state: MetadataState | MetadataImage,
    share_state_partitions: int,
    consumer_offsets_partitions: int,
    live_brokers: Sequence[int],
    topic_ids: Mapping[str, str],
    voter_count: int,
) -> list[CreateTopic]:
    """CreateTopic commands for the internal topics that do not exist yet, or
    [] while fewer than ``min(3, voter_count)`` brokers are live (see the
    module docstring for why). ``topic_ids`` maps each internal topic name to
    the id the controller stamped for it."""
    assert voter_count >= 1
    image = as_image(state)
    live = sorted(set(live_brokers))
    if len(live) < min(INTERNAL_TOPIC_REPLICATION_FACTOR_MAX, voter_count):
        return []
    replication_factor = min(INTERNAL_TOPIC_REPLICATION_FACTOR_MAX, len(live))
    configs = {
        "min.insync.replicas": str(min(2, replication_factor)),
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
    }
    load = dict(image.replica_counts())
    commands = []
    for name, partitions in ((CONSUMER_OFFSETS_TOPIC, consumer_offsets_partitions), (SHARE_STATE_TOPIC, share_state_partitions)):
        if image.topic_by_name(name) is not None:
            continue
        assert name in topic_ids, f"no topic id stamped for {name}"
        assignment = place_replicas(live, partitions, replication_factor, load)
        for replicas in assignment:
            for b in replicas:
                load[b] = load.get(b, 0) + 1
        commands.append(
            CreateTopic(name=name, topic_id=topic_ids[name], replica_assignment=assignment, configs=configs, internal=True)
        )
    return commands
