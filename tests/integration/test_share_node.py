"""Share groups against real ``python -m node`` processes (3 nodes, raw gRPC calls).

One cluster serves every test of the module (each test uses its own topic and
group ids). Waiting is always a condition with a deadline.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from proto import batch as batch_codec
from proto import shoal_pb2
from tests.harness import make_cluster_fixture, wait_until

pytest.importorskip("node.server")

LOCK_MS = 1000
cluster3 = make_cluster_fixture(
    3,
    {
        "group.share.min.record.lock.duration.ms": "500",
        "group.share.record.lock.duration.ms": str(LOCK_MS),
    },
    scope="module",
)


def produce(cluster, topic: str, values: list[bytes]) -> None:
    leader = cluster.leader_of(topic, 0)
    records = [(None, v, (), int(time.time() * 1000)) for v in values]
    request = shoal_pb2.ProduceRequest(acks=-1, timeout_ms=10_000, partitions=[
        shoal_pb2.PartitionRecords(topic=topic, partition=0, records=batch_codec.build_batch(records))])
    response = cluster.broker(leader).Produce(request, timeout=15)
    assert response.results[0].error_code == 0, response


def coordinator_call(cluster, method: str, request, timeout_s: float = 20.0):
    """Call a group-coordinator RPC on whichever node coordinates the group."""
    def attempt():
        for node_id in cluster.running():
            try:
                response = getattr(cluster.broker(node_id), method)(request, timeout=5)
            except grpc.RpcError:
                continue
            code = getattr(response, "error_code", 0)
            if code in (14, 15, 16):  # load in progress, not available, not coordinator
                continue
            if method == "AlterGroupConfigs" and response.result.error_code in (14, 15, 16):
                continue
            if method == "DescribeGroups" and response.groups[0].error_code in (14, 15, 16):
                continue
            if method == "DeleteGroups" and response.results[0].error_code in (14, 15, 16):
                continue
            return response
        return None

    return wait_until(attempt, timeout_s, f"{method} on the group coordinator")


class Member:
    """A share-group member talking raw gRPC to the leader of partition 0."""

    def __init__(self, cluster, group: str, topic: str) -> None:
        self.cluster, self.group, self.topic = cluster, group, topic
        self.member_id = uuid.uuid4().hex
        self.epoch = 0

    def fetch(self, acks=(), max_records=500, max_wait_ms=0, close=False):
        leader = self.cluster.leader_of(self.topic, 0)
        part = shoal_pb2.ShareFetchPartition(topic=self.topic, partition=0)
        for first, last, ack_type in acks:
            part.acknowledgement_batches.add(first_offset=first, last_offset=last, acknowledge_types=[ack_type])
        if self.epoch == 0 and acks:
            self.fetch()  # a session must be open before acknowledging
        request = shoal_pb2.ShareFetchRequest(
            group_id=self.group, member_id=self.member_id, share_session_epoch=-1 if close else self.epoch,
            max_wait_ms=max_wait_ms, max_records=max_records, max_bytes=1 << 20, partitions=[part])
        response = self.cluster.broker(leader).ShareFetch(request, timeout=max_wait_ms / 1000 + 15)
        self.epoch = 0 if close else self.epoch + 1
        return response

    def acquired(self, response) -> list[tuple[int, int, int]]:
        for p in response.partitions:
            assert p.error_code in (0, 5, 6, 15, 14), p
        return [(r.first_offset, r.last_offset, r.delivery_count)
                for p in response.partitions for r in p.acquired_records]


def offsets(ranges) -> list[int]:
    return [o for first, last, _ in ranges for o in range(first, last + 1)]


def setup_group(cluster, topic: str, group: str, configs: dict[str, str] | None = None) -> None:
    cluster.create_topic(topic, 1, 3)
    settings = {"share.auto.offset.reset": "earliest", **(configs or {})}
    response = coordinator_call(cluster, "AlterGroupConfigs",
                                shoal_pb2.AlterGroupConfigsRequest(group_id=group, set=settings))
    assert response.result.error_code == 0, response


def join(cluster, group: str, topic: str, member_id: str):
    response = coordinator_call(cluster, "ShareGroupHeartbeat", shoal_pb2.ShareGroupHeartbeatRequest(
        group_id=group, member_id=member_id, member_epoch=0,
        subscribed_topics=shoal_pb2.SubscribedTopics(names=[topic])))
    return response


def drain(member: Member, until, timeout_s: float = 30.0, ack_type: int = 1) -> list[tuple[int, int, int]]:
    """Fetch and acknowledge until ``until(seen)``; returns every acquired range."""
    seen: list[tuple[int, int, int]] = []
    pending: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout_s
    while not until(seen) and time.monotonic() < deadline:
        response = member.fetch(acks=[(f, l, ack_type) for f, l, _ in pending], max_wait_ms=300)
        for p in response.partitions:
            assert p.acknowledge_error_code == 0, p
        pending = member.acquired(response)
        seen += pending
    if pending:
        member.fetch(acks=[(f, l, ack_type) for f, l, _ in pending])
    return seen


def test_members_share_one_partition_and_each_record_is_accepted_once(cluster3):
    setup_group(cluster3, "t-disjoint", "g-disjoint")
    produce(cluster3, "t-disjoint", [f"v{i}".encode() for i in range(30)])
    members = [Member(cluster3, "g-disjoint", "t-disjoint") for _ in range(3)]
    accepted: list[int] = []
    deadline = time.monotonic() + 30
    held: dict[int, list] = {i: [] for i in range(3)}
    while len(accepted) < 30 and time.monotonic() < deadline:
        for i, member in enumerate(members):
            response = member.fetch(acks=[(f, l, 1) for f, l, _ in held[i]], max_records=4, max_wait_ms=100)
            for p in response.partitions:
                assert p.acknowledge_error_code == 0, p
            accepted += offsets(held[i])
            held[i] = member.acquired(response)
            in_flight = [o for j in held for o in offsets(held[j])]
            assert len(in_flight) == len(set(in_flight)), "an offset is held by two members"
    assert sorted(accepted) == list(range(30))


def test_lock_expiry_release_limit_reject_and_close(cluster3):
    setup_group(cluster3, "t-life", "g-life", {"share.delivery.count.limit": "3"})
    produce(cluster3, "t-life", [b"a", b"b", b"c"])
    m1, m2 = Member(cluster3, "g-life", "t-life"), Member(cluster3, "g-life", "t-life")
    first = m1.acquired(m1.fetch(max_records=1, max_wait_ms=2000))
    assert first and first[0][2] == 1
    # Lock expiry: the records come back to another member with delivery count 2.
    again = wait_until(lambda: m2.acquired(m2.fetch(max_wait_ms=500)), 10, "redelivery after lock expiry")
    assert {c for _, _, c in again} == {2}
    # Release until the limit (3): the third release archives.
    counts = [again[0][2]]
    while True:
        response = m2.fetch(acks=[(f, l, 2) for f, l, _ in again], max_wait_ms=300)
        again = m2.acquired(response)
        if not again:
            break
        counts.append(again[0][2])
    # Offsets 0-2 came back together with count 2; on their last attempt each is
    # delivered alone (poison isolation, kip932-facts §1.5), so one bad record
    # cannot archive its neighbours.
    assert counts == [2, 3, 3, 3]
    # Nothing is left: everything was archived at the limit, the start offset moved on.
    produce(cluster3, "t-life", [b"d"])
    got = wait_until(lambda: m1.acquired(m1.fetch(max_wait_ms=500)), 10, "the new record")
    assert offsets(got) == [3]
    # Reject archives at once.
    m1.fetch(acks=[(3, 3, 3)])
    produce(cluster3, "t-life", [b"e"])
    got = wait_until(lambda: m2.acquired(m2.fetch(max_wait_ms=500)), 10, "record 4")
    assert offsets(got) == [4]
    # Closing the session (epoch -1) releases record 4 at once.
    m2.fetch(close=True)
    got = wait_until(lambda: m1.acquired(m1.fetch(max_wait_ms=500)), 5, "record 4 after close")
    assert got == [(4, 4, 2)]


def test_two_groups_see_everything_and_namespace_conflicts(cluster3):
    setup_group(cluster3, "t-two", "g-two-a")
    setup_group(cluster3, "t-two", "g-two-b")
    produce(cluster3, "t-two", [f"v{i}".encode() for i in range(10)])
    for group in ("g-two-a", "g-two-b"):
        member = Member(cluster3, group, "t-two")
        seen = drain(member, lambda s: len(offsets(s)) >= 10)
        assert sorted(offsets(seen)) == list(range(10))
    joined = join(cluster3, "g-two-a", "t-two", uuid.uuid4().hex)
    assert joined.error_code == 0 and joined.member_epoch > 0
    conflict = coordinator_call(cluster3, "ConsumerGroupHeartbeat", shoal_pb2.ConsumerGroupHeartbeatRequest(
        group_id="g-two-a", member_id=uuid.uuid4().hex, member_epoch=0,
        subscribed_topics=shoal_pb2.SubscribedTopics(names=["t-two"])))
    assert conflict.error_code == shoal_pb2.INCONSISTENT_GROUP_PROTOCOL


def test_reset_to_earliest_redelivers_and_lag_drains_to_zero(cluster3):
    setup_group(cluster3, "t-reset", "g-reset")
    produce(cluster3, "t-reset", [f"v{i}".encode() for i in range(8)])
    member_id = uuid.uuid4().hex
    assert join(cluster3, "g-reset", "t-reset", member_id).error_code == 0
    member = Member(cluster3, "g-reset", "t-reset")
    drain(member, lambda s: len(offsets(s)) >= 8)
    describe = shoal_pb2.DescribeShareGroupOffsetsRequest(group_id="g-reset")

    def drained():
        response = coordinator_call(cluster3, "DescribeShareGroupOffsets", describe)
        entry = [o for o in response.offsets if o.topic == "t-reset"]
        return entry and entry[0].start_offset == 8 and entry[0].lag == 0

    wait_until(drained, 15, "lag 0 after the drain")
    alter = shoal_pb2.AlterShareGroupOffsetsRequest(group_id="g-reset", offsets=[
        shoal_pb2.SharePartitionOffset(topic="t-reset", partition=0, start_offset=0)])
    busy = coordinator_call(cluster3, "AlterShareGroupOffsets", alter)
    assert busy.error_code == shoal_pb2.GROUP_NOT_EMPTY
    left = coordinator_call(cluster3, "ShareGroupHeartbeat", shoal_pb2.ShareGroupHeartbeatRequest(
        group_id="g-reset", member_id=member_id, member_epoch=-1))
    assert left.error_code == 0
    reset = coordinator_call(cluster3, "AlterShareGroupOffsets", alter)
    assert reset.error_code == 0 and all(r.error_code == 0 for r in reset.results), reset
    again = drain(member, lambda s: len(offsets(s)) >= 8)
    assert sorted(offsets(again)) == list(range(8))


def test_share_rpc_on_consumer_group_is_refused(cluster3):
    cluster3.create_topic("t-ns", 1, 3)
    consumer = coordinator_call(cluster3, "ConsumerGroupHeartbeat", shoal_pb2.ConsumerGroupHeartbeatRequest(
        group_id="g-ns", member_id=uuid.uuid4().hex, member_epoch=0,
        subscribed_topics=shoal_pb2.SubscribedTopics(names=["t-ns"])))
    assert consumer.error_code == 0
    share = join(cluster3, "g-ns", "t-ns", uuid.uuid4().hex)
    assert share.error_code == shoal_pb2.GROUP_ID_NOT_FOUND
