"""The active controller's decisions: placement, elections, fencing,
controlled shutdown, liveness and internal topics."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.controller import (
    CONSUMER_OFFSETS_TOPIC,
    SHARE_STATE_TOPIC,
    BrokerLiveness,
    controlled_shutdown,
    effective_topic_configs,
    fence_expired_brokers,
    internal_topic_plan,
    on_broker_fenced,
    on_broker_unfenced,
    place_replicas,
    plan_create_topic,
    preferred_leader_elections,
    reconcile_partitions,
    should_unfence,
)
from cluster.metadata import (
    NO_LEADER,
    AlterPartition,
    CreateTopic,
    ElectLeaders,
    FenceBroker,
    MetadataState,
    PartitionRegistration,
    RegisterBroker,
    Rejected,
    UnfenceBroker,
)
from coordinator.errors import ErrorCode, OperatingError


def live_cluster(*broker_ids: int) -> MetadataState:
    state = MetadataState()
    for b in broker_ids:
        epoch = state.apply(RegisterBroker(b, "127.0.0.1", 9000 + b, f"inc-{b}"))
        state.apply(UnfenceBroker(b, epoch))
    return state


def apply_all(state: MetadataState, commands: list) -> None:
    """Apply controller commands; none may be refused (they were computed
    from this very state)."""
    for command in commands:
        result = state.apply(command)
        outcomes = result if isinstance(command, ElectLeaders) else (result,)
        assert not any(isinstance(o, Rejected) for o in outcomes), outcomes


def fence(state: MetadataState, broker_id: int) -> None:
    state.apply(FenceBroker(broker_id, state.broker(broker_id).broker_epoch))
    apply_all(state, on_broker_fenced(state, broker_id))


def restart(state: MetadataState, broker_id: int, incarnation: str) -> None:
    epoch = state.apply(RegisterBroker(broker_id, "127.0.0.1", 9000 + broker_id, incarnation))
    state.apply(UnfenceBroker(broker_id, epoch))
    apply_all(state, on_broker_unfenced(state, broker_id))


def catch_up(state: MetadataState, p: PartitionRegistration) -> None:
    """The partition leader adds every live replica back to the ISR."""
    live = [b for b in p.replicas if state.image.is_live(b)]
    result = state.apply(AlterPartition(p.topic, p.partition, p.leader, p.leader_epoch, p.partition_epoch, tuple(live)))
    assert not isinstance(result, Rejected), result


# -- placement -------------------------------------------------------------------


def test_placement_round_robin_leaders_and_distinct_replicas() -> None:
    assignment = place_replicas([1, 2, 3], 6, 3)
    assert [r[0] for r in assignment] == [1, 2, 3, 1, 2, 3]
    assert all(len(set(r)) == 3 for r in assignment)
    # The same leader gets different follower orders in the next round
    # (Kafka's replica shift), so its followers share its failover load.
    assert assignment[0] != assignment[3]


@pytest.mark.parametrize(
    ("brokers", "partitions", "rf", "code", "fragment"),
    [
        ([1, 2], 3, 3, ErrorCode.INVALID_REPLICATION_FACTOR, "exceeds the 2 live broker(s)"),
        ([1, 2], 3, 0, ErrorCode.INVALID_REPLICATION_FACTOR, "at least 1"),
        ([1, 2], 0, 1, ErrorCode.INVALID_PARTITIONS, "[1, 10000]"),
        ([], 1, 1, ErrorCode.INVALID_REPLICATION_FACTOR, "exceeds the 0 live"),
        ([1, 1], 1, 1, ErrorCode.INVALID_REQUEST, "duplicates"),
    ],
)
def test_placement_refusals(brokers: list[int], partitions: int, rf: int, code: ErrorCode, fragment: str) -> None:
    with pytest.raises(OperatingError) as info:
        place_replicas(brokers, partitions, rf)
    assert info.value.code == code and fragment in info.value.message


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_placement_is_balanced(data: st.DataObject) -> None:
    brokers = data.draw(st.lists(st.integers(0, 50), min_size=1, max_size=9, unique=True))
    rf = data.draw(st.integers(1, len(brokers)))
    partitions = data.draw(st.integers(1, 120))
    load = data.draw(st.dictionaries(st.sampled_from(brokers), st.integers(0, 30)))
    assignment = place_replicas(brokers, partitions, rf, load)
    assert assignment == place_replicas(brokers, partitions, rf, load)  # deterministic
    assert len(assignment) == partitions
    assert all(len(r) == rf and len(set(r)) == rf and set(r) <= set(brokers) for r in assignment)
    leaders = {b: 0 for b in brokers}
    totals = {b: load.get(b, 0) for b in brokers}
    for replicas in assignment:
        leaders[replicas[0]] += 1
        for b in replicas:
            totals[b] += 1
    assert max(leaders.values()) - min(leaders.values()) <= 1
    initial_spread = max(load.get(b, 0) for b in brokers) - min(load.get(b, 0) for b in brokers)
    assert max(totals.values()) - min(totals.values()) <= max(2, initial_spread)


def test_placement_prefers_least_loaded_brokers() -> None:
    assignment = place_replicas([1, 2, 3], 1, 1, {1: 10, 2: 0, 3: 5})
    assert assignment == [[2]]


def test_effective_configs_raise_min_insync_for_rf3() -> None:
    assert effective_topic_configs({}, 3) == {"min.insync.replicas": "2"}
    assert effective_topic_configs({"min.insync.replicas": "1"}, 3) == {"min.insync.replicas": "1"}
    assert effective_topic_configs({}, 2) == {}


def test_plan_create_topic_applies_and_refuses_early() -> None:
    state = live_cluster(1, 2, 3)
    command = plan_create_topic(state, "orders", "id-o", 6, 3)
    topic = state.apply(command)
    assert topic.config.min_insync_replicas == 2 and len(topic.partitions) == 6
    with pytest.raises(OperatingError) as info:
        plan_create_topic(state, "orders", "id-x", 1, 1)
    assert info.value.code == ErrorCode.TOPIC_ALREADY_EXISTS
    with pytest.raises(OperatingError) as info:
        plan_create_topic(state, "more", "id-y", 1, 4)
    assert info.value.code == ErrorCode.INVALID_REPLICATION_FACTOR
    with pytest.raises(OperatingError) as info:
        plan_create_topic(state, "bad name", "id-z", 1, 1)
    assert info.value.code == ErrorCode.INVALID_TOPIC_EXCEPTION


# -- fencing and elections ---------------------------------------------------------


def test_fenced_leader_moves_to_next_live_isr_member_and_leaves_isrs() -> None:
    state = live_cluster(1, 2, 3)
    state.apply(CreateTopic("t", "id-t", [[1, 2, 3], [2, 1, 3], [3, 2, 1]]))
    fence(state, 1)
    p0, p1, p2 = (state.partition("t", i) for i in range(3))
    assert (p0.leader, p0.isr, p0.leader_epoch) == (2, (2, 3), 1)  # next in replica order
    assert (p1.leader, p1.isr, p1.leader_epoch) == (2, (2, 3), 0)  # follower removed, leader kept
    assert (p2.leader, p2.isr) == (3, (3, 2))
    assert state.partitions_led_by(1) == []
    # Nothing left to do: the plan is empty once applied.
    assert on_broker_fenced(state, 1) == [] and reconcile_partitions(state) == []


def test_last_isr_member_keeps_partition_offline_until_it_returns() -> None:
    state = live_cluster(1, 2)
    state.apply(CreateTopic("t", "id-t", [[1, 2]]))
    fence(state, 2)
    assert state.partition("t", 0).isr == (1,)
    fence(state, 1)  # the last ISR member dies
    p = state.partition("t", 0)
    assert p.offline and p.isr == (1,) and p.leader_epoch == 1
    # Broker 2 comes back: it is not in the ISR, so it may not lead (no
    # unclean election), and the partition stays offline.
    restart(state, 2, "second")
    assert state.partition("t", 0).offline
    assert reconcile_partitions(state) == []
    # The last ISR member returns and is elected.
    restart(state, 1, "second")
    p = state.partition("t", 0)
    assert (p.leader, p.isr, p.leader_epoch) == (1, (1,), 2)


def test_simultaneous_loss_of_whole_isr_keeps_every_member_legal() -> None:
    state = live_cluster(1, 2, 3)
    state.apply(CreateTopic("t", "id-t", [[1, 2, 3]]))
    state.apply(FenceBroker(1, state.broker(1).broker_epoch))
    state.apply(FenceBroker(2, state.broker(2).broker_epoch))
    state.apply(FenceBroker(3, state.broker(3).broker_epoch))
    apply_all(state, reconcile_partitions(state))
    p = state.partition("t", 0)
    assert p.offline and p.isr == (1, 2, 3)
    restart(state, 3, "second")
    p = state.partition("t", 0)
    assert (p.leader, p.isr) == (3, (3,))


def test_reconcile_finishes_what_a_dead_controller_started() -> None:
    state = live_cluster(1, 2, 3)
    state.apply(CreateTopic("t", "id-t", [[1, 2, 3], [2, 3, 1]]))
    # The previous controller fenced broker 1 and died before the elections.
    state.apply(FenceBroker(1, state.broker(1).broker_epoch))
    plan = reconcile_partitions(state)
    apply_all(state, plan)
    assert all(1 not in p.isr and p.leader != 1 for p in state.image.all_partitions())
    # Stale plans are refused by compare-and-set, not applied twice.
    (outcome,) = state.apply(plan[0])[:1]
    assert isinstance(outcome, Rejected) and outcome.code == ErrorCode.INVALID_REQUEST


def test_preferred_leader_returns_after_catch_up() -> None:
    state = live_cluster(1, 2, 3)
    state.apply(CreateTopic("t", "id-t", [[1, 2, 3], [1, 3, 2]]))
    fence(state, 1)
    restart(state, 1, "second")
    # Not in the ISR yet: no preferred election.
    assert preferred_leader_elections(state) == []
    for p in list(state.image.all_partitions()):
        catch_up(state, p)
    assert len(preferred_leader_elections(state, max_elections=1)[0].elections) == 1
    apply_all(state, preferred_leader_elections(state))
    assert [p.leader for p in state.image.all_partitions()] == [1, 1]
    assert preferred_leader_elections(state) == []


def test_controlled_shutdown_hands_over_then_fences() -> None:
    state = live_cluster(1, 2, 3)
    state.apply(CreateTopic("t", "id-t", [[1, 2, 3], [2, 1, 3]]))
    state.apply(CreateTopic("solo", "id-s", [[1]]))
    commands = controlled_shutdown(state, 1)
    assert isinstance(commands[-1], FenceBroker) and commands[-1].broker_id == 1
    apply_all(state, commands)
    assert state.broker(1).fenced
    p0, p1, p2 = state.partition("t", 0), state.partition("t", 1), state.partition("solo", 0)
    assert p0.leader == 2 and 1 not in p0.isr
    assert p1.leader == 2 and 1 not in p1.isr
    # A single-replica partition cannot move: offline, broker 1 kept as its ISR.
    assert p2.offline and p2.isr == (1,)
    with pytest.raises(OperatingError):
        controlled_shutdown(state, 9)


# Random failures and returns, with the controller's plans applied after
# each event: no fenced leader, every partition with a live ISR member has a
# leader, and every new leader came from the previous ISR.
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fence", "restart", "catch_up", "prefer"]), st.integers(1, 4)), max_size=30))
def test_failures_and_returns_keep_partitions_consistent(events: list[tuple[str, int]]) -> None:
    state = live_cluster(1, 2, 3, 4)
    state.apply(CreateTopic("t", "id-t", place_replicas([1, 2, 3, 4], 8, 3)))
    for number, (event, broker_id) in enumerate(events):
        before = {(p.topic, p.partition): p for p in state.image.all_partitions()}
        if event == "fence" and state.image.is_live(broker_id):
            fence(state, broker_id)
        elif event == "restart" and not state.image.is_live(broker_id):
            restart(state, broker_id, f"inc-{number}")
        elif event == "catch_up":
            for p in list(state.image.all_partitions()):
                if p.leader != NO_LEADER:
                    catch_up(state, p)
        elif event == "prefer":
            apply_all(state, preferred_leader_elections(state))
        for p in state.image.all_partitions():
            previous = before[(p.topic, p.partition)]
            live_isr = [b for b in p.isr if state.image.is_live(b)]
            if p.leader == NO_LEADER:
                assert not live_isr and set(p.isr) <= set(previous.isr)
            else:
                assert state.image.is_live(p.leader) and p.leader in p.isr
                assert all(state.image.is_live(b) for b in p.isr)
            if p.leader != previous.leader and p.leader != NO_LEADER:
                assert p.leader in previous.isr
        assert reconcile_partitions(state) == []


# -- liveness ---------------------------------------------------------------------


def test_new_controller_gives_full_session_of_grace() -> None:
    state = live_cluster(1, 2)
    liveness = BrokerLiveness()
    liveness.sync(state, now_ms=10_000)
    assert liveness.expired(now_ms=10_000 + 8_999, session_timeout_ms=9_000) == []
    assert liveness.expired(now_ms=10_000 + 9_000, session_timeout_ms=9_000) == [1, 2]


def test_heartbeats_keep_brokers_alive_and_expired_ones_are_fenced() -> None:
    state = live_cluster(1, 2)
    liveness = BrokerLiveness()
    liveness.sync(state, now_ms=0)
    liveness.record_heartbeat(1, state.broker(1).broker_epoch, now_ms=5_000)
    liveness.record_heartbeat(1, state.broker(1).broker_epoch, now_ms=4_000)  # late delivery
    assert liveness.last_heartbeat_ms(1) == 5_000
    assert liveness.expired(9_000, 9_000) == [2]
    commands = fence_expired_brokers(state, liveness, 9_000, 9_000)
    assert commands == [FenceBroker(2, state.broker(2).broker_epoch)]
    apply_all(state, commands)
    liveness.sync(state, now_ms=9_000)  # fenced brokers are no longer tracked
    assert liveness.last_heartbeat_ms(2) is None
    assert fence_expired_brokers(state, liveness, 100_000, 9_000) == [FenceBroker(1, state.broker(1).broker_epoch)]


def test_stale_incarnation_heartbeat_refused() -> None:
    liveness = BrokerLiveness()
    liveness.record_heartbeat(1, 7, now_ms=0)
    with pytest.raises(OperatingError) as info:
        liveness.record_heartbeat(1, 5, now_ms=1)
    assert "stale heartbeat" in info.value.message
    liveness.record_heartbeat(1, 9, now_ms=2)  # new incarnation
    assert liveness.last_heartbeat_ms(1) == 2
    liveness.forget(1)
    assert liveness.expired(10**9, 1) == []


def test_liveness_is_bounded() -> None:
    liveness = BrokerLiveness(max_brokers=1)
    liveness.record_heartbeat(1, 1, 0)
    with pytest.raises(OperatingError):
        liveness.record_heartbeat(2, 1, 0)


def test_unfence_after_catching_up_with_own_registration() -> None:
    state = MetadataState()
    epoch = state.apply(RegisterBroker(1, "127.0.0.1", 9001, "a"))
    assert should_unfence(state, 1, epoch, broker_metadata_version=epoch - 1) is None
    assert should_unfence(state, 1, epoch - 1, broker_metadata_version=epoch) is None
    command = should_unfence(state, 1, epoch, broker_metadata_version=epoch)
    assert command == UnfenceBroker(1, epoch)
    state.apply(command)
    assert should_unfence(state, 1, epoch, broker_metadata_version=epoch) is None


# -- internal topics -----------------------------------------------------------------

IDS = {CONSUMER_OFFSETS_TOPIC: "id-co", SHARE_STATE_TOPIC: "id-ss"}


def test_internal_topics_wait_for_three_brokers_then_use_rf3_min_isr2() -> None:
    state = live_cluster(1, 2)
    assert internal_topic_plan(state, 8, 8, [1, 2], IDS, voter_count=3) == []
    state = live_cluster(1, 2, 3, 4)
    plan = internal_topic_plan(state, 8, 4, [1, 2, 3, 4], IDS, voter_count=3)
    assert [c.name for c in plan] == [CONSUMER_OFFSETS_TOPIC, SHARE_STATE_TOPIC]
    apply_all(state, plan)
    offsets = state.topic_by_name(CONSUMER_OFFSETS_TOPIC)
    shares = state.topic_by_name(SHARE_STATE_TOPIC)
    assert offsets.internal and shares.internal
    assert len(offsets.partitions) == 4 and len(shares.partitions) == 8
    assert offsets.replication_factor == 3 and offsets.config.min_insync_replicas == 2
    assert shares.config.retention_infinite
    # Leaders of the share-state partitions spread over all brokers.
    assert {p.leader for p in shares.partitions} == {1, 2, 3, 4}
    assert internal_topic_plan(state, 8, 4, [1, 2, 3, 4], IDS, voter_count=3) == []


def test_single_voter_cluster_creates_internal_topics_at_once() -> None:
    state = live_cluster(1)
    plan = internal_topic_plan(state, 2, 2, [1], IDS, voter_count=1)
    apply_all(state, plan)
    topic = state.topic_by_name(SHARE_STATE_TOPIC)
    assert topic.replication_factor == 1 and topic.config.min_insync_replicas == 1


# -- purity -----------------------------------------------------------------------------

FORBIDDEN_IN_CORE = {"grpc", "asyncio", "threading", "socket", "time", "random", "pysyncobj", "prometheus_client"}


@pytest.mark.parametrize("module", ["topic_config", "metadata", "controller"])
def test_control_plane_core_is_pure(module: str) -> None:
    import ast
    from pathlib import Path

    import cluster

    source = Path(cluster.__file__).with_name(f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IN_CORE
