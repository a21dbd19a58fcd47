"""The metadata state machine: every command, its refusals, and invariants."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.metadata import (
    NO_LEADER,
    AllocateProducerIds,
    AlterPartition,
    AlterTopicConfigs,
    BrokerRegistration,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    FenceBroker,
    MetadataState,
    PartitionElection,
    PartitionRegistration,
    ProducerIdBlock,
    RegisterBroker,
    Rejected,
    TopicRegistration,
    UnfenceBroker,
)
from coordinator.errors import ErrorCode


def live_cluster(*broker_ids: int) -> MetadataState:
    state = MetadataState()
    for b in broker_ids:
        epoch = state.apply(RegisterBroker(b, "127.0.0.1", 9000 + b, f"inc-{b}"))
        state.apply(UnfenceBroker(b, epoch))
    return state


def rejected(state: MetadataState, command: object, code: ErrorCode, *fragments: str) -> Rejected:
    before = state.image
    result = state.apply(command)  # type: ignore[arg-type]
    assert isinstance(result, Rejected), result
    assert result.code == code, result
    for fragment in fragments:
        assert fragment in result.message, result.message
    assert state.image is before  # a refused command leaves the state as it was
    return result


def with_topic(*replicas: list[int], brokers: tuple[int, ...] = (1, 2, 3)) -> MetadataState:
    state = live_cluster(*brokers)
    result = state.apply(CreateTopic("t", "id-t", list(replicas), {}))
    assert isinstance(result, TopicRegistration)
    return state


# -- brokers -----------------------------------------------------------------


def test_register_fences_until_unfenced_and_epoch_is_version() -> None:
    state = MetadataState()
    epoch = state.apply(RegisterBroker(1, "127.0.0.1", 9001, "a"))
    assert epoch == state.version == 1
    assert state.broker(1) == BrokerRegistration(1, "127.0.0.1", 9001, "a", 1, fenced=True)
    assert state.live_brokers() == []
    assert state.apply(UnfenceBroker(1, epoch)).fenced is False
    assert state.live_brokers() == [1]


def test_reregistration_same_incarnation_is_idempotent() -> None:
    state = live_cluster(1)
    before = state.image
    assert state.apply(RegisterBroker(1, "127.0.0.1", 9001, "inc-1")) == 1
    assert state.image is before
    rejected(state, RegisterBroker(1, "127.0.0.1", 9999, "inc-1"), ErrorCode.INVALID_REQUEST, "cannot change its listener")


def test_new_incarnation_bumps_epoch_and_fences() -> None:
    state = live_cluster(1)
    new_epoch = state.apply(RegisterBroker(1, "127.0.0.1", 9001, "second"))
    assert new_epoch > 1
    assert state.broker(1).fenced and state.broker(1).broker_epoch == new_epoch
    # The old incarnation's epoch is stale everywhere.
    rejected(state, UnfenceBroker(1, 1), ErrorCode.INVALID_REQUEST, "stale broker epoch 1")
    rejected(state, FenceBroker(1, 1), ErrorCode.INVALID_REQUEST, "stale broker epoch")


def test_listener_shared_by_two_brokers_refused() -> None:
    state = live_cluster(1)
    rejected(state, RegisterBroker(2, "127.0.0.1", 9001, "x"), ErrorCode.INVALID_REQUEST, "broker 1 already uses")


@pytest.mark.parametrize(
    "command",
    [
        RegisterBroker(-1, "h", 1, "x"),
        RegisterBroker(1, "", 1, "x"),
        RegisterBroker(1, "h", 0, "x"),
        RegisterBroker(1, "h", 70000, "x"),
        RegisterBroker(1, "h", 1, ""),
        RegisterBroker(True, "h", 1, "x"),  # type: ignore[arg-type]
    ],
)
def test_register_validates_fields(command: RegisterBroker) -> None:
    rejected(MetadataState(), command, ErrorCode.INVALID_REQUEST)


def test_fence_is_idempotent_and_unknown_broker_refused() -> None:
    state = live_cluster(1)
    epoch = state.broker(1).broker_epoch
    assert state.apply(FenceBroker(1, epoch)).fenced
    version = state.version
    assert state.apply(FenceBroker(1, epoch)).fenced
    assert state.version == version
    rejected(state, FenceBroker(5, 1), ErrorCode.INVALID_REQUEST, "broker 5 is not registered")


# -- topics ------------------------------------------------------------------


def test_create_topic_leader_is_first_live_replica_and_isr_is_live_replicas() -> None:
    state = live_cluster(1, 2, 3)
    state.apply(FenceBroker(1, state.broker(1).broker_epoch))
    topic = state.apply(CreateTopic("t", "id-t", [[1, 2, 3], [3, 1, 2]], {"retention.ms": "-1"}))
    assert topic.partitions[0] == PartitionRegistration("t", 0, (1, 2, 3), (2, 3), 2, 0, 0)
    assert topic.partitions[1] == PartitionRegistration("t", 1, (3, 1, 2), (3, 2), 3, 0, 0)
    assert topic.config.retention_ms == -1 and topic.configs == {"retention.ms": "-1"}
    assert state.topic_by_id("id-t") is topic and state.partition("t", 1) is topic.partitions[1]


@pytest.mark.parametrize(
    ("command", "code", "fragment"),
    [
        (CreateTopic("t", "id-2", [[1]]), ErrorCode.TOPIC_ALREADY_EXISTS, "already exists"),
        (CreateTopic("u", "id-t", [[1]]), ErrorCode.INVALID_REQUEST, "topic id id-t is already used"),
        (CreateTopic("__x", "id-2", [[1]]), ErrorCode.INVALID_TOPIC_EXCEPTION, "reserved for internal topics"),
        (CreateTopic("u", "id-2", []), ErrorCode.INVALID_PARTITIONS, "1..10000 partitions"),
        (CreateTopic("u", "id-2", [[1, 2], [1]]), ErrorCode.INVALID_REPLICA_ASSIGNMENT, "partition 1 has 1"),
        (CreateTopic("u", "id-2", [[1, 1]]), ErrorCode.INVALID_REPLICA_ASSIGNMENT, "lists a broker twice"),
        (CreateTopic("u", "id-2", [[1, 9]]), ErrorCode.INVALID_REPLICA_ASSIGNMENT, "broker 9, which is not registered"),
        (CreateTopic("u", "id-2", [[1]], {"segment.bytes": "1"}), ErrorCode.INVALID_CONFIG, "segment.bytes"),
        (CreateTopic("u", "id-2", [[1]], {"min.insync.replicas": "2"}), ErrorCode.INVALID_CONFIG, "replication factor 1"),
        (CreateTopic("u", "", [[1]]), ErrorCode.INVALID_REQUEST, "topic_id"),
    ],
)
def test_create_topic_refusals(command: CreateTopic, code: ErrorCode, fragment: str) -> None:
    state = with_topic([1, 2])
    rejected(state, command, code, fragment)


def test_create_topic_needs_a_live_replica_per_partition() -> None:
    state = live_cluster(1, 2)
    state.apply(FenceBroker(2, state.broker(2).broker_epoch))
    rejected(state, CreateTopic("u", "id-u", [[1], [2]]), ErrorCode.INVALID_REPLICA_ASSIGNMENT, "partition 1 has no live")


def test_names_colliding_in_metrics_refused() -> None:
    state = live_cluster(1)
    state.apply(CreateTopic("a.b", "id-1", [[1]]))
    rejected(state, CreateTopic("a_b", "id-2", [[1]]), ErrorCode.INVALID_TOPIC_EXCEPTION, "collides with existing topic 'a.b'")


def test_partition_limit_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.metadata as metadata

    monkeypatch.setattr(metadata, "MAX_PARTITIONS_TOTAL", 3)
    state = with_topic([1], [2])
    rejected(state, CreateTopic("u", "id-u", [[1], [2]]), ErrorCode.POLICY_VIOLATION, "cluster limit of 3")


def test_delete_topic_and_recreate_does_not_accept_old_commands() -> None:
    state = with_topic([1, 2])
    old = state.partition("t", 0)
    assert state.apply(DeleteTopic("t")) == "id-t"
    assert state.topic_by_name("t") is None and state.image.total_partitions == 0
    rejected(state, DeleteTopic("t"), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "'t' does not exist")
    state.apply(CreateTopic("t", "id-t2", [[1, 2]]))
    # Same name, same epochs as the deleted topic: the topic id tells them apart.
    stale = ElectLeaders((PartitionElection("t", 0, 2, (2,), old.partition_epoch, "id-t"),))
    before = state.image
    (outcome,) = state.apply(stale)
    assert isinstance(outcome, Rejected) and outcome.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert state.image is before
    rejected(
        state, AlterPartition("t", 0, 1, 0, 0, (1,), topic_id="id-t"), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "id-t"
    )


def test_internal_topic_cannot_be_deleted() -> None:
    state = live_cluster(1)
    state.apply(CreateTopic("__consumer_offsets", "id-c", [[1]], internal=True))
    assert state.topic_by_name("__consumer_offsets").internal
    rejected(state, DeleteTopic("__consumer_offsets"), ErrorCode.INVALID_TOPIC_EXCEPTION, "cannot be deleted")


def test_alter_topic_configs_sets_and_removes_overrides() -> None:
    state = with_topic([1, 2, 3])
    topic = state.apply(AlterTopicConfigs("t", {"retention.ms": "1000", "min.insync.replicas": "2"}))
    assert topic.config.retention_ms == 1000 and topic.config.min_insync_replicas == 2
    topic = state.apply(AlterTopicConfigs("t", {"retention.ms": None}))
    assert topic.configs == {"min.insync.replicas": "2"}
    rejected(state, AlterTopicConfigs("t", {"min.insync.replicas": "4"}), ErrorCode.INVALID_CONFIG, "replication factor 3")
    rejected(state, AlterTopicConfigs("t", {"flush.ms": "-3"}), ErrorCode.INVALID_CONFIG, "flush.ms")
    rejected(state, AlterTopicConfigs("nope", {}), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    version = state.version
    state.apply(AlterTopicConfigs("t", {"min.insync.replicas": "2"}))
    assert state.version == version  # no change, no new version


# -- elections -----------------------------------------------------------------


def elect(state: MetadataState, *elections: PartitionElection) -> tuple[object, ...]:
    return state.apply(ElectLeaders(elections))  # type: ignore[return-value]


def test_election_bumps_leader_and_partition_epochs() -> None:
    state = with_topic([1, 2, 3])
    (p,) = elect(state, PartitionElection("t", 0, 2, (2, 3), 0, "id-t"))
    assert (p.leader, p.isr, p.leader_epoch, p.partition_epoch) == (2, (2, 3), 1, 1)
    # An ISR-only shrink by the controller keeps the leader epoch (the leader
    # stays valid) and bumps the partition epoch.
    (p,) = elect(state, PartitionElection("t", 0, 2, (2,), 1))
    assert (p.leader, p.isr, p.leader_epoch, p.partition_epoch) == (2, (2,), 1, 2)


def test_election_entries_apply_or_refuse_one_by_one() -> None:
    state = with_topic([1, 2, 3], [2, 3, 1])
    outcomes = elect(
        state,
        PartitionElection("t", 0, 2, (1, 2), 5),  # stale partition epoch
        PartitionElection("t", 1, 3, (3, 1), 0),  # valid
    )
    assert isinstance(outcomes[0], Rejected) and "expected 5, the partition is at 0" in outcomes[0].message
    assert isinstance(outcomes[1], PartitionRegistration) and outcomes[1].leader == 3
    assert state.partition("t", 0).partition_epoch == 0 and state.partition("t", 1).partition_epoch == 1


@pytest.mark.parametrize(
    ("election", "fragment"),
    [
        (PartitionElection("t", 0, 2, (2, 2), 0), "lists a broker twice"),
        (PartitionElection("t", 0, 2, (2, 9), 0), "not replicas"),
        (PartitionElection("t", 0, 2, (), 0), "cannot be empty"),
        (PartitionElection("t", 0, 3, (1, 2), 0), "never elects an unclean leader"),
        (PartitionElection("t", 7, 1, (1,), 0), "no partition 7"),
        (PartitionElection("t", 0, 1, (1,), 0, "other-id"), "with id other-id does not exist"),
    ],
)
def test_election_refusals(election: PartitionElection, fragment: str) -> None:
    state = with_topic([1, 2, 3])
    before = state.image
    (result,) = elect(state, election)
    assert isinstance(result, Rejected) and fragment in result.message, result
    assert state.image is before


def test_election_cannot_grow_isr_or_pick_fenced_leader() -> None:
    state = with_topic([1, 2, 3])
    (shrunk,) = elect(state, PartitionElection("t", 0, 2, (2,), 0))
    (result,) = elect(state, PartitionElection("t", 0, 2, (1, 2), shrunk.partition_epoch))
    assert isinstance(result, Rejected) and "cannot add [1]" in result.message
    state = with_topic([1, 2, 3])
    state.apply(FenceBroker(3, state.broker(3).broker_epoch))
    (result,) = elect(state, PartitionElection("t", 0, 3, (3,), 0))
    assert isinstance(result, Rejected) and "broker 3 is fenced" in result.message


def test_duplicate_partition_in_one_command() -> None:
    state = with_topic([1, 2, 3])
    first, second = elect(state, PartitionElection("t", 0, 2, (2, 3), 0), PartitionElection("t", 0, 3, (3,), 0))
    assert isinstance(first, PartitionRegistration)
    assert isinstance(second, Rejected) and "appears twice" in second.message


def test_offline_keeps_isr_and_noop_election_changes_nothing() -> None:
    state = with_topic([1, 2])
    (p,) = elect(state, PartitionElection("t", 0, NO_LEADER, (1, 2), 0))
    assert p.offline and p.isr == (1, 2) and p.leader_epoch == 1
    version = state.version
    (same,) = elect(state, PartitionElection("t", 0, NO_LEADER, (1, 2), p.partition_epoch))
    assert same is state.partition("t", 0) and state.version == version


def test_too_many_elections_in_one_command() -> None:
    import cluster.metadata as metadata

    state = with_topic([1])
    elections = tuple(PartitionElection("t", 0, 1, (1,), 0) for _ in range(metadata.MAX_ELECTIONS_PER_COMMAND + 1))
    rejected(state, ElectLeaders(elections), ErrorCode.INVALID_REQUEST, "the limit is 500")


# -- AlterPartition (compare-and-set from the partition leader) ------------------


def test_alter_partition_compare_and_set() -> None:
    state = with_topic([1, 2, 3])
    p = state.partition("t", 0)
    assert (p.leader, p.isr, p.leader_epoch, p.partition_epoch) == (1, (1, 2, 3), 0, 0)
    shrunk = state.apply(AlterPartition("t", 0, 1, 0, 0, (1, 2), topic_id="id-t"))
    assert (shrunk.isr, shrunk.leader_epoch, shrunk.partition_epoch) == ((1, 2), 0, 1)
    # The same request again carries a stale partition epoch now.
    rejected(state, AlterPartition("t", 0, 1, 0, 0, (1, 2)), ErrorCode.INVALID_REQUEST, "carries 0, the partition is at 1")
    rejected(state, AlterPartition("t", 0, 2, 0, 1, (1, 2)), ErrorCode.NOT_LEADER_OR_FOLLOWER, "leader is 1")
    rejected(state, AlterPartition("t", 0, 1, 7, 1, (1, 2)), ErrorCode.FENCED_LEADER_EPOCH, "current leader epoch is 0")
    rejected(state, AlterPartition("t", 0, 1, 0, 1, (2, 3)), ErrorCode.INVALID_REQUEST, "must include its leader 1")
    rejected(state, AlterPartition("t", 0, 1, 0, 1, (1, 4)), ErrorCode.INVALID_REQUEST, "not replicas")
    rejected(state, AlterPartition("t", 0, 1, 0, 1, ()), ErrorCode.INVALID_REQUEST, "cannot be empty")
    rejected(state, AlterPartition("t", 5, 1, 0, 1, (1,)), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no partition 5")
    # Expansion back (3 caught up), in replica order whatever the request order.
    grown = state.apply(AlterPartition("t", 0, 1, 0, 1, (3, 1, 2)))
    assert grown.isr == (1, 2, 3) and grown.partition_epoch == 2
    version = state.version
    assert state.apply(AlterPartition("t", 0, 1, 0, 2, (1, 2, 3))) == grown and state.version == version


def test_alter_partition_cannot_add_fenced_broker() -> None:
    state = with_topic([1, 2, 3])
    state.apply(AlterPartition("t", 0, 1, 0, 0, (1, 2)))
    state.apply(FenceBroker(3, state.broker(3).broker_epoch))
    rejected(state, AlterPartition("t", 0, 1, 0, 1, (1, 2, 3)), ErrorCode.INVALID_REQUEST, "broker 3 is fenced")


def test_stale_leader_after_election_is_fenced() -> None:
    state = with_topic([1, 2, 3])
    elect(state, PartitionElection("t", 0, 2, (2, 3), 0))
    rejected(state, AlterPartition("t", 0, 1, 0, 0, (1, 2, 3)), ErrorCode.NOT_LEADER_OR_FOLLOWER)
    rejected(state, AlterPartition("t", 0, 2, 0, 1, (2,)), ErrorCode.FENCED_LEADER_EPOCH)


# -- producer ids, reads, determinism ------------------------------------------


def test_producer_id_blocks_are_disjoint() -> None:
    state = live_cluster(1, 2)
    assert state.apply(AllocateProducerIds(1, 1000)) == ProducerIdBlock(0, 1000)
    assert state.apply(AllocateProducerIds(2, 10)) == ProducerIdBlock(1000, 10)
    rejected(state, AllocateProducerIds(3, 10), ErrorCode.INVALID_REQUEST, "broker 3 is not registered")
    rejected(state, AllocateProducerIds(1, 0), ErrorCode.INVALID_REQUEST, "count")
    rejected(state, AllocateProducerIds(1, 10_001), ErrorCode.INVALID_REQUEST, "count")


def test_read_helpers() -> None:
    state = with_topic([1, 2], [2, 3], [3, 1])
    assert [(p.topic, p.partition) for p in state.partitions_led_by(2)] == [("t", 1)]
    assert [p.partition for p in state.partitions_replicated_on(1)] == [0, 2]
    assert [b.broker_id for b in state.brokers()] == [1, 2, 3]
    assert [t.name for t in state.topics()] == ["t"]
    assert state.image.replica_counts() == {1: 2, 2: 2, 3: 2}
    with pytest.raises(Exception) as info:
        state.partition("t", 3)
    assert getattr(info.value, "code", None) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_unknown_command_is_a_broken_invariant() -> None:
    with pytest.raises(AssertionError):
        MetadataState().apply("not a command")  # type: ignore[arg-type]


# A random command stream over a small cluster, drawn mostly from what the
# current state makes plausible (real epochs, existing partitions) so that
# most commands apply, applied to two replicas through pickle (the log): the
# images must agree and the partition invariants hold after every command.
BROKERS = (1, 2, 3, 4)


def draw_command(data: st.DataObject, state: MetadataState) -> object:
    image = state.image
    kind = data.draw(
        st.sampled_from(["register", "unfence", "fence", "create", "create", "delete", "elect", "elect", "alter", "alter", "pids"])
    )
    broker = data.draw(st.sampled_from(BROKERS))
    registration = image.broker(broker)
    epoch = registration.broker_epoch if registration else 0
    epoch = data.draw(st.sampled_from([epoch, epoch, epoch - 1]))
    members = st.lists(st.sampled_from(BROKERS), max_size=3, unique=True).map(tuple)
    partitions = list(image.all_partitions())
    if kind == "register":
        return RegisterBroker(broker, "127.0.0.1", 9000 + broker, data.draw(st.sampled_from(["a", "b"])))
    if kind == "unfence":
        return UnfenceBroker(broker, epoch)
    if kind == "fence":
        return FenceBroker(broker, epoch)
    if kind == "create":
        assignment = data.draw(st.lists(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=3, unique=True), min_size=1, max_size=3))
        return CreateTopic(data.draw(st.sampled_from(["t", "u"])), data.draw(st.sampled_from(["i1", "i2", "i3", "i4"])), assignment)
    if kind == "delete":
        return DeleteTopic(data.draw(st.sampled_from(["t", "u"])))
    if kind == "pids":
        return AllocateProducerIds(broker, data.draw(st.integers(0, 20)))
    if not partitions:
        return AllocateProducerIds(broker, 1)
    p = data.draw(st.sampled_from(partitions))
    subset = st.lists(st.sampled_from(p.replicas), max_size=len(p.replicas), unique=True).map(tuple)
    new_isr = data.draw(st.one_of(subset, members))
    if kind == "elect":
        leader = data.draw(st.sampled_from([NO_LEADER, *p.replicas, *new_isr]))
        epoch_guess = data.draw(st.sampled_from([p.partition_epoch, p.partition_epoch, p.partition_epoch - 1]))
        return ElectLeaders((PartitionElection(p.topic, p.partition, leader, new_isr, epoch_guess),))
    leader = data.draw(st.sampled_from([p.leader, p.leader, broker]))
    return AlterPartition(
        p.topic,
        p.partition,
        leader,
        data.draw(st.sampled_from([p.leader_epoch, p.leader_epoch - 1])),
        data.draw(st.sampled_from([p.partition_epoch, p.partition_epoch + 1])),
        tuple({leader, *new_isr}),
    )


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_commands_keep_invariants_and_replicas_agree(data: st.DataObject) -> None:
    left, right = live_cluster(1, 2, 3), live_cluster(1, 2, 3)
    for state in (left, right):
        state.apply(RegisterBroker(4, "127.0.0.1", 9004, "a"))  # registered, fenced
    for _ in range(data.draw(st.integers(1, 60))):
        command = draw_command(data, left)
        before = left.image
        result = left.apply(command)  # type: ignore[arg-type]
        right.apply(pickle.loads(pickle.dumps(command)))  # type: ignore[arg-type]
        if isinstance(result, Rejected):
            assert left.image is before
        else:
            assert left.version in (before.version, before.version + 1)
        for p in left.image.all_partitions():
            assert p.isr and set(p.isr) <= set(p.replicas)
            assert p.leader == NO_LEADER or p.leader in p.isr
            old = before.topics_by_name.get(p.topic)
            if old is not None and old.topic_id == left.image.topics_by_name[p.topic].topic_id:
                previous = old.partitions[p.partition]
                assert p.leader_epoch >= previous.leader_epoch
                assert p.partition_epoch >= previous.partition_epoch
                # No unclean election: a new leader was in the previous ISR.
                if p.leader != previous.leader and p.leader != NO_LEADER:
                    assert p.leader in previous.isr
                    assert p.leader_epoch == previous.leader_epoch + 1
        assert left.image == right.image
    assert pickle.loads(pickle.dumps(left.image)) == left.image
