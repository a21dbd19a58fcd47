"""The group coordinator: share groups and consumer groups on ``__consumer_offsets``.

Rules
-----
* A group is coordinated by the leader of ``__consumer_offsets`` partition
  ``coordinator_partition(group_id)``; the pure ``coordinator.groups.
  GroupCoordinatorShard`` of that partition decides, hosted by
  ``CoordinatorRuntime`` (load by replay, group commit, acks=-1 before the
  answer, NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS while elsewhere or
  loading). Members are not persisted: a member unknown to a newly loaded
  coordinator gets UNKNOWN_MEMBER_ID and rejoins.
* Coordinator errors of a request go into the response's ``error_code`` /
  ``error_message`` fields (the clients follow NOT_COORDINATOR from there);
  per-group and per-partition errors into their entries.
* Share partitions a share group is assigned are recorded as initialized for
  the group (``ShareGroupPartitionsRecord``) on the heartbeat that assigns
  them; the share-partition leader initializes their state at the share
  coordinator on its first fetch, from the group's ``share.auto.offset.reset``.
* AlterShareGroupOffsets needs an empty group (GROUP_NOT_EMPTY) and
  re-initializes each partition with state epoch + 1, which fences the live
  share-partition leader (FENCED_STATE_EPOCH on its next write) so that it
  reloads. DeleteShareGroupOffsets and DeleteGroups delete the share state.
* DescribeShareGroupOffsets: start offset from the share coordinator summary;
  lag (KIP-1226) = high watermark - start offset - delivery complete count,
  with the high watermark from the partition leader (ListOffsets latest).
* Session expiry: one timer per shard at ``next_deadline_ms()``. Expired
  share-group members have their records released on this node at once; on
  other nodes their share sessions time out and do the same. A known and
  accepted limit: the coordinator does not tell the other share-partition
  leaders, so there the expired member's records stay acquired until their
  acquisition locks expire or, at the latest, until its share session there
  is idle for ``share.session.timeout.ms`` (the same timeout that expired the
  member here). Nothing is lost or delivered twice; delivery is only later.
* Topic metadata changes are installed with ``set_topic_partitions``; share
  state of partitions that disappeared is deleted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence

import grpc

from coordinator.config import (
    GROUP_CONFIG_DEFS,
    EffectiveShareSettings,
    GroupBrokerConfig,
    effective_share_settings,
    validate_group_config,
)
from coordinator.errors import ErrorCode, OperatingError
from coordinator.group_records import encode as encode_group_record
from coordinator.groups import GroupCoordinatorShard, GroupDescription
from coordinator.share_state import ShareKey
from node.coordinator_runtime import CoordinatorRuntime
from node.interfaces import (
    CONSUMER_OFFSETS_TOPIC,
    ClusterView,
    LocalPartitions,
    PeerClients,
    monotonic_ms,
)
from node.share_persister import SharePersister, operating_error_from_rpc
from proto import shoal_pb2

log = logging.getLogger("node.group_coordinator")

#: How long the share-partition leaders trust cached group configs.
SETTINGS_CACHE_MS = 3000
RPC_TIMEOUT_S = 5.0
#: Longest that share-group joins wait for an admin offsets change (its end
#: normally lifts the hold long before; this bounds a change that never ends).
OFFSETS_CHANGE_HOLD_MS = 60_000


class _GroupShardAdapter:
    def __init__(self, broker: GroupBrokerConfig) -> None:
        self._broker = broker

    def new_shard(self, partition: int) -> GroupCoordinatorShard:
        return GroupCoordinatorShard(self._broker)

    def replay(self, shard: GroupCoordinatorShard, offset: int, key: bytes | None, value: bytes | None) -> None:
        assert key is not None, f"group record at offset {offset} has no key"
        shard.replay(key, value)

    def encode(self, record: Any) -> tuple[bytes | None, bytes | None]:
        return encode_group_record(record)

    def commit(self, shard: GroupCoordinatorShard, records: Sequence[Any], first_offset: int) -> None:
        # The group shard applies its records as it emits them (coordinator/groups.py);
        # a failed append reloads the shard from the log instead (runtime rule 5).
        return None


def _assignment(partitions) -> shoal_pb2.Assignment:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return shoal_pb2.Assignment(
        topic_partitions=[shoal_pb2.TopicPartitions(topic=t, partitions=p) for t, p in by_topic.items()]
    )


def _client_host(context) -> str:
    try:
        return str(context.peer() or "")[:1024] if context is not None else ""
    except Exception:  # noqa: BLE001 - a context without a peer (tests) has no host
        return ""


class GroupCoordinator:
    """Hosts the group coordinator shards of the ``__consumer_offsets`` partitions led here."""

    def __init__(
        self,
        local: LocalPartitions,
        cluster: ClusterView,
        peers: PeerClients,
        broker: GroupBrokerConfig,
        num_partitions: int,
        persister: SharePersister,
        release_member: Callable[[str, str], None],
    ) -> None:
        self._local = local
        self._cluster = cluster
        self._peers = peers
        self.broker = broker
        self._persister = persister
        self._release_member = release_member
        self.runtime: CoordinatorRuntime[GroupCoordinatorShard] = CoordinatorRuntime(
            "group coordinator", local, CONSUMER_OFFSETS_TOPIC, num_partitions, _GroupShardAdapter(broker),
            on_loaded=self._on_loaded, on_unloaded=self._on_unloaded, on_committed=self._on_committed,
        )
        self._timers: dict[int, tuple[int, asyncio.TimerHandle]] = {}
        self._settings_cache: dict[str, tuple[int, EffectiveShareSettings]] = {}
        self._background: set[asyncio.Task] = set()
        self.expired_members_total = 0
        #: Group-epoch bumps per group type ("share", "consumer") that became durable
        #: on this node: the sum of the shards' ``rebalance_counts`` deltas at each
        #: committed round. Kept here because a shard's counts die with it on unload.
        self.rebalances_total: dict[str, int] = {"share": 0, "consumer": 0}
        #: partition -> the shard's ``rebalance_counts`` already added to the total.
        self._rebalances_seen: dict[int, dict[str, int]] = {}

    def start(self) -> None:
        self._cluster.add_metadata_listener(self._on_metadata)
        self.runtime.start()

    async def stop(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._background):
            task.cancel()
        await self.runtime.stop()

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ shard lifecycle, timers, metadata

    def _on_loaded(self, partition: int, shard: GroupCoordinatorShard) -> None:
        # Replaying the log does not bump epochs; a fresh shard's counts are the baseline.
        self._rebalances_seen[partition] = {str(t): n for t, n in shard.rebalance_counts.items()}
        self._spawn(self._install_topics(partition))

    def _on_unloaded(self, partition: int) -> None:
        self._rebalances_seen.pop(partition, None)
        entry = self._timers.pop(partition, None)
        if entry is not None:
            entry[1].cancel()

    def _count_rebalances(self, partition: int, shard: GroupCoordinatorShard) -> None:
        """Add the epoch bumps of the rounds committed since the last call.

        Called only after a round's records are durable, so the bumps of a round
        whose append failed (the runtime reloads that shard) are never counted.
        """
        seen = self._rebalances_seen.setdefault(partition, {})
        for group_type, count in shard.rebalance_counts.items():
            name = str(group_type)
            delta = count - seen.get(name, 0)
            if delta > 0:
                self.rebalances_total[name] = self.rebalances_total.get(name, 0) + delta
            seen[name] = count

    def _on_committed(self, partition: int, shard: GroupCoordinatorShard) -> None:
        self._count_rebalances(partition, shard)
        deadline_ms = shard.next_deadline_ms()
        entry = self._timers.get(partition)
        if entry is not None and entry[0] == deadline_ms:
            return
        if entry is not None:
            entry[1].cancel()
            del self._timers[partition]
        if deadline_ms is None:
            return
        delay_s = max(0.0, (deadline_ms - monotonic_ms()) / 1000)
        handle = asyncio.get_running_loop().call_later(delay_s, self._on_timer, partition)
        self._timers[partition] = (deadline_ms, handle)

    def _on_timer(self, partition: int) -> None:
        self._timers.pop(partition, None)
        if self.runtime.is_loaded(partition):
            self._spawn(self._expire(partition))

    async def _expire(self, partition: int) -> None:
        def op(shard: GroupCoordinatorShard):
            removed, records = shard.expire(monotonic_ms())
            share_removed = [(g, m) for g, m in removed if shard.group_type(g) == "share"]
            return records, (removed, share_removed)

        try:
            removed, share_removed = await self.runtime.schedule(partition, op)
        except OperatingError as error:
            log.info("expiring members of %s-%s failed: %s", CONSUMER_OFFSETS_TOPIC, partition, error)
            return
        self.expired_members_total += len(removed)
        for group_id, member_id in share_removed:
            self._release_member(group_id, member_id)
        if self.runtime.is_loaded(partition):
            self._on_committed(partition, self.runtime.shard(partition))

    def _on_metadata(self) -> None:
        for partition in self.runtime.loaded_partitions():
            self._spawn(self._install_topics(partition))

    async def _install_topics(self, partition: int) -> None:
        topics = self._cluster.topic_partition_counts()

        def op(shard: GroupCoordinatorShard):
            if shard.topic_partitions() == topics:
                return [], []
            records, deleted = shard.set_topic_partitions(topics, monotonic_ms())
            return records, deleted

        try:
            deleted = await self.runtime.schedule(partition, op)
        except OperatingError as error:
            log.info("installing topic metadata on %s-%s failed: %s", CONSUMER_OFFSETS_TOPIC, partition, error)
            return
        for group_id, topic, index in deleted:
            try:
                await self._persister.delete(ShareKey(group_id, topic, index))
            except OperatingError as error:
                log.warning("deleting share state of %s %s-%s failed: %s", group_id, topic, index, error)
        if self.runtime.is_loaded(partition):
            self._on_committed(partition, self.runtime.shard(partition))

    # ------------------------------------------------------------------ helpers

    def _partition(self, group_id: str) -> int:
        return self.runtime.partition_for(group_id)

    async def _run(self, group_id: str, op):
        partition = self._partition(group_id)
        result = await self.runtime.schedule(partition, op)
        if self.runtime.is_loaded(partition):
            self._on_committed(partition, self.runtime.shard(partition))
        return result

    def _shard_for(self, group_id: str) -> GroupCoordinatorShard:
        return self.runtime.shard(self._partition(group_id))

    async def share_settings(self, group_id: str) -> EffectiveShareSettings:
        """Settings in force for a share group, for the share-partition leaders on this node.

        Cached for ``SETTINGS_CACHE_MS`` so that alter_group_configs takes effect
        within seconds; a stale cached value is used while the group
        coordinator cannot be reached, and without any value the call fails
        (retriable) rather than guess a delivery-count limit.
        """
        now_ms = monotonic_ms()
        cached = self._settings_cache.get(group_id)
        if cached is not None and now_ms - cached[0] < SETTINGS_CACHE_MS:
            return cached[1]
        try:
            overrides = await self._group_overrides(group_id)
        except OperatingError:
            if cached is not None:
                return cached[1]
            raise
        settings = effective_share_settings(overrides, self.broker)
        if len(self._settings_cache) > 10_000:
            self._settings_cache.clear()
        self._settings_cache[group_id] = (now_ms, settings)
        return settings

    async def _group_overrides(self, group_id: str) -> dict[str, str]:
        partition = self._partition(group_id)
        leader = self._cluster.partition_leader(CONSUMER_OFFSETS_TOPIC, partition)
        if leader.node_id < 0:
            raise OperatingError(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{CONSUMER_OFFSETS_TOPIC}-{partition} has no leader")
        if leader.node_id == self._cluster.node_id:
            return self.runtime.shard(partition).describe_group_configs(group_id)
        try:
            response = await self._peers.broker(leader.node_id).DescribeGroupConfigs(
                shoal_pb2.DescribeGroupConfigsRequest(group_ids=[group_id]), timeout=RPC_TIMEOUT_S
            )
        except grpc.RpcError as error:
            raise operating_error_from_rpc(error, f"DescribeGroupConfigs on node {leader.node_id}") from None
        except KeyError as error:
            raise OperatingError(ErrorCode.COORDINATOR_NOT_AVAILABLE, str(error)) from None
        entry = response.groups[0]
        if entry.error_code:
            raise OperatingError(ErrorCode(entry.error_code), entry.error_message)
        return {c.name: c.value for c in entry.configs if not c.is_default}

    async def _high_watermark(self, topic: str, partition: int) -> int:
        if self._local.is_leader(topic, partition):
            return self._local.high_watermark(topic, partition)
        leader = self._cluster.partition_leader(topic, partition)
        if leader.node_id < 0:
            raise OperatingError(ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader")
        try:
            response = await self._peers.broker(leader.node_id).ListOffsets(
                shoal_pb2.ListOffsetsRequest(
                    partitions=[shoal_pb2.ListOffsetsPartition(topic=topic, partition=partition, timestamp=-1)]
                ),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            raise operating_error_from_rpc(error, f"ListOffsets for {topic}-{partition}") from None
        result = response.results[0]
        if result.error_code:
            raise OperatingError(ErrorCode(result.error_code), result.error_message)
        return result.offset

    # ------------------------------------------------------------------ heartbeats

    async def ShareGroupHeartbeat(self, request, context) -> shoal_pb2.ShareGroupHeartbeatResponse:
        topics = list(request.subscribed_topics.names) if request.HasField("subscribed_topics") else None
        host = _client_host(context)

        def op(shard: GroupCoordinatorShard):
            result, records = shard.share_group_heartbeat(
                request.group_id, request.member_id, request.member_epoch, topics, request.client_id, host,
                monotonic_ms(),
            )
            if result.member_epoch >= 0:
                missing = shard.uninitialized_share_partitions(request.group_id)
                if missing:
                    records = records + shard.mark_share_partitions_initialized(request.group_id, missing)
            return records, result

        try:
            result = await self._run(request.group_id, op)
        except OperatingError as error:
            return shoal_pb2.ShareGroupHeartbeatResponse(error_code=int(error.code), error_message=error.message)
        if request.member_epoch == -1:
            self._release_member(request.group_id, request.member_id)
        return shoal_pb2.ShareGroupHeartbeatResponse(
            member_id=result.member_id, member_epoch=result.member_epoch,
            heartbeat_interval_ms=result.heartbeat_interval_ms, assignment=_assignment(result.assignment),
        )

    async def ConsumerGroupHeartbeat(self, request, context) -> shoal_pb2.ConsumerGroupHeartbeatResponse:
        topics = list(request.subscribed_topics.names) if request.HasField("subscribed_topics") else None
        owned = None
        if request.HasField("owned_partitions"):
            owned = {(tp.topic, p) for tp in request.owned_partitions.topic_partitions for p in tp.partitions}
        host = _client_host(context)

        def op(shard: GroupCoordinatorShard):
            result, records = shard.consumer_group_heartbeat(
                request.group_id, request.member_id, request.member_epoch, topics, owned, monotonic_ms(),
                client_id=request.client_id, client_host=host,
            )
            return records, result

        try:
            result = await self._run(request.group_id, op)
        except OperatingError as error:
            return shoal_pb2.ConsumerGroupHeartbeatResponse(error_code=int(error.code), error_message=error.message)
        return shoal_pb2.ConsumerGroupHeartbeatResponse(
            member_id=result.member_id, member_epoch=result.member_epoch,
            heartbeat_interval_ms=result.heartbeat_interval_ms, assignment=_assignment(result.assignment),
        )

    # ------------------------------------------------------------------ consumer-group offsets

    async def OffsetCommit(self, request, context) -> shoal_pb2.OffsetCommitResponse:
        offsets = {(p.topic, p.partition): (p.committed_offset, p.metadata) for p in request.partitions}

        def op(shard: GroupCoordinatorShard):
            return shard.commit_offsets(
                request.group_id, request.member_id, request.member_epoch, offsets, monotonic_ms()
            ), None

        try:
            await self._run(request.group_id, op)
        except OperatingError as error:
            return shoal_pb2.OffsetCommitResponse(
                error_code=int(error.code), error_message=error.message,
                results=[shoal_pb2.PartitionError(topic=t, partition=p, error_code=int(error.code),
                                                  error_message=error.message) for t, p in sorted(offsets)],
            )
        return shoal_pb2.OffsetCommitResponse(
            results=[shoal_pb2.PartitionError(topic=t, partition=p) for t, p in sorted(offsets)]
        )

    async def OffsetFetch(self, request, context) -> shoal_pb2.OffsetFetchResponse:
        wanted = [(tp.topic, tp.partition) for tp in request.partitions] or None
        try:
            committed = self._shard_for(request.group_id).fetch_offsets(request.group_id, wanted)
        except OperatingError as error:
            return shoal_pb2.OffsetFetchResponse(error_code=int(error.code), error_message=error.message)
        response = shoal_pb2.OffsetFetchResponse()
        for tp in wanted if wanted is not None else sorted(committed):
            found = committed.get(tp)
            response.offsets.add(
                topic=tp[0], partition=tp[1],
                committed_offset=found.offset if found is not None else -1,
                metadata=found.metadata if found is not None else "",
            )
        return response

    # ------------------------------------------------------------------ admin

    async def ListGroups(self, request, context) -> shoal_pb2.ListGroupsResponse:
        types = list(request.types_filter) or None
        states = list(request.states_filter) or None
        response = shoal_pb2.ListGroupsResponse()
        for partition in self.runtime.loaded_partitions():
            try:
                listings = self.runtime.shard(partition).list_groups(types, states)
            except OperatingError:
                continue
            for listing in listings:
                response.groups.add(group_id=listing.group_id, type=listing.group_type, state=listing.state,
                                    coordinator_id=self._cluster.node_id)
        return response

    def _describe_one(self, group_id: str) -> shoal_pb2.GroupDescription:
        out = shoal_pb2.GroupDescription(group_id=group_id, coordinator_id=self._cluster.node_id)
        try:
            shard = self._shard_for(group_id)
            group_type = shard.group_type(group_id)
            description: GroupDescription = (
                shard.describe_consumer_group(group_id) if group_type == "consumer"
                else shard.describe_share_group(group_id)
            )
        except OperatingError as error:
            out.error_code = int(error.code)
            out.error_message = error.message
            return out
        out.type = description.group_type
        out.state = description.state
        out.group_epoch = description.group_epoch
        out.assignment_epoch = description.assignment_epoch
        for member in description.members:
            out.members.add(
                member_id=member.member_id, client_id=member.client_id, client_host=member.client_host,
                member_epoch=member.member_epoch, subscribed_topics=sorted(member.subscribed_topics),
                assignment=_assignment(member.assignment),
            )
        return out

    async def DescribeGroups(self, request, context) -> shoal_pb2.DescribeGroupsResponse:
        return shoal_pb2.DescribeGroupsResponse(groups=[self._describe_one(g) for g in request.group_ids])

    async def DeleteGroups(self, request, context) -> shoal_pb2.DeleteGroupsResponse:
        async def one(group_id: str) -> shoal_pb2.GroupResult:
            def op(shard: GroupCoordinatorShard):
                records, share_partitions = shard.delete_group(group_id)
                return records, share_partitions

            try:
                share_partitions = await self._run(group_id, op)
                for topic, partition in sorted(share_partitions):
                    await self._persister.delete(ShareKey(group_id, topic, partition))
            except OperatingError as error:
                return shoal_pb2.GroupResult(group_id=group_id, error_code=int(error.code),
                                             error_message=error.message)
            self._settings_cache.pop(group_id, None)
            return shoal_pb2.GroupResult(group_id=group_id)

        return shoal_pb2.DeleteGroupsResponse(results=await asyncio.gather(*(one(g) for g in request.group_ids)))

    async def DescribeGroupConfigs(self, request, context) -> shoal_pb2.DescribeGroupConfigsResponse:
        response = shoal_pb2.DescribeGroupConfigsResponse()
        for group_id in request.group_ids:
            out = response.groups.add(group_id=group_id)
            try:
                overrides = self._shard_for(group_id).describe_group_configs(group_id)
            except OperatingError as error:
                out.error_code = int(error.code)
                out.error_message = error.message
                continue
            effective = effective_share_settings(overrides, self.broker)
            defaults = {
                "share.record.lock.duration.ms": effective.record_lock_duration_ms,
                "share.delivery.count.limit": effective.delivery_count_limit,
                "share.partition.max.record.locks": effective.partition_max_record_locks,
                "share.session.timeout.ms": effective.session_timeout_ms,
                "share.heartbeat.interval.ms": effective.heartbeat_interval_ms,
                "consumer.session.timeout.ms": self.broker.consumer_session_timeout_ms,
                "consumer.heartbeat.interval.ms": self.broker.consumer_heartbeat_interval_ms,
            }
            for definition in GROUP_CONFIG_DEFS:
                name = definition.name
                if name in overrides:
                    out.configs.add(name=name, value=overrides[name], is_default=False)
                else:
                    value = defaults.get(name, definition.default)
                    text = str(value).lower() if isinstance(value, bool) else str(value)
                    out.configs.add(name=name, value=text, is_default=True)
        return response

    async def AlterGroupConfigs(self, request, context) -> shoal_pb2.AlterGroupConfigsResponse:
        group_id = request.group_id
        updates: dict[str, str | None] = dict(request.set)
        for name in request.delete:
            updates[name] = None
        try:
            if request.validate_only:
                current = dict(self._shard_for(group_id).describe_group_configs(group_id))
                for name, value in updates.items():
                    if value is None:
                        current.pop(name, None)
                    else:
                        current[name] = value
                validate_group_config(current, self.broker)
            else:
                def op(shard: GroupCoordinatorShard):
                    return shard.alter_group_configs(group_id, updates), None

                await self._run(group_id, op)
                self._settings_cache.pop(group_id, None)
        except OperatingError as error:
            return shoal_pb2.AlterGroupConfigsResponse(
                result=shoal_pb2.GroupResult(group_id=group_id, error_code=int(error.code), error_message=error.message)
            )
        return shoal_pb2.AlterGroupConfigsResponse(result=shoal_pb2.GroupResult(group_id=group_id))

    # ------------------------------------------------------------------ share-group offsets

    async def DescribeShareGroupOffsets(self, request, context) -> shoal_pb2.DescribeShareGroupOffsetsResponse:
        group_id = request.group_id
        try:
            shard = self._shard_for(group_id)
            shard.describe_share_group(group_id)  # GROUP_ID_NOT_FOUND for absent or consumer groups
            wanted = [(tp.topic, tp.partition) for tp in request.partitions] or sorted(
                shard.initialized_share_partitions(group_id)
            )
        except OperatingError as error:
            return shoal_pb2.DescribeShareGroupOffsetsResponse(error_code=int(error.code), error_message=error.message)

        async def one(topic: str, partition: int) -> shoal_pb2.SharePartitionOffset:
            out = shoal_pb2.SharePartitionOffset(topic=topic, partition=partition, start_offset=-1, lag=-1)
            try:
                summary = await self._persister.summary(ShareKey(group_id, topic, partition))
                out.start_offset = summary.start_offset
                out.leader_epoch = summary.leader_epoch
                if summary.start_offset >= 0:
                    high_watermark = await self._high_watermark(topic, partition)
                    complete = max(0, summary.delivery_complete_count)
                    out.lag = max(0, high_watermark - summary.start_offset - complete)
            except OperatingError as error:
                out.error_code = int(error.code)
                out.error_message = error.message
            return out

        offsets = await asyncio.gather(*(one(t, p) for t, p in wanted))
        return shoal_pb2.DescribeShareGroupOffsetsResponse(offsets=offsets)

    async def AlterShareGroupOffsets(self, request, context) -> shoal_pb2.AlterShareGroupOffsetsResponse:
        group_id = request.group_id

        def begin(shard: GroupCoordinatorShard):
            shard.begin_share_offsets_change(group_id, monotonic_ms(), OFFSETS_CHANGE_HOLD_MS)
            return [], None

        try:
            await self._run(group_id, begin)
        except OperatingError as error:
            return shoal_pb2.AlterShareGroupOffsetsResponse(error_code=int(error.code), error_message=error.message)
        try:
            return await self._alter_share_offsets(group_id, request.offsets)
        finally:
            await self._end_share_offsets_change(group_id)

    async def _end_share_offsets_change(self, group_id: str) -> None:
        def end(shard: GroupCoordinatorShard):
            shard.end_share_offsets_change(group_id)
            return [], None

        try:
            await self._run(group_id, end)
        except OperatingError as error:
            # The coordinator moved: the new shard never had the hold.
            log.info("ending the offsets change of %s: %s", group_id, error)

    async def _alter_share_offsets(self, group_id: str, offsets) -> shoal_pb2.AlterShareGroupOffsetsResponse:
        async def one(entry: shoal_pb2.SharePartitionOffset) -> shoal_pb2.PartitionError:
            out = shoal_pb2.PartitionError(topic=entry.topic, partition=entry.partition)
            key = ShareKey(group_id, entry.topic, entry.partition)
            try:
                if entry.start_offset < 0:
                    raise OperatingError(ErrorCode.INVALID_REQUEST, f"start offset {entry.start_offset} is negative")
                summary = await self._persister.summary(key)
                # A new state epoch fences the live share-partition leader, which reloads.
                await self._persister.initialize(key, summary.state_epoch + 1, entry.start_offset)
            except OperatingError as error:
                out.error_code = int(error.code)
                out.error_message = error.message
            return out

        results = await asyncio.gather(*(one(entry) for entry in offsets))
        done = [(r.topic, r.partition) for r in results if not r.error_code]
        if done:
            def mark(shard: GroupCoordinatorShard):
                return shard.mark_share_partitions_initialized(group_id, done), None

            try:
                await self._run(group_id, mark)
            except OperatingError as error:
                log.info("recording altered share partitions of %s failed: %s", group_id, error)
        return shoal_pb2.AlterShareGroupOffsetsResponse(results=results)

    async def DeleteShareGroupOffsets(self, request, context) -> shoal_pb2.DeleteShareGroupOffsetsResponse:
        group_id = request.group_id
        topics = list(request.topics)

        def op(shard: GroupCoordinatorShard):
            result = shard.delete_share_group_offsets(group_id, topics)
            shard.begin_share_offsets_change(group_id, monotonic_ms(), OFFSETS_CHANGE_HOLD_MS)
            return result

        try:
            gone = await self._run(group_id, op)
        except OperatingError as error:
            return shoal_pb2.DeleteShareGroupOffsetsResponse(error_code=int(error.code), error_message=error.message)
        failures: dict[str, OperatingError] = {}
        try:
            for topic, partition in sorted(gone):
                try:
                    await self._persister.delete(ShareKey(group_id, topic, partition))
                except OperatingError as error:
                    failures[topic] = error
        finally:
            await self._end_share_offsets_change(group_id)
        return shoal_pb2.DeleteShareGroupOffsetsResponse(results=[
            shoal_pb2.TopicResult(name=t, error_code=int(failures[t].code) if t in failures else 0,
                                  error_message=failures[t].message if t in failures else "")
            for t in topics
        ])
