"""Share-partition leaders, share coordinator and group coordinator in one process.

A single node's data plane is played by ``OneNodePartitions``: real
``PartitionLog`` directories under tmp_path, where this node leads every
partition and the high watermark is the log end offset (replication factor 1).
Everything above it (runtime, share coordinator, persister, share manager,
group coordinator) is the production code, wired by ``GroupServices``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import pytest

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_partition import RecordState
from coordinator.share_state import ShareKey
from node.group_rpc import GroupServices
from node.interfaces import (
    CONSUMER_OFFSETS_TOPIC,
    SHARE_STATE_TOPIC,
    AppendResult,
    LeadershipChange,
    PartitionLeader,
    monotonic_ms,
    wall_ms,
)
from node.log import LogConfig, PartitionLog
from proto import batch as batch_codec
from proto import shoal_pb2

LOCK_MS = 600
SETTINGS = {
    "offsets.topic.num.partitions": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "share.coordinator.snapshot.update.records.per.snapshot": "3",
    "group.share.min.record.lock.duration.ms": "500",
    "group.share.record.lock.duration.ms": str(LOCK_MS),
}


class OneNodePartitions:
    """LocalPartitions for a one-node cluster: real logs, this node leads everything."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.logs: dict[tuple[str, int], PartitionLog] = {}
        self.epochs: dict[tuple[str, int], int] = {}
        self._leadership: list[Callable[[LeadershipChange], None]] = []
        self._log_start: list[Callable[[str, int, int], None]] = []
        self._appended = asyncio.Event()

    def create(self, topic: str, partitions: int) -> None:
        for partition in range(partitions):
            key = (topic, partition)
            if key not in self.logs:
                self.logs[key] = PartitionLog(self._directory / f"{topic}-{partition}", LogConfig(), wall_ms())
                self.epochs[key] = 0

    def bump_epoch(self, topic: str, partition: int) -> None:
        """A new leader epoch on the same node (as after a failover and back)."""
        key = (topic, partition)
        self.epochs[key] += 1
        for listener in list(self._leadership):
            listener(LeadershipChange(topic, partition, True, self.epochs[key]))

    def _log(self, topic: str, partition: int) -> PartitionLog:
        try:
            return self.logs[(topic, partition)]
        except KeyError:
            raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{partition}") from None

    def is_leader(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self.logs

    def leader_epoch(self, topic: str, partition: int) -> int:
        return self.epochs.get((topic, partition), -1)

    async def append(self, topic, partition, batches, *, acks=-1, timeout_ms=5000, expected_leader_epoch=-1):
        if expected_leader_epoch >= 0 and expected_leader_epoch != self.epochs[(topic, partition)]:
            raise OperatingError(ErrorCode.FENCED_LEADER_EPOCH, "stale leader epoch")
        info = self._log(topic, partition).append_as_leader(batches, self.epochs[(topic, partition)], wall_ms())
        self._appended.set()
        self._appended = asyncio.Event()
        return AppendResult(info.first_offset, info.last_offset)

    def read(self, topic, partition, start_offset, max_bytes):
        log = self._log(topic, partition)
        return log.read(start_offset, max_bytes, log.log_end_offset)

    def read_all_committed(self, topic, partition, start_offset):
        log = self._log(topic, partition)
        return log.read(max(start_offset, log.log_start_offset), 1 << 30, log.log_end_offset)

    def high_watermark(self, topic, partition):
        return self._log(topic, partition).log_end_offset

    def log_start_offset(self, topic, partition):
        return self._log(topic, partition).log_start_offset

    def log_end_offset(self, topic, partition):
        return self._log(topic, partition).log_end_offset

    async def offset_for_timestamp(self, topic, partition, timestamp_ms):
        found = self._log(topic, partition).offset_for_timestamp(timestamp_ms)
        return self.high_watermark(topic, partition) if found is None else found

    async def delete_records_before(self, topic, partition, offset):
        log = self._log(topic, partition)
        log.delete_records_before(offset)
        for listener in list(self._log_start):
            listener(topic, partition, log.log_start_offset)
        return log.log_start_offset

    async def wait_for_high_watermark(self, topic, partition, above, timeout_ms):
        deadline_ms = monotonic_ms() + timeout_ms
        while self.high_watermark(topic, partition) <= above:
            remaining_ms = deadline_ms - monotonic_ms()
            if remaining_ms <= 0:
                return False
            try:
                await asyncio.wait_for(asyncio.shield(self._appended.wait()), remaining_ms / 1000)
            except asyncio.TimeoutError:
                return False
        return True

    def add_leadership_listener(self, listener):
        self._leadership.append(listener)

    def add_log_start_listener(self, listener):
        self._log_start.append(listener)

    def close(self) -> None:
        for log in self.logs.values():
            log.close()


class OneNodeCluster:
    node_id = 1

    def __init__(self, local: OneNodePartitions) -> None:
        self._local = local

    def partition_count(self, topic):
        return sum(1 for t, _ in self._local.logs if t == topic)

    def topic_partition_counts(self):
        counts: dict[str, int] = {}
        for topic, _ in self._local.logs:
            if not topic.startswith("__"):
                counts[topic] = counts.get(topic, 0) + 1
        return counts

    def partition_leader(self, topic, partition):
        return PartitionLeader(1, self._local.leader_epoch(topic, partition))

    def broker_address(self, node_id):
        return None

    def add_metadata_listener(self, listener):
        pass


class NoPeers:
    """A one-node cluster never calls a peer; calling one is a bug in the routing."""

    def internal(self, node_id):
        raise AssertionError(f"unexpected call to node {node_id}")

    broker = internal


async def wait_for(condition, timeout_s: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Node:
    def __init__(self, tmp_path: Path, local: OneNodePartitions | None = None, topic_partitions: int = 1) -> None:
        """One node's group services over ``local`` (a OneNodePartitions, or a test double of it)."""
        self.local = local if local is not None else OneNodePartitions(tmp_path)
        self.local.create(CONSUMER_OFFSETS_TOPIC, 1)
        self.local.create(SHARE_STATE_TOPIC, 1)
        self.local.create("t", topic_partitions)
        self.cluster = OneNodeCluster(self.local)
        self.services: GroupServices | None = None

    async def start(self) -> GroupServices:
        self.services = GroupServices(self.local, self.cluster, NoPeers(), SETTINGS)
        await self.services.start()
        await wait_for(
            lambda: self.services.group_coordinator.runtime.loaded_partitions()
            and self.services.share_coordinator.runtime.loaded_partitions(),
            5, "coordinators to load",
        )
        return self.services

    async def produce(self, count: int, prefix: str = "v") -> None:
        records = [(None, f"{prefix}{i}".encode(), (), wall_ms()) for i in range(count)]
        await self.local.append("t", 0, batch_codec.build_batch(records))


def fetch_request(member: str, epoch: int, acks=(), max_records=500, max_wait_ms=0, earliest=True):
    part = shoal_pb2.ShareFetchPartition(topic="t", partition=0)
    for first, last, ack_type in acks:
        part.acknowledgement_batches.add(first_offset=first, last_offset=last, acknowledge_types=[ack_type])
    return shoal_pb2.ShareFetchRequest(
        group_id="g", member_id=member, share_session_epoch=epoch, max_wait_ms=max_wait_ms,
        max_records=max_records, max_bytes=1 << 20, partitions=[part],
    )


def acquired(response) -> list[tuple[int, int, int]]:
    return [
        (r.first_offset, r.last_offset, r.delivery_count)
        for p in response.partitions for r in p.acquired_records
    ]


def offsets(ranges) -> list[int]:
    return [o for first, last, _ in ranges for o in range(first, last + 1)]


async def set_earliest(services: GroupServices) -> None:
    response = await services.AlterGroupConfigs(
        shoal_pb2.AlterGroupConfigsRequest(group_id="g", set={"share.auto.offset.reset": "earliest"}), None
    )
    assert response.result.error_code == 0, response.result.error_message


def run(coroutine):
    return asyncio.run(coroutine)


def test_members_get_disjoint_records_and_accept_is_durable(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        for i in range(4):
            await node.produce(5, prefix=f"b{i}-")
        first = await services.share_manager.ShareFetch(fetch_request("m1", 0, max_records=5))
        second = await services.share_manager.ShareFetch(fetch_request("m2", 0, max_records=5))
        got_first, got_second = offsets(acquired(first)), offsets(acquired(second))
        assert got_first and got_second
        assert not set(got_first) & set(got_second)
        assert all(count == 1 for _, _, count in acquired(first) + acquired(second))
        # Accept everything each member holds, piggybacked on its next fetch.
        ack1 = await services.share_manager.ShareFetch(
            fetch_request("m1", 1, acks=[(r[0], r[1], 1) for r in acquired(first)], max_records=20))
        ack2 = await services.share_manager.ShareFetch(
            fetch_request("m2", 1, acks=[(r[0], r[1], 1) for r in acquired(second)], max_records=20))
        for response in (ack1, ack2):
            assert all(p.acknowledge_error_code == 0 for p in response.partitions), response
        rest = offsets(acquired(ack1)) + offsets(acquired(ack2))
        assert sorted(got_first + got_second + rest) == list(range(20))
        await services.share_manager.ShareAcknowledge(shoal_pb2.ShareAcknowledgeRequest(
            group_id="g", member_id="m1", share_session_epoch=2,
            partitions=[shoal_pb2.ShareFetchPartition(topic="t", partition=0, acknowledgement_batches=[
                shoal_pb2.AcknowledgementBatch(first_offset=r[0], last_offset=r[1], acknowledge_types=[1])
                for r in acquired(ack1)])]))
        await services.share_manager.ShareAcknowledge(shoal_pb2.ShareAcknowledgeRequest(
            group_id="g", member_id="m2", share_session_epoch=2,
            partitions=[shoal_pb2.ShareFetchPartition(topic="t", partition=0, acknowledgement_batches=[
                shoal_pb2.AcknowledgementBatch(first_offset=r[0], last_offset=r[1], acknowledge_types=[1])
                for r in acquired(ack2)])]))
        described = await services.share_manager.DescribeSharePartitions(shoal_pb2.DescribeSharePartitionsRequest(group_id="g"))
        assert described.partitions[0].start_offset == 20
        assert described.partitions[0].durable_start_offset == 20  # the acks' replies waited for it
        assert described.partitions[0].lag == 0
        # Durable: a fresh node process on the same logs sees the start offset.
        await services.stop()
        node.local.bump_epoch("t", 0)
        services = await node.start()
        response = await services.share_manager.ShareFetch(fetch_request("m3", 0))
        assert acquired(response) == []
        join = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m3", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        assert join.error_code == 0, join
        offsets_response = await services.DescribeShareGroupOffsets(
            shoal_pb2.DescribeShareGroupOffsetsRequest(group_id="g",
                                                       partitions=[shoal_pb2.TopicPartition(topic="t", partition=0)]),
            None)
        assert offsets_response.offsets[0].start_offset == 20, offsets_response
        assert offsets_response.offsets[0].lag == 0
        await services.stop()
        node.local.close()

    run(scenario())


def test_describe_loads_an_initialized_partition_but_never_initializes_one(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        await node.produce(4)
        first = await services.share_manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(first) == [(0, 3, 1)]
        # A new leader (here: the node restarted under a new leader epoch) has
        # loaded nothing; naming the partition loads its durable state.
        await services.stop()
        node.local.bump_epoch("t", 0)
        services = await node.start()
        named = shoal_pb2.DescribeSharePartitionsRequest(
            group_id="g", partitions=[shoal_pb2.TopicPartition(topic="t", partition=0)])
        described = await services.share_manager.DescribeSharePartitions(named)
        [state] = described.partitions
        assert (state.start_offset, state.durable_start_offset, state.high_watermark) == (0, 0, 4)
        # The acquisition was persisted as "available, delivered once".
        assert [(r.first_offset, r.last_offset, r.state, r.delivery_count) for r in state.runs] == [
            (0, 3, int(RecordState.AVAILABLE), 1)]
        # A group that never fetched the partition stays uninitialized: a describe
        # must not fix its start offset now (auto.offset.reset applies at the first fetch).
        other = shoal_pb2.DescribeSharePartitionsRequest(
            group_id="g-new", partitions=[shoal_pb2.TopicPartition(topic="t", partition=0)])
        assert list((await services.share_manager.DescribeSharePartitions(other)).partitions) == []
        summary = await services.persister.summary(ShareKey("g-new", "t", 0))
        assert summary.start_offset == -1
        await services.stop()
        node.local.close()

    run(scenario())


def test_lock_expiry_redelivers_with_count_two_and_release_archives_at_limit(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        await node.produce(1)
        response = await services.share_manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(response) == [(0, 0, 1)]
        assert response.acquisition_lock_timeout_ms == LOCK_MS
        # Nobody acknowledges: the lock expires and the record comes back with count 2.
        again = await services.share_manager.ShareFetch(fetch_request("m2", 0, max_wait_ms=5000))
        assert acquired(again) == [(0, 0, 2)]
        assert services.share_manager.lock_expirations_total == 1
        # Release until the limit (5): deliveries 3, 4, 5, then archived.
        epoch, counts = 1, []
        last = again
        for _ in range(4):
            ranges = acquired(last)
            if not ranges:
                break
            last = await services.share_manager.ShareFetch(
                fetch_request("m2", epoch, acks=[(0, 0, 2)], max_wait_ms=200))
            epoch += 1
            counts += [c for _, _, c in acquired(last)]
        assert counts == [3, 4, 5]
        assert services.share_manager.delivery_limit_archives_total == 1
        described = await services.share_manager.DescribeSharePartitions(shoal_pb2.DescribeSharePartitionsRequest(group_id="g"))
        assert described.partitions[0].start_offset == 1
        await services.stop()
        node.local.close()

    run(scenario())


def test_acquisition_is_persisted_so_counts_survive_a_reload(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        await node.produce(3)
        response = await services.share_manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(response) == [(0, 2, 1)]
        # A new leader epoch (failover and back): the state is reloaded from the
        # share coordinator and the acquisition was durable, so the count goes on.
        node.local.bump_epoch("t", 0)
        again = await services.share_manager.ShareFetch(fetch_request("m2", 0))
        assert acquired(again) == [(0, 2, 2)]
        # The old member's late acknowledgement is refused: it no longer holds the records.
        late = await services.share_manager.ShareFetch(fetch_request("m1", 1, acks=[(0, 2, 1)]))
        assert late.partitions[0].acknowledge_error_code == ErrorCode.INVALID_RECORD_STATE
        # Reject archives: nothing left to deliver.
        rejected = await services.share_manager.ShareFetch(fetch_request("m2", 1, acks=[(0, 2, 3)]))
        assert rejected.partitions[0].acknowledge_error_code == 0
        assert acquired(rejected) == []
        await services.stop()
        node.local.close()

    run(scenario())


def test_share_state_maintenance_prunes_then_goes_quiet(tmp_path):
    """Regression: every maintenance tick re-snapshotted every idle key, forever.

    A share partition whose group stopped consuming still got a fresh snapshot
    on each tick (its latest snapshot is always older than the previous tick's
    high watermark), so ``__share_group_state`` grew by one record per idle
    share partition per tick and never settled. Now a tick snapshots cold keys
    only while that lets pruning free something, then writes nothing.
    """
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        for _ in range(12):
            await node.produce(1)
        # One record per fetch, each acknowledging the previous one: many state
        # writes (a snapshot every 3 updates).
        response = await services.share_manager.ShareFetch(fetch_request("m1", 0, max_records=1))
        for epoch in range(1, 13):
            [(offset, _, _)] = acquired(response)
            response = await services.share_manager.ShareFetch(
                fetch_request("m1", epoch, acks=[(offset, offset, 1)], max_records=1))
            assert response.partitions[0].acknowledge_error_code == 0
        assert acquired(response) == []
        coordinator = services.share_coordinator
        state_log = node.local.logs[(SHARE_STATE_TOPIC, 0)]
        written = state_log.log_end_offset
        assert written > 6
        ends = []
        for _ in range(6):
            await coordinator.maintain_partition(0)
            ends.append(state_log.log_end_offset)
        # At most one round of cold snapshots (after the first tick sets the
        # mark), then the log end stays where it is: nothing more to free.
        assert ends[-1] <= written + 1, ends
        assert len(set(ends[2:])) == 1, ends
        assert state_log.log_start_offset > 0
        summary = coordinator.summary(ShareKey("g", "t", 0))
        assert summary.start_offset == 12
        # The pruned log recovers the same state.
        node.local.bump_epoch(SHARE_STATE_TOPIC, 0)
        await wait_for(lambda: coordinator.runtime.is_loaded(0), 5, "the state partition to reload")
        assert coordinator.summary(ShareKey("g", "t", 0)).start_offset == 12
        await services.stop()
        node.local.close()

    run(scenario())


def test_share_session_rules(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        manager = services.share_manager
        with pytest.raises(OperatingError) as error:
            await manager.ShareFetch(fetch_request("m1", 0, acks=[(0, 0, 1)]))
        assert error.value.code == ErrorCode.INVALID_REQUEST
        with pytest.raises(OperatingError) as error:
            await manager.ShareFetch(fetch_request("m1", 3))
        assert error.value.code == ErrorCode.SHARE_SESSION_NOT_FOUND
        await manager.ShareFetch(fetch_request("m1", 0))
        with pytest.raises(OperatingError) as error:
            await manager.ShareFetch(fetch_request("m1", 7))
        assert error.value.code == ErrorCode.INVALID_SHARE_SESSION_EPOCH
        await manager.ShareFetch(fetch_request("m1", 1))
        await manager.ShareFetch(fetch_request("m1", -1))
        assert manager.session_count == 0
        manager._max_share_sessions = 1
        await manager.ShareFetch(fetch_request("m1", 0))
        with pytest.raises(OperatingError) as error:
            await manager.ShareFetch(fetch_request("m2", 0))
        assert error.value.code == ErrorCode.SHARE_SESSION_LIMIT_REACHED
        await services.stop()
        node.local.close()

    run(scenario())


def test_close_releases_and_long_poll_wakes_on_produce(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        manager = services.share_manager
        # Default reset is latest: only records produced after the first fetch count.
        await node.produce(2, prefix="old")
        empty = await manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(empty) == []
        poll = asyncio.ensure_future(manager.ShareFetch(fetch_request("m1", 1, max_wait_ms=5000)))
        await asyncio.sleep(0.05)
        assert not poll.done()
        await node.produce(2, prefix="new")
        response = await asyncio.wait_for(poll, 5)
        assert acquired(response) == [(2, 3, 1)]
        await manager.ShareFetch(fetch_request("m1", -1))
        released = await manager.ShareFetch(fetch_request("m2", 0))
        assert acquired(released) == [(2, 3, 2)]
        await services.stop()
        node.local.close()

    run(scenario())


def test_group_namespace_and_alter_offsets_requires_empty_group(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        join = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        assert join.error_code == 0 and join.member_epoch > 0
        assert [(tp.topic, list(tp.partitions)) for tp in join.assignment.topic_partitions] == [("t", [0])]
        conflict = await services.ConsumerGroupHeartbeat(shoal_pb2.ConsumerGroupHeartbeatRequest(
            group_id="g", member_id="c1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        assert conflict.error_code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        await services.ConsumerGroupHeartbeat(shoal_pb2.ConsumerGroupHeartbeatRequest(
            group_id="cg", member_id="c1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        wrong = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="cg", member_id="m1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        assert wrong.error_code == ErrorCode.GROUP_ID_NOT_FOUND
        alter = shoal_pb2.AlterShareGroupOffsetsRequest(
            group_id="g", offsets=[shoal_pb2.SharePartitionOffset(topic="t", partition=0, start_offset=0)])
        busy = await services.AlterShareGroupOffsets(alter, None)
        assert busy.error_code == ErrorCode.GROUP_NOT_EMPTY
        deleted = await services.DeleteGroups(shoal_pb2.DeleteGroupsRequest(group_ids=["g"]), None)
        assert deleted.results[0].error_code == ErrorCode.GROUP_NOT_EMPTY
        # Consume and accept what exists, then leave and reset to earliest: redelivered.
        await node.produce(3)
        await set_earliest(services)
        first = await services.share_manager.ShareFetch(fetch_request("m1", 0))
        assert offsets(acquired(first)) == [0, 1, 2]
        await services.share_manager.ShareFetch(fetch_request("m1", 1, acks=[(0, 2, 1)]))
        leave = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m1", member_epoch=-1), None)
        assert leave.error_code == 0
        reset = await services.AlterShareGroupOffsets(alter, None)
        assert reset.error_code == 0 and reset.results[0].error_code == 0, reset
        # The live share partition notices the new state epoch within a few
        # seconds (it has nothing to write, so nothing fences it sooner).
        again = await services.share_manager.ShareFetch(fetch_request("m2", 0))
        epoch = 1
        deadline = asyncio.get_running_loop().time() + 10
        while not acquired(again) and asyncio.get_running_loop().time() < deadline:
            again = await services.share_manager.ShareFetch(fetch_request("m2", epoch, max_wait_ms=300))
            epoch += 1
        assert offsets(acquired(again)) == [0, 1, 2]
        assert [c for _, _, c in acquired(again)] == [1]
        listed = await services.ListGroups(shoal_pb2.ListGroupsRequest(), None)
        assert {(g.group_id, g.type) for g in listed.groups} == {("g", "share"), ("cg", "consumer")}
        await services.stop()
        node.local.close()

    run(scenario())


class GatedPartitions(OneNodePartitions):
    """Appends to ``gated`` topics wait until ``gate`` opens (an acks=-1 append waiting on followers)."""

    def __init__(self, directory: Path, gated: set[str]) -> None:
        super().__init__(directory)
        self.gated = gated
        self.gate = asyncio.Event()
        self.waiting = 0

    async def append(self, topic, partition, batches, **kwargs):
        if topic in self.gated:
            self.waiting += 1
            await self.gate.wait()
            self.waiting -= 1
        return await super().append(topic, partition, batches, **kwargs)


def test_a_join_during_an_offsets_reset_waits_for_it(tmp_path):
    async def scenario():
        node = Node(tmp_path)
        services = await node.start()
        for epoch in (0, -1):  # a member joins and leaves: the group exists and is empty
            response = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
                group_id="g", member_id="m1", member_epoch=epoch,
                subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])), None)
            assert response.error_code == 0, response
        # Hold the reset at its share-coordinator write.
        reached, release = asyncio.Event(), asyncio.Event()
        initialize = services.persister.initialize

        async def held_initialize(*args, **kwargs):
            reached.set()
            await release.wait()
            return await initialize(*args, **kwargs)

        services.persister.initialize = held_initialize
        alter = asyncio.ensure_future(services.AlterShareGroupOffsets(shoal_pb2.AlterShareGroupOffsetsRequest(
            group_id="g", offsets=[shoal_pb2.SharePartitionOffset(topic="t", partition=0, start_offset=2)]), None))
        join_request = shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m2", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"]))

        await asyncio.wait_for(reached.wait(), 5)  # emptiness checked, new state not yet written
        held = await services.ShareGroupHeartbeat(join_request, None)
        assert held.error_code == ErrorCode.REBALANCE_IN_PROGRESS, held
        assert not alter.done()
        release.set()
        reset = await asyncio.wait_for(alter, 10)
        assert reset.error_code == 0 and reset.results[0].error_code == 0, reset
        joined = await services.ShareGroupHeartbeat(join_request, None)
        assert joined.error_code == 0 and joined.member_epoch > 0
        await services.stop()
        node.local.close()

    run(scenario())


def test_operations_in_flight_fail_when_coordinator_leadership_moves(tmp_path):
    """Regression: a shard unloaded mid-append left that round's callers waiting forever.

    1. A heartbeat's records are being appended (acks=-1 waits for followers).
    2. The leader epoch of ``__consumer_offsets-0`` moves; the runtime unloads
       the shard and cancels its worker, which was awaiting that append.
    3. The operations taken into the round were neither in the queue (failed by
       the unload) nor completed by the cancelled round: their callers hung.
       For the share coordinator the caller is the share partition's single
       writer, so every later write of that share partition hung behind it.
    Now they fail with NOT_COORDINATOR (retriable) and the shard reloads.
    """
    async def scenario():
        node = Node(tmp_path, GatedPartitions(tmp_path / "gated", {CONSUMER_OFFSETS_TOPIC}))
        node.local.gate.set()
        services = await node.start()
        node.local.gate.clear()
        heartbeat = asyncio.ensure_future(services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None))
        await wait_for(lambda: node.local.waiting == 1, 5, "the heartbeat's append to start")
        node.local.bump_epoch(CONSUMER_OFFSETS_TOPIC, 0)
        response = await asyncio.wait_for(heartbeat, 5)
        assert response.error_code == ErrorCode.NOT_COORDINATOR, response
        node.local.gate.set()
        runtime = services.group_coordinator.runtime
        await wait_for(lambda: runtime.is_loaded(0), 5, "the shard to load at the new epoch")
        assert runtime.leader_epoch(0) == 1
        again = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        assert again.error_code == 0, again
        await services.stop()
        node.local.close()

    run(scenario())


def test_persister_gives_up_on_an_unanswered_attempt_at_its_deadline(tmp_path):
    """Regression: the deadline was checked only between attempts, so a local
    coordinator call that never answered held the caller (a share partition's
    only writer) forever instead of failing it for a reload."""
    from coordinator.share_state import ShareKey
    from node.share_persister import SharePersister

    class SilentCoordinator:
        def __init__(self) -> None:
            self.calls = 0

        async def write(self, *args) -> None:
            self.calls += 1
            await asyncio.Event().wait()

    async def scenario():
        local = OneNodePartitions(tmp_path)
        local.create(SHARE_STATE_TOPIC, 1)
        coordinator = SilentCoordinator()
        persister = SharePersister(OneNodeCluster(local), NoPeers(), coordinator, 1)
        started = monotonic_ms()
        with pytest.raises(OperatingError) as error:
            await asyncio.wait_for(persister.write(ShareKey("g", "t", 0), 0, 0, 0, 0, [], timeout_ms=300), 5)
        assert error.value.code == ErrorCode.COORDINATOR_NOT_AVAILABLE and error.value.retriable
        assert 300 <= monotonic_ms() - started < 2000
        assert coordinator.calls == 1
        local.close()

    run(scenario())


class CountingPartitions(OneNodePartitions):
    """Counts appends to the share-state topic (one per durable state write round)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.state_appends = 0

    async def append(self, topic, partition, batches, **kwargs):
        if topic == SHARE_STATE_TOPIC:
            self.state_appends += 1
        return await super().append(topic, partition, batches, **kwargs)


def test_a_fetch_with_acknowledgements_on_two_partitions_makes_one_write_each(tmp_path):
    """Acknowledgements and acquisitions of one ShareFetch are applied in memory first
    and awaited together, so each share partition writes once, and both partitions'
    writes (same coordinator) go into one state-topic append, not four."""
    async def scenario():
        node = Node(tmp_path, CountingPartitions(tmp_path / "counting"), topic_partitions=2)
        services = await node.start()
        await set_earliest(services)
        manager = services.share_manager
        for partition in (0, 1):
            for batch in range(2):
                records = [(None, f"p{partition}-{batch}-{i}".encode(), (), wall_ms()) for i in range(3)]
                await node.local.append("t", partition, batch_codec.build_batch(records))

        def request(epoch: int, acks: list[tuple[int, int, int]]) -> shoal_pb2.ShareFetchRequest:
            parts = []
            for partition in (0, 1):
                part = shoal_pb2.ShareFetchPartition(topic="t", partition=partition)
                for first, last, ack_type in acks:
                    part.acknowledgement_batches.add(first_offset=first, last_offset=last, acknowledge_types=[ack_type])
                parts.append(part)
            return shoal_pb2.ShareFetchRequest(group_id="g", member_id="m1", share_session_epoch=epoch,
                                               max_records=500, max_bytes=1 << 20, partitions=parts)

        def by_partition(response) -> dict[int, list[tuple[int, int, int]]]:
            return {p.partition: [(r.first_offset, r.last_offset, r.delivery_count) for r in p.acquired_records]
                    for p in response.partitions}

        first = await manager.ShareFetch(request(0, []))
        assert by_partition(first) == {0: [(0, 5, 1)], 1: [(0, 5, 1)]}
        writes_before, appends_before = manager.state_writes_total, node.local.state_appends
        # ACCEPT 0-2 and RELEASE 3-5 on both partitions; 3-5 come back with count 2.
        second = await manager.ShareFetch(request(1, [(0, 2, 1), (3, 5, 2)]))
        assert [(p.partition, p.acknowledge_error_code) for p in second.partitions] == [(0, 0), (1, 0)], second
        assert by_partition(second) == {0: [(3, 5, 2)], 1: [(3, 5, 2)]}
        assert manager.state_writes_total - writes_before == 2  # one per share partition, not two each
        assert node.local.state_appends - appends_before == 1  # one coordinator round for both
        # And it is durable: a reload sees the accepted prefix and the count 2.
        for partition in (0, 1):
            node.local.bump_epoch("t", partition)
        third = await manager.ShareFetch(request(2, []))
        assert by_partition(third) == {0: [(3, 5, 3)], 1: [(3, 5, 3)]}
        await services.stop()
        node.local.close()

    run(scenario())


# ---------------------------------------------------------------------- test-only bug switches
#
# Each planted bug (node/share_manager.py, "Test-only switches") must really change
# behaviour, or the chaos mutation gate would pass without testing anything. Every
# scenario runs with the switch off (correct behaviour) and on (the bug's symptom).


def _ack_request(member: str, epoch: int, first: int, last: int, ack_type: int) -> shoal_pb2.ShareAcknowledgeRequest:
    return shoal_pb2.ShareAcknowledgeRequest(
        group_id="g", member_id=member, share_session_epoch=epoch,
        partitions=[shoal_pb2.ShareFetchPartition(topic="t", partition=0, acknowledgement_batches=[
            shoal_pb2.AcknowledgementBatch(first_offset=first, last_offset=last, acknowledge_types=[ack_type])])])


async def _accept_then_reload(tmp_path: Path) -> list[tuple[int, int, int]]:
    """Acquire 0-2, ACCEPT them, fail over (new leader epoch): what is delivered next."""
    node = Node(tmp_path)
    services = await node.start()
    await set_earliest(services)
    await node.produce(3)
    first = await services.share_manager.ShareFetch(fetch_request("m1", 0))
    assert acquired(first) == [(0, 2, 1)]
    accepted = await services.share_manager.ShareAcknowledge(_ack_request("m1", 1, 0, 2, 1))
    assert accepted.partitions[0].error_code == 0
    node.local.bump_epoch("t", 0)
    again = await services.share_manager.ShareFetch(fetch_request("m2", 0))
    await services.stop()
    node.local.close()
    return acquired(again)


@pytest.mark.parametrize("bug", [False, True])
def test_switch_no_durable_share_state(tmp_path, monkeypatch, bug):
    import node.share_manager as share_manager

    monkeypatch.setattr(share_manager, "BUG_NO_DURABLE_SHARE_STATE", bug)
    # With the bug the ACCEPT was answered but never written: the reload delivers again.
    assert run(_accept_then_reload(tmp_path)) == ([(0, 2, 2)] if bug else [])


@pytest.mark.parametrize("bug", [False, True])
def test_switch_start_offset_not_persisted(tmp_path, monkeypatch, bug):
    import node.share_manager as share_manager

    monkeypatch.setattr(share_manager, "BUG_START_OFFSET_NOT_PERSISTED", bug)
    # The ACCEPT moved the start offset to 3 durably; the bug loads from the log
    # start (0), where no state batch remains, so the records look new.
    assert run(_accept_then_reload(tmp_path)) == ([(0, 2, 1)] if bug else [])


@pytest.mark.parametrize("bug", [False, True])
def test_switch_delivery_count_not_raised_after_failover(tmp_path, monkeypatch, bug):
    import node.share_manager as share_manager

    monkeypatch.setattr(share_manager, "BUG_DELIVERY_COUNT_NOT_RAISED_AFTER_FAILOVER", bug)

    async def scenario() -> list[tuple[int, int, int]]:
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        await node.produce(3)
        first = await services.share_manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(first) == [(0, 2, 1)]
        node.local.bump_epoch("t", 0)
        again = await services.share_manager.ShareFetch(fetch_request("m2", 0))
        await services.stop()
        node.local.close()
        return acquired(again)

    # Delivered once before the failover: the next delivery is the second (count 2);
    # the bug hands out count 1 again.
    assert run(scenario()) == ([(0, 2, 1)] if bug else [(0, 2, 2)])


@pytest.mark.parametrize("bug", [False, True])
def test_switch_stale_acks(tmp_path, monkeypatch, bug):
    import node.share_manager as share_manager

    monkeypatch.setattr(share_manager, "BUG_STALE_ACKS", bug)

    async def scenario() -> tuple[int, list[tuple[int, int, int]]]:
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        await node.produce(3)
        await services.share_manager.ShareFetch(fetch_request("m1", 0))
        # m1's lock lapses (new leader epoch); m2 now holds the records.
        node.local.bump_epoch("t", 0)
        second = await services.share_manager.ShareFetch(fetch_request("m2", 0))
        assert acquired(second) == [(0, 2, 2)]
        late = await services.share_manager.ShareAcknowledge(_ack_request("m1", 1, 0, 2, 1))
        described = await services.share_manager.DescribeSharePartitions(
            shoal_pb2.DescribeSharePartitionsRequest(group_id="g"))
        await services.stop()
        node.local.close()
        runs = [(r.first_offset, r.last_offset, r.state) for r in described.partitions[0].runs]
        return late.partitions[0].error_code, runs

    code, runs = run(scenario())
    if bug:
        assert code == 0 and runs == []  # m1's stale ACCEPT settled m2's records
    else:
        assert code == ErrorCode.INVALID_RECORD_STATE and runs == [(0, 2, 1)]  # still ACQUIRED by m2


def test_switches_read_the_environment(monkeypatch):
    from node.share_manager import _switch

    monkeypatch.delenv("SHOAL_BUG_STALE_ACKS", raising=False)
    assert _switch("SHOAL_BUG_STALE_ACKS") is False
    monkeypatch.setenv("SHOAL_BUG_STALE_ACKS", "0")
    assert _switch("SHOAL_BUG_STALE_ACKS") is False
    monkeypatch.setenv("SHOAL_BUG_STALE_ACKS", "1")  # what tests/chaos/test_mutations.py sets
    assert _switch("SHOAL_BUG_STALE_ACKS") is True


class FailingStatePartitions(OneNodePartitions):
    """Appends to the share-state topic fail while ``failing`` is set (a state partition without its ISR)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.failing = False

    async def append(self, topic, partition, batches, **kwargs):
        if topic == SHARE_STATE_TOPIC and self.failing:
            raise OperatingError(ErrorCode.NOT_ENOUGH_REPLICAS, "the state partition lost its in-sync replicas")
        return await super().append(topic, partition, batches, **kwargs)


def test_a_failed_combined_write_fails_the_acks_and_withholds_the_records(tmp_path):
    """Rule 2 with one write per fetch: the acknowledgement reports the failure, the
    records whose acquisition was in the same write are not returned, and the reload
    finds the durable past (the ACCEPT did not happen, the new records were never delivered)."""
    async def scenario():
        node = Node(tmp_path, FailingStatePartitions(tmp_path / "failing"))
        services = await node.start()
        await set_earliest(services)
        manager = services.share_manager
        manager._write_timeout_ms = 300  # give up on the state write quickly
        await node.produce(3)
        first = await manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(first) == [(0, 2, 1)]
        await node.produce(3)
        node.local.failing = True
        second = await manager.ShareFetch(fetch_request("m1", 1, acks=[(0, 2, 1)]))
        (part,) = second.partitions
        assert part.acknowledge_error_code != 0 and part.error_code != 0, second
        assert OperatingError(ErrorCode(part.acknowledge_error_code), "").retriable
        assert acquired(second) == [] and part.records == b""
        node.local.failing = False
        third = await manager.ShareFetch(fetch_request("m1", 2))
        assert acquired(third) == [(0, 2, 2), (3, 5, 1)]
        await services.stop()
        node.local.close()

    run(scenario())
