"""Share state on a pruned ``__share_group_state`` log, and admin resets, across SIGKILL (3 processes, RF 3).

The share coordinator snapshots a key every few updates and prunes its state
partition below what recovery needs (node/share_coordinator.py); a successor
rebuilds the state by replaying what is left. The unit tests drive the shard
directly; these tests run real node processes with a tiny snapshot cadence
(every 5 updates) and a 300 ms maintenance tick, and observe only what a user
can see: ``Admin.list_offsets`` on the state partition, the nodes' Prometheus
``shoal_log_start_offset``, ``Admin.list_share_group_offsets`` (the durable
start offset, read from the share coordinator), ``Admin.describe_share_partitions``
(the share-partition leader's window) and what share consumers receive.

* ``test_recovery_from_a_pruned_state_log_is_exact``: one member holds the
  first records (so the start offset stays at 0 and the window spans every
  record) while another accepts, rejects and releases the rest in many small
  polls, one state write each. The state log is pruned on every replica and
  then stops growing (an idle group must not be re-snapshotted forever).
  SIGKILL the share coordinator, then (after restarting it) the
  share-partition leader. The durable start offset and lag survive the first
  move; after the second, the window is the same offset by offset and a
  fresh consumer receives exactly the records that were neither accepted nor
  archived, each with its delivery count plus one.
* ``test_reset_offsets_while_the_share_coordinator_fails_over``: with the
  group empty, SIGKILL the share coordinator and reset the group to the
  earliest offset (what ``shoal share-groups reset-offsets --to-earliest``
  does) while a successor is elected. Every failed attempt is a typed,
  retriable error; the reset starts a new state epoch; when the killed node
  comes back and leads the state partition again it serves the reset state,
  not the one it had; a fresh consumer receives every record exactly once,
  with delivery count 1.

Which node coordinates a share partition follows the documented rule
(docs/design.md): the leader of ``__share_group_state`` partition
CRC32("group:topic:partition") mod the partition count, read from metadata.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import AcknowledgeType, Admin, NewTopic, Producer, ShareConsumer
from client.errors import ShoalError
from client.types import OffsetSpec, RecordState, SharePartitionState, TopicPartition
from cluster.controller import CONSUMER_OFFSETS_TOPIC, SHARE_STATE_TOPIC
from node.interfaces import coordinator_partition, share_state_key
from proto import shoal_pb2
from tests.harness import Cluster, start_cluster, wait_until

pytest.importorskip("node.server")
pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("share-state-pruning")]

INTERNAL_PARTITIONS = 8
PRUNE_INTERVAL_MS = 300
SETTINGS = {
    "share.coordinator.snapshot.update.records.per.snapshot": "5",
    "share.coordinator.state.topic.prune.interval.ms": str(PRUNE_INTERVAL_MS),
    "share.coordinator.state.topic.num.partitions": str(INTERNAL_PARTITIONS),
    "offsets.topic.num.partitions": str(INTERNAL_PARTITIONS),
    # A restarted node takes back the leaderships it is the preferred replica
    # of within about a second: how test 2 makes the killed coordinator lead again.
    "leader.imbalance.check.interval.seconds": "1",
}
RECORDS = 30
#: Records the holder accepts first (the start offset moves past them), then
#: records it keeps acquired during the workload (the start offset stays there).
ACCEPTED_FIRST = 3
HELD = 3
TERMINAL = (RecordState.ACKNOWLEDGED, RecordState.ARCHIVED)
#: What a reset may answer while the share coordinator moves: the coordinator
#: errors (coordinator/errors.py), or the client's own deadline when the group
#: coordinator is still waiting for the new share coordinator. All retriable.
RESET_RETRIABLE = {"NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS", "REQUEST_TIMED_OUT"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, Path(tmp_path_factory.mktemp("share-state-pruning")), SETTINGS) as running:
        yield running


@pytest.fixture()
def all_nodes_up(cluster: Cluster) -> Cluster:
    """Each test kills nodes; it starts with all three running and every partition on its preferred leader."""
    for node_id in cluster.node_ids:
        if node_id not in cluster.running():
            cluster.restart(node_id, wait=False)
    cluster.wait_ready()
    wait_until(lambda: balanced(cluster), 30, "every partition to be led by its preferred replica")
    return cluster


def balanced(cluster: Cluster) -> bool:
    response = cluster.any_call(lambda stub: stub.Metadata(shoal_pb2.MetadataRequest(include_internal=True), timeout=3))
    return all(p.leader == p.replicas[0] for t in response.topics for p in t.partitions)


# ---------------------------------------------------------------- observation helpers


def admin_of(cluster: Cluster) -> Admin:
    return Admin({"bootstrap.servers": cluster.bootstrap, "request.timeout.ms": 5000})


def state_partition(group: str, topic: str, partition: int = 0) -> int:
    return coordinator_partition(share_state_key(group, topic, partition), INTERNAL_PARTITIONS)


def group_partition(group: str) -> int:
    return coordinator_partition(group, INTERNAL_PARTITIONS)


def pick_group(cluster: Cluster, prefix: str, topic: str, wanted) -> str:
    """The first group id whose coordinators sit as ``wanted(share coordinator, group coordinator, leader)`` asks."""
    topic_leader = cluster.leader_of(topic, 0)
    for index in range(200):
        group = f"{prefix}-{index}"
        share_coordinator = cluster.leader_of(SHARE_STATE_TOPIC, state_partition(group, topic))
        group_coordinator = cluster.leader_of(CONSUMER_OFFSETS_TOPIC, group_partition(group))
        if wanted(share_coordinator, group_coordinator, topic_leader):
            return group
    raise AssertionError(f"no group id puts its coordinators where the test needs them (leader {topic_leader})")


def state_log_offsets(admin: Admin, partition: int) -> tuple[int, int]:
    """(log start offset, log end offset) of a ``__share_group_state`` partition, from its leader."""
    tp = TopicPartition(SHARE_STATE_TOPIC, partition)
    earliest = admin.list_offsets({tp: OffsetSpec.EARLIEST})[tp].result().offset
    latest = admin.list_offsets({tp: OffsetSpec.LATEST})[tp].result().offset
    return earliest, latest


def replica_log_start_offsets(cluster: Cluster, topic: str, partition: int) -> dict[int, int]:
    """``shoal_log_start_offset`` of the partition on every running node (its metrics endpoint)."""
    out: dict[int, int] = {}
    for node_id in cluster.running():
        url = f"http://127.0.0.1:{cluster.nodes[node_id].metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "shoal_log_start_offset"
                    and sample.labels.get("topic") == topic
                    and sample.labels.get("partition") == str(partition)
                ):
                    out[node_id] = int(sample.value)
    return out


def wait_in_sync(cluster: Cluster, node_id: int, partitions: list[tuple[str, int]]) -> None:
    """A restarted node is back in the ISR of ``partitions``, so that the next kill leaves two in sync."""
    for topic, partition in partitions:
        wait_until(lambda: node_id in cluster.partition_metadata(topic, partition).isr, 20,
                   f"node {node_id} to rejoin the ISR of {topic}-{partition}")


def answered(call, what: str, timeout_s: float = 20.0):
    """``call()``'s result once it stops raising retriable client errors."""
    holder: list = []
    last: list[BaseException] = []

    def attempt() -> bool:
        try:
            holder.append(call())
            return True
        except ShoalError as error:
            if not error.retriable:
                raise
            last[:] = [error]
            return False

    try:
        wait_until(attempt, timeout_s, what, interval_s=0.1)
    except TimeoutError as error:
        raise TimeoutError(f"{error} (last error: {last[0] if last else None})") from None
    return holder[0]


def window(state: SharePartitionState) -> dict[int, tuple[RecordState, int]]:
    """offset → (state, delivery count) for every offset in the share partition's runs."""
    return {
        offset: (run.state, run.delivery_count)
        for run in state.runs
        for offset in range(run.first_offset, run.last_offset + 1)
    }


def describe_one(admin: Admin, group: str, topic: str) -> SharePartitionState:
    states = admin.describe_share_partitions(group, [TopicPartition(topic, 0)])
    assert len(states) == 1, states
    return states[0]


def produce(cluster: Cluster, topic: str, count: int) -> None:
    with Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 1}) as producer:
        for index in range(count):
            producer.send(topic, str(index), partition=0)
        producer.flush(30)


def create_topic(cluster: Cluster, topic: str) -> None:
    with admin_of(cluster) as admin:
        admin.create_topics([NewTopic(topic, 1, 3)])[topic].result()
    cluster.leader_of(topic, 0)


def share_consumer(cluster: Cluster, group: str, **extra: object) -> ShareConsumer:
    return ShareConsumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, **extra})


def wait_group_empty(admin: Admin, group: str) -> None:
    wait_until(
        lambda: not answered(lambda: admin.describe_share_groups([group])[group].result(), "describe").members,
        20, f"share group {group} to be empty",
    )


def wait_quiet(admin: Admin, partition: int, quiet_s: float, timeout_s: float) -> tuple[int, int]:
    """Wait until the state partition's log end offset has not moved for ``quiet_s``; its offsets then.

    With nothing writing share state, the coordinator's maintenance must
    converge: snapshot what pins the prune point once, prune, then write
    nothing more. A coordinator that re-snapshots idle keys on every tick never
    gets quiet (Kafka tests the same: testSnapshotColdPartitionsDoesNotPerpetuallySnapshot).
    """
    seen: dict[str, float | int] = {"end": -1, "since": time.monotonic()}
    offsets: list[tuple[int, int]] = []

    def quiet() -> bool:
        start, end = state_log_offsets(admin, partition)
        now = time.monotonic()
        if end != seen["end"]:
            seen["end"], seen["since"] = end, now
            return False
        offsets[:] = [(start, end)]
        return now - seen["since"] >= quiet_s

    wait_until(quiet, timeout_s, f"{SHARE_STATE_TOPIC}-{partition} to stop growing for {quiet_s}s", interval_s=0.1)
    return offsets[0]


# ---------------------------------------------------------------- test 1


def decide(value: int, delivery_count: int) -> AcknowledgeType:
    """Accepted, rejected, released once then accepted, or released every time (archived at the limit)."""
    kind = value % 4
    if kind == 0:
        return AcknowledgeType.ACCEPT
    if kind == 1:
        return AcknowledgeType.REJECT
    if kind == 2:
        return AcknowledgeType.ACCEPT if delivery_count > 1 else AcknowledgeType.RELEASE
    return AcknowledgeType.RELEASE


def test_recovery_from_a_pruned_state_log_is_exact(all_nodes_up: Cluster) -> None:
    cluster = all_nodes_up
    topic = "pruned"
    create_topic(cluster, topic)
    # The share coordinator and the share-partition leader on different nodes,
    # so that each kill moves one of them.
    group = pick_group(cluster, "pruned", topic, lambda share, _group, leader: share != leader)
    coordinator_node = cluster.leader_of(SHARE_STATE_TOPIC, state_partition(group, topic))
    partition = state_partition(group, topic)
    tp = TopicPartition(topic, 0)
    with admin_of(cluster) as admin:
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
        _, state_log_base = state_log_offsets(admin, partition)
    produce(cluster, topic, RECORDS)

    # A member accepts the first records, then takes the next HELD and sits on
    # them while another works through the rest in many small polls, each of
    # which acknowledges and acquires: one state write per poll. The start
    # offset stays at the held records, so the window at the kill spans every
    # later record and every kind of state.
    holder = share_consumer(
        cluster, group, **{"share.acknowledgement.mode": "explicit", "max.poll.records": HELD,
                           "share.acquire.mode": "record_limit"},
    )
    worker = share_consumer(
        cluster, group, **{"share.acknowledgement.mode": "explicit", "max.poll.records": 3,
                           "share.acquire.mode": "record_limit"},
    )
    settled: dict[int, AcknowledgeType] = {}  # offset → ACCEPT / REJECT whose commit succeeded
    seen_counts: dict[int, int] = {}
    try:
        holder.subscribe([topic])
        first: list = wait_until(lambda: holder.poll(0.5), 30, "the holder's first records")
        assert [r.offset for r in first] == list(range(ACCEPTED_FIRST))
        for record in first:
            holder.acknowledge(record, AcknowledgeType.ACCEPT)
            settled[record.offset] = AcknowledgeType.ACCEPT
        assert holder.commit_sync().get(tp) is None
        held: list = wait_until(lambda: holder.poll(0.5), 30, "the holder's held records")
        assert [r.offset for r in held] == list(range(ACCEPTED_FIRST, ACCEPTED_FIRST + HELD))
        worker.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(seen_counts) < RECORDS - ACCEPTED_FIRST - HELD and time.monotonic() < deadline:
            records = worker.poll(0.5)
            decisions = {}
            for record in records:
                seen_counts[record.offset] = record.delivery_count
                decisions[record.offset] = decide(int(record.value), record.delivery_count)
                worker.acknowledge(record, decisions[record.offset])
            if records:
                results = worker.commit_sync()
                assert results.get(tp) is None, results
                for offset, ack in decisions.items():
                    if ack != AcknowledgeType.RELEASE:
                        settled[offset] = ack
        assert sorted(seen_counts) == list(range(ACCEPTED_FIRST + HELD, RECORDS)), "the worker missed records"
        assert not set(seen_counts) & {r.offset for r in held}, "a held record was delivered to the worker"
    finally:
        worker.close()
        holder.close()  # Explicit mode: releases the unacknowledged held records (counts kept).
    for record in held:
        seen_counts[record.offset] = record.delivery_count

    with admin_of(cluster) as admin:
        wait_group_empty(admin, group)
        before = describe_one(admin, group, topic)
        before_window = window(before)
        durable_before = admin.list_share_group_offsets(group)[tp]
        # The held records kept the start offset right after the first accepted
        # ones: the window covers every later record, and it agrees with what
        # the members were told.
        assert before.start_offset == durable_before.start_offset == ACCEPTED_FIRST
        assert sorted(before_window) == list(range(ACCEPTED_FIRST, RECORDS)) and before.end_offset == RECORDS
        for offset, ack in settled.items():
            if offset < ACCEPTED_FIRST:
                continue  # below the start offset: finished, no longer in the window
            expected = RecordState.ACKNOWLEDGED if ack == AcknowledgeType.ACCEPT else RecordState.ARCHIVED
            assert before_window[offset][0] == expected, (offset, before)
        available = sorted(o for o, (state, _) in before_window.items() if state == RecordState.AVAILABLE)
        held_offsets = {r.offset for r in held}
        assert held_offsets < set(available), f"the held records and some released ones stay available: {before}"
        assert all(before_window[o][1] == seen_counts[o] for o in available)
        assert not any(state == RecordState.ACQUIRED for state, _ in before_window.values())
        # Pruning happened on every replica: recovery has only a tail to replay.
        start, end = wait_quiet(admin, partition, quiet_s=4 * PRUNE_INTERVAL_MS / 1000, timeout_s=20)
        assert end - state_log_base > 5, "the workload wrote too few state records to need pruning"
        assert start > state_log_base, f"{SHARE_STATE_TOPIC}-{partition} was never pruned ({start}..{end})"
        wait_until(
            lambda: (starts := replica_log_start_offsets(cluster, SHARE_STATE_TOPIC, partition)).keys() == {1, 2, 3}
            and min(starts.values()) > state_log_base,
            10, "every replica of the state partition to be pruned",
        )

    # 1. The share coordinator dies; its successor replays the pruned log.
    cluster.kill(coordinator_node)
    successor = cluster.leader_of(SHARE_STATE_TOPIC, partition, timeout_s=30, exclude=coordinator_node)
    assert successor != coordinator_node
    with admin_of(cluster) as admin:
        durable = answered(lambda: admin.list_share_group_offsets(group)[tp], "the share group offsets", 30)
        assert durable.start_offset == durable_before.start_offset
        assert durable.lag == durable_before.lag
        start_after, _ = state_log_offsets(admin, partition)
        assert start_after >= start, "the log start offset of the state partition moved backwards"
    cluster.restart(coordinator_node)
    wait_in_sync(cluster, coordinator_node, [(topic, 0), (SHARE_STATE_TOPIC, partition)])

    # 2. The share-partition leader dies; its successor loads from the share coordinator.
    old_leader = cluster.leader_of(topic, 0)
    cluster.kill(old_leader)
    cluster.leader_of(topic, 0, timeout_s=30, exclude=old_leader)
    fresh = share_consumer(cluster, group, **{"share.acknowledgement.mode": "explicit"})
    received: list = []
    try:
        fresh.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(received) < len(available) and time.monotonic() < deadline:
            received += fresh.poll(0.5)
        assert sorted(r.offset for r in received) == available, (received, before)
        assert {r.offset: r.delivery_count for r in received} == {o: before_window[o][1] + 1 for o in available}
        assert not set(settled) & {r.offset for r in received}, "an accepted or rejected record came back"
        with admin_of(cluster) as admin:
            after = describe_one(admin, group, topic)
            assert after.leader_id != old_leader
            assert (after.start_offset, after.end_offset, after.state_epoch) == (
                before.start_offset, before.end_offset, before.state_epoch)
            expected_window = {
                offset: ((RecordState.ACQUIRED, count + 1) if state == RecordState.AVAILABLE else (state, count))
                for offset, (state, count) in before_window.items()
            }
            assert window(after) == expected_window
            for record in received:
                fresh.acknowledge(record, AcknowledgeType.ACCEPT)
            assert fresh.commit_sync().get(tp) is None
            # Everything is finished now, so nothing else can ever be delivered.
            done = wait_until(
                lambda: (state := describe_one(admin, group, topic)).start_offset == RECORDS and state,
                15, "the start offset to reach the end",
            )
            assert all(run.state in TERMINAL for run in done.runs)
    finally:
        fresh.close()
    assert max(Counter(r.offset for r in received).values()) == 1
    cluster.restart(old_leader, wait=False)


# ---------------------------------------------------------------- test 2


def test_reset_offsets_while_the_share_coordinator_fails_over(all_nodes_up: Cluster) -> None:
    cluster = all_nodes_up
    topic = "reset"
    create_topic(cluster, topic)
    # The group coordinator survives the kill, so the reset reaches a live
    # coordinator that must wait for (or report) the moving share coordinator.
    group = pick_group(cluster, "reset", topic, lambda share, group_node, leader: share not in (group_node, leader))
    partition = state_partition(group, topic)
    coordinator_node = cluster.leader_of(SHARE_STATE_TOPIC, partition)
    tp = TopicPartition(topic, 0)
    with admin_of(cluster) as admin:
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
    produce(cluster, topic, 10)
    consumer = share_consumer(cluster, group)
    try:
        consumer.subscribe([topic])
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        assert sorted(r.offset for r in got) == list(range(10))
        assert consumer.commit_sync().get(tp) is None
    finally:
        consumer.close()
    with admin_of(cluster) as admin:
        wait_group_empty(admin, group)
        wait_until(lambda: admin.list_share_group_offsets(group)[tp].start_offset == 10, 15, "every record accepted")
        state_epoch_before = describe_one(admin, group, topic).state_epoch

    cluster.kill(coordinator_node)
    errors: list[ShoalError] = []
    attempts = 0
    with Admin({"bootstrap.servers": cluster.bootstrap, "request.timeout.ms": 3000}) as admin:
        earliest = admin.list_offsets({tp: OffsetSpec.EARLIEST})[tp].result().offset
        assert earliest == 0
        deadline = time.monotonic() + 40
        while True:
            attempts += 1
            try:
                admin.alter_share_group_offsets(group, {tp: earliest})
                break
            except ShoalError as error:
                errors.append(error)
                assert error.retriable and error.name in RESET_RETRIABLE, error
                assert time.monotonic() < deadline, f"the reset never succeeded: {errors}"
        successor = cluster.leader_of(SHARE_STATE_TOPIC, partition, exclude=coordinator_node)
        assert successor != coordinator_node
        assert admin.list_share_group_offsets(group)[tp].start_offset == 0

    # The killed node comes back and, as the preferred replica, leads the state
    # partition again: it serves the reset state, not the one it had (start offset 10).
    cluster.restart(coordinator_node)
    wait_until(lambda: cluster.leader_of(SHARE_STATE_TOPIC, partition) == coordinator_node, 20,
               f"node {coordinator_node} to lead {SHARE_STATE_TOPIC}-{partition} again")
    with admin_of(cluster) as admin:
        assert answered(lambda: admin.list_share_group_offsets(group)[tp], "offsets").start_offset == 0

    again = share_consumer(cluster, group)
    try:
        again.subscribe([topic])
        redelivered: list = []
        deadline = time.monotonic() + 30
        while len(redelivered) < 10 and time.monotonic() < deadline:
            redelivered += again.poll(0.5)
        assert sorted(r.offset for r in redelivered) == list(range(10)), redelivered
        assert {r.delivery_count for r in redelivered} == {1}, "a reset starts a new state: counts start again"
        with admin_of(cluster) as admin:
            state = describe_one(admin, group, topic)
            assert state_epoch_before < state.state_epoch <= state_epoch_before + attempts, (
                state_epoch_before, state, errors)
        assert again.commit_sync().get(tp) is None
        with admin_of(cluster) as admin:
            wait_until(lambda: admin.list_share_group_offsets(group)[tp].start_offset == 10, 15,
                       "the records accepted again in the new state epoch")
    finally:
        again.close()
