"""Consumer groups through real ``python -m node`` processes (3 nodes, raw gRPC calls).

KIP-848 membership at the group coordinator: assignments are exclusive at
every step (a partition is handed to a new member only after its previous
owner reported giving it up), rebalances follow joins, leaves and session
expiry, OffsetCommit is fenced by the member epoch, and committed offsets
survive SIGKILL of the group coordinator (they are records on the replicated
``__consumer_offsets`` partition; the new leader replays them).

One cluster serves the module; each test uses its own topic and group ids, and
the test that kills a node restarts it. Waiting is always a condition with a
deadline.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from proto import shoal_pb2
from tests.harness import Cluster, make_cluster_fixture, wait_until

pytest.importorskip("node.server")
pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]

SESSION_TIMEOUT_MS = 3000
cluster3 = make_cluster_fixture(
    3,
    {
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.session.timeout.ms": str(SESSION_TIMEOUT_MS),
        "group.consumer.min.heartbeat.interval.ms": "100",
        "group.consumer.heartbeat.interval.ms": "300",
    },
    scope="module",
)

#: Errors after which a client looks the coordinator up again.
COORDINATOR_MOVED = {shoal_pb2.NOT_COORDINATOR, shoal_pb2.COORDINATOR_LOAD_IN_PROGRESS,
                     shoal_pb2.COORDINATOR_NOT_AVAILABLE}

TopicPartition = tuple[str, int]


def coordinator_of(cluster: Cluster, group: str) -> int | None:
    """The group coordinator as FindCoordinator reports it, or None while there is none."""
    for node_id in cluster.running():
        try:
            response = cluster.broker(node_id).FindCoordinator(
                shoal_pb2.FindCoordinatorRequest(key_type=0, keys=[group]), timeout=2)
        except grpc.RpcError:
            continue
        entry = response.coordinators[0]
        if entry.error_code == 0 and entry.node_id in cluster.running():
            return entry.node_id
    return None


def coordinator_call(cluster: Cluster, group: str, method: str, request, timeout_s: float = 30.0):
    """Call ``method`` on the group's coordinator, following it while it moves or loads."""

    def attempt():
        node_id = coordinator_of(cluster, group)
        if node_id is None:
            return None
        try:
            response = getattr(cluster.broker(node_id), method)(request, timeout=5)
        except grpc.RpcError:
            return None
        return None if response.error_code in COORDINATOR_MOVED else response

    return wait_until(attempt, timeout_s, f"{method} of group {group}")


class Member:
    """A consumer-group member that owns exactly what the coordinator gives it (raw gRPC)."""

    def __init__(self, cluster: Cluster, group: str, topic: str) -> None:
        self.cluster, self.group, self.topic = cluster, group, topic
        self.member_id = uuid.uuid4().hex
        self.epoch = 0
        self.owned: frozenset[TopicPartition] = frozenset()

    def heartbeat(self) -> shoal_pb2.ConsumerGroupHeartbeatResponse:
        """One heartbeat reporting what is owned; adopts the assignment it returns.

        The client owns exactly the returned assignment, so partitions taken
        away are given up at once and reported given up by the next heartbeat.
        """
        request = shoal_pb2.ConsumerGroupHeartbeatRequest(
            group_id=self.group, member_id=self.member_id, member_epoch=self.epoch, client_id="test")
        if self.epoch == 0:
            request.subscribed_topics.names.append(self.topic)
        by_topic: dict[str, list[int]] = {}
        for topic, partition in sorted(self.owned):
            by_topic.setdefault(topic, []).append(partition)
        request.owned_partitions.SetInParent()
        for topic, partitions in by_topic.items():
            request.owned_partitions.topic_partitions.add(topic=topic, partitions=partitions)
        response = coordinator_call(self.cluster, self.group, "ConsumerGroupHeartbeat", request)
        if response.error_code in (shoal_pb2.UNKNOWN_MEMBER_ID, shoal_pb2.FENCED_MEMBER_EPOCH):
            self.epoch, self.owned = 0, frozenset()  # removed: its partitions are lost; join again
            return response
        assert response.error_code == 0, response
        self.epoch = response.member_epoch
        self.owned = frozenset(
            (tp.topic, p) for tp in response.assignment.topic_partitions for p in tp.partitions)
        return response

    def leave(self) -> None:
        request = shoal_pb2.ConsumerGroupHeartbeatRequest(
            group_id=self.group, member_id=self.member_id, member_epoch=-1)
        response = coordinator_call(self.cluster, self.group, "ConsumerGroupHeartbeat", request)
        assert response.error_code == 0, response
        self.epoch, self.owned = -1, frozenset()

    def commit(self, offsets: dict[int, int]) -> shoal_pb2.OffsetCommitResponse:
        request = shoal_pb2.OffsetCommitRequest(
            group_id=self.group, member_id=self.member_id, member_epoch=self.epoch,
            partitions=[shoal_pb2.OffsetCommitPartition(topic=self.topic, partition=p, committed_offset=o,
                                                        metadata=f"by {self.member_id[:6]}")
                        for p, o in sorted(offsets.items())])
        return coordinator_call(self.cluster, self.group, "OffsetCommit", request)


def settle(members: list[Member], partitions: int, timeout_s: float = 30.0) -> None:
    """Heartbeat every member in turn until the assignment covers every partition.

    After every single heartbeat, what the members own must be disjoint: the
    coordinator hands a partition on only after its owner gave it up.
    """
    everything = {(members[0].topic, p) for p in range(partitions)}

    def balanced() -> bool:
        for member in members:
            member.heartbeat()
            owners: dict[TopicPartition, str] = {}
            for other in members:
                for tp in other.owned:
                    assert tp not in owners, f"{tp} owned by {owners[tp][:6]} and {other.member_id[:6]}"
                    owners[tp] = other.member_id
        sizes = sorted(len(member.owned) for member in members)
        covered = set().union(*(member.owned for member in members))
        return covered == everything and sizes[-1] - sizes[0] <= 1

    wait_until(balanced, timeout_s, f"a balanced assignment of {partitions} partitions over {len(members)} members")


def describe(cluster: Cluster, group: str) -> shoal_pb2.GroupDescription:
    def attempt():
        node_id = coordinator_of(cluster, group)
        if node_id is None:
            return None
        response = cluster.broker(node_id).DescribeGroups(
            shoal_pb2.DescribeGroupsRequest(group_ids=[group]), timeout=5)
        found = response.groups[0]
        return None if found.error_code in COORDINATOR_MOVED else found

    return wait_until(attempt, 30, f"DescribeGroups of {group}")


def fetch_offsets(cluster: Cluster, group: str, topic: str, partitions: int) -> dict[int, tuple[int, str]]:
    response = coordinator_call(cluster, group, "OffsetFetch", shoal_pb2.OffsetFetchRequest(
        group_id=group, partitions=[shoal_pb2.TopicPartition(topic=topic, partition=p) for p in range(partitions)]))
    assert response.error_code == 0, response
    return {o.partition: (o.committed_offset, o.metadata) for o in response.offsets}


def test_assignment_is_exclusive_and_rebalances_on_join_leave_and_expiry(cluster3):
    topic, group, partitions = "t-groups", f"g-{uuid.uuid4().hex[:8]}", 6
    cluster3.create_topic(topic, partitions, 3)
    a, b, c = (Member(cluster3, group, topic) for _ in range(3))

    settle([a], partitions)
    assert len(a.owned) == partitions

    settle([a, b], partitions)  # b joins: a gives up 3, b takes them only then
    assert sorted(len(m.owned) for m in (a, b)) == [3, 3]

    settle([a, b, c], partitions)
    assert [len(m.owned) for m in (a, b, c)] == [2, 2, 2]
    description = describe(cluster3, group)
    assert description.type == "consumer" and description.state == "Stable", description
    assert {m.member_id for m in description.members} == {a.member_id, b.member_id, c.member_id}

    b.leave()
    settle([a, c], partitions)
    assert sorted(len(m.owned) for m in (a, c)) == [3, 3]

    # c stops heartbeating: after the session timeout the coordinator removes it
    # and a receives every partition (c's were never confirmed given up, so the
    # coordinator must have dropped c's claims on expiry).
    settle([a], partitions, timeout_s=SESSION_TIMEOUT_MS / 1000 + 20)
    assert len(a.owned) == partitions
    assert [m.member_id for m in describe(cluster3, group).members] == [a.member_id]
    assert c.heartbeat().error_code == shoal_pb2.UNKNOWN_MEMBER_ID


def test_offset_commit_and_fetch(cluster3):
    topic, group, partitions = "t-commit", f"g-{uuid.uuid4().hex[:8]}", 3
    cluster3.create_topic(topic, partitions, 3)
    member = Member(cluster3, group, topic)
    settle([member], partitions)

    response = member.commit({0: 10, 1: 20})
    assert response.error_code == 0 and all(r.error_code == 0 for r in response.results), response
    assert fetch_offsets(cluster3, group, topic, partitions) == {
        0: (10, f"by {member.member_id[:6]}"), 1: (20, f"by {member.member_id[:6]}"), 2: (-1, "")}

    # A later commit replaces the offset; a stale member epoch is refused and changes nothing.
    assert member.commit({0: 15}).error_code == 0
    stale = shoal_pb2.OffsetCommitRequest(group_id=group, member_id=member.member_id, member_epoch=member.epoch + 7,
                                          partitions=[shoal_pb2.OffsetCommitPartition(topic=topic, partition=0,
                                                                                      committed_offset=99)])
    assert coordinator_call(cluster3, group, "OffsetCommit", stale).error_code == shoal_pb2.STALE_MEMBER_EPOCH
    unknown = shoal_pb2.OffsetCommitRequest(group_id=group, member_id=uuid.uuid4().hex, member_epoch=1,
                                            partitions=[shoal_pb2.OffsetCommitPartition(topic=topic, partition=0,
                                                                                        committed_offset=98)])
    assert coordinator_call(cluster3, group, "OffsetCommit", unknown).error_code == shoal_pb2.UNKNOWN_MEMBER_ID
    assert fetch_offsets(cluster3, group, topic, partitions)[0][0] == 15

    # A share group of the same id cannot commit (one namespace, kip932-facts §7).
    share = f"s-{uuid.uuid4().hex[:8]}"
    joined = coordinator_call(cluster3, share, "ShareGroupHeartbeat", shoal_pb2.ShareGroupHeartbeatRequest(
        group_id=share, member_id=uuid.uuid4().hex, member_epoch=0,
        subscribed_topics=shoal_pb2.SubscribedTopics(names=[topic])))
    assert joined.error_code == 0, joined
    refused = coordinator_call(cluster3, share, "OffsetCommit", shoal_pb2.OffsetCommitRequest(
        group_id=share, member_epoch=-1, partitions=[shoal_pb2.OffsetCommitPartition(topic=topic, partition=0,
                                                                                     committed_offset=1)]))
    assert refused.error_code == shoal_pb2.INCONSISTENT_GROUP_PROTOCOL, refused


def test_committed_offsets_survive_sigkill_of_the_group_coordinator(cluster3):
    topic, group, partitions = "t-coord-kill", f"g-{uuid.uuid4().hex[:8]}", 4
    cluster3.create_topic(topic, partitions, 3)
    a, b = Member(cluster3, group, topic), Member(cluster3, group, topic)
    settle([a, b], partitions)
    committed = {}
    for member in (a, b):
        offsets = {p: 100 + 10 * p for _, p in member.owned}
        response = member.commit(offsets)
        assert response.error_code == 0, response
        committed.update(offsets)
    assert sorted(committed) == list(range(partitions))

    victim = coordinator_of(cluster3, group)
    assert victim is not None
    cluster3.kill(victim)
    try:
        # A new leader of the group's __consumer_offsets partition replays the
        # commits (acks=all put them on the surviving replicas before the answer).
        wait_until(lambda: (coordinator_of(cluster3, group) or victim) != victim, 30, "a new group coordinator")
        fetched = fetch_offsets(cluster3, group, topic, partitions)
        assert {p: o for p, (o, _) in fetched.items()} == committed

        # Members are not persisted: both rejoin, share the partitions again
        # (exclusively) and commit at their new epochs.
        settle([a, b], partitions)
        owner_of_0 = a if (topic, 0) in a.owned else b
        assert owner_of_0.commit({0: 500}).error_code == 0
        assert fetch_offsets(cluster3, group, topic, partitions)[0][0] == 500
    finally:
        cluster3.restart(victim)
    assert fetch_offsets(cluster3, group, topic, partitions)[0][0] == 500
