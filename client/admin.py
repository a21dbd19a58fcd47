"""Admin: topics, offsets, the cluster, consumer groups and share groups.

Use::

    with Admin({"bootstrap.servers": "127.0.0.1:19092"}) as admin:
        for name, future in admin.create_topics([NewTopic("jobs", 2, 3)]).items():
            future.result()                      # raises TopicAlreadyExistsError, ...
        admin.alter_group_configs("workers", set={"share.auto.offset.reset": "earliest"})

Result convention (one rule for every method):

* A method that takes a **collection of independent items** (topics, groups,
  partitions) returns ``dict[item, concurrent.futures.Future]`` as
  confluent-kafka does: each future holds that item's result or its typed
  error, so one bad item never hides the others. The futures are already
  completed when the method returns (the requests are made before it returns).
* A method about **one thing** (the cluster, one group's offsets, one topic's
  configs) returns its result directly and raises the typed error.

Where requests go: topic administration to any node (the node forwards to the
active controller; NOT_CONTROLLER and unavailable nodes are retried with
backoff); offsets to each partition's leader; group operations to the group's
coordinator (FindCoordinator, following NOT_COORDINATOR); ``list_groups`` to
every broker, merged, because each coordinator knows only its own groups;
``describe_share_partitions`` to the leaders of the partitions, which hold the
in-flight windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from client._net import LEADER_MOVED_CODES, Backoff, Connections, now_ms
from client.config import admin_config
from client.errors import (
    GroupIdNotFoundError,
    ShoalError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.types import (
    BrokerDescription,
    ClusterDescription,
    ConfigEntry,
    DeletedRecords,
    GroupDescription,
    GroupListing,
    ListOffsetsResult,
    MemberDescription,
    NewTopic,
    PartitionDescription,
    PartitionHealth,
    RecordState,
    SharePartitionOffsetInfo,
    SharePartitionState,
    StateRun,
    TopicDescription,
    TopicPartition,
)
from proto import shoal_pb2

T = TypeVar("T")


def _done(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


def _assignment(message: shoal_pb2.Assignment) -> list[TopicPartition]:
    return sorted(TopicPartition(t.topic, p) for t in message.topic_partitions for p in t.partitions)


def _topic_description(topic: shoal_pb2.TopicMetadata) -> TopicDescription:
    return TopicDescription(
        name=topic.name,
        topic_id=topic.topic_id,
        internal=topic.internal,
        partitions=[
            PartitionDescription(
                partition=p.partition,
                leader=p.leader,
                leader_epoch=p.leader_epoch,
                replicas=list(p.replicas),
                isr=list(p.isr),
                log_start_offset=p.log_start_offset,
                high_watermark=p.high_watermark,
                error=shoal_pb2.ErrorCode.Name(p.error_code) if p.error_code else None,
            )
            for p in sorted(topic.partitions, key=lambda p: p.partition)
        ],
        configs=dict(topic.configs),
    )


class Admin:
    """Administrative operations against a shoal cluster."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._cfg = admin_config(config)
        self._conn = Connections(self._cfg)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ helpers

    def _timeout_ms(self, timeout: float | None) -> int:
        return int(timeout * 1000) if timeout is not None else self._cfg["request.timeout.ms"]

    def _retrying(self, attempt: Callable[[int], T], timeout: float | None) -> T:
        """Run ``attempt(remaining_ms)`` until success, a non-retriable error or the deadline."""
        deadline = now_ms() + self._timeout_ms(timeout)
        backoff = Backoff(self._cfg["retry.backoff.ms"], self._cfg["retry.backoff.max.ms"])
        while True:
            try:
                return attempt(max(1, deadline - now_ms()))
            except ShoalError as exc:
                if not exc.retriable or now_ms() + backoff.initial_ms >= deadline:
                    raise
                if exc.code in LEADER_MOVED_CODES:
                    self._conn.invalidate()
                backoff.sleep(deadline)

    def _any(self, method: str, request: Any, timeout: float | None) -> Any:
        return self._retrying(lambda remaining: self._conn.call_any(method, request, remaining), timeout)

    def _coordinator(self, group_id: str, method: str, request: Any, timeout: float | None) -> Any:
        if not group_id:
            raise error_for_code(24, "the group id must not be empty")
        return self._conn.call_coordinator(group_id, method, request, timeout_ms=self._timeout_ms(timeout))

    def _by_leader(self, tps: Iterable[TopicPartition]) -> tuple[dict[str, list[TopicPartition]], dict[TopicPartition, ShoalError]]:
        groups: dict[str, list[TopicPartition]] = {}
        failed: dict[TopicPartition, ShoalError] = {}
        for tp in tps:
            try:
                _, address, _ = self._retrying(lambda _r, tp=tp: self._conn.leader(tp), None)
            except ShoalError as exc:
                failed[tp] = exc
                continue
            groups.setdefault(address, []).append(tp)
        return groups, failed

    # ------------------------------------------------------------ topics

    def create_topics(
        self, new_topics: Iterable[NewTopic], *, validate_only: bool = False, timeout: float | None = None
    ) -> dict[str, Future[None]]:
        """Create topics; each future fails with e.g. TopicAlreadyExistsError, InvalidPartitionsError."""
        topics = list(new_topics)
        for topic in topics:
            if not isinstance(topic, NewTopic):
                raise TypeError(f"create_topics takes NewTopic objects, got {type(topic).__name__}")
        request = shoal_pb2.CreateTopicsRequest(
            topics=[
                shoal_pb2.NewTopic(
                    name=t.name,
                    num_partitions=t.num_partitions,
                    replication_factor=t.replication_factor,
                    configs={k: str(v) for k, v in t.config.items()},
                )
                for t in topics
            ],
            timeout_ms=self._timeout_ms(timeout),
            validate_only=validate_only,
        )
        response = self._any("CreateTopics", request, timeout)
        results = {r.name: r for r in response.results}
        out: dict[str, Future[None]] = {}
        for topic in topics:
            result = results.get(topic.name)
            if result is None:
                out[topic.name] = _done(error=error_for_code(-1, f"no result for topic {topic.name!r}"))
            elif result.error_code:
                out[topic.name] = _done(error=error_for_code(result.error_code, result.error_message or topic.name))
            else:
                out[topic.name] = _done(None)
        self._conn.invalidate()
        return out

    def delete_topics(self, names: Iterable[str], *, timeout: float | None = None) -> dict[str, Future[None]]:
        names = list(names)
        response = self._any(
            "DeleteTopics", shoal_pb2.DeleteTopicsRequest(names=names, timeout_ms=self._timeout_ms(timeout)), timeout
        )
        results = {r.name: r for r in response.results}
        out: dict[str, Future[None]] = {}
        for name in names:
            result = results.get(name)
            if result is None:
                out[name] = _done(error=error_for_code(-1, f"no result for topic {name!r}"))
            elif result.error_code:
                out[name] = _done(error=error_for_code(result.error_code, result.error_message or name))
            else:
                out[name] = _done(None)
        self._conn.invalidate()
        return out

    def describe_topics(
        self, names: Iterable[str], *, include_internal: bool = False, timeout: float | None = None
    ) -> dict[str, Future[TopicDescription]]:
        """Partitions (leader, replicas, ISR, log start, high watermark) and configs of each topic."""
        names = list(names)
        response = self._any(
            "DescribeTopics", shoal_pb2.DescribeTopicsRequest(names=names, include_internal=include_internal), timeout
        )
        found = {t.name: t for t in response.topics}
        out: dict[str, Future[TopicDescription]] = {}
        for name in names:
            topic = found.get(name)
            if topic is None:
                out[name] = _done(error=UnknownTopicOrPartitionError(f"topic {name!r} does not exist"))
            elif topic.error_code:
                out[name] = _done(error=error_for_code(topic.error_code, topic.error_message or f"topic {name!r}"))
            else:
                out[name] = _done(_topic_description(topic))
        return out

    def list_topics(self, *, include_internal: bool = False, timeout: float | None = None) -> dict[str, TopicDescription]:
        """Every topic with its description, by name."""
        response = self._any(
            "DescribeTopics", shoal_pb2.DescribeTopicsRequest(names=[], include_internal=include_internal), timeout
        )
        return {
            t.name: _topic_description(t)
            for t in sorted(response.topics, key=lambda t: t.name)
            if not t.error_code and (include_internal or not t.internal)
        }

    def alter_topic_configs(
        self,
        topic: str,
        *,
        set: Mapping[str, str] | None = None,
        delete: Iterable[str] = (),
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Set and/or delete (back to default) configs of one topic."""
        request = shoal_pb2.AlterTopicConfigsRequest(
            name=topic, set={k: str(v) for k, v in (set or {}).items()}, delete=list(delete), validate_only=validate_only
        )
        response = self._any("AlterTopicConfigs", request, timeout)
        if response.result.error_code:
            raise error_for_code(response.result.error_code, response.result.error_message or topic)

    # ------------------------------------------------------------ offsets

    def list_offsets(
        self, specs: Mapping[TopicPartition, int], *, timeout: float | None = None
    ) -> dict[TopicPartition, Future[ListOffsetsResult]]:
        """Look up offsets; a spec is OffsetSpec.EARLIEST (-2), LATEST (-1) or a timestamp in ms."""
        tps = [TopicPartition(*tp) for tp in specs]
        groups, failed = self._by_leader(tps)
        out: dict[TopicPartition, Future[ListOffsetsResult]] = {tp: _done(error=exc) for tp, exc in failed.items()}
        for address, members in groups.items():
            request = shoal_pb2.ListOffsetsRequest(
                partitions=[
                    shoal_pb2.ListOffsetsPartition(topic=tp.topic, partition=tp.partition, timestamp=specs[tp]) for tp in members
                ]
            )
            try:
                response = self._conn.call(address, "ListOffsets", request, self._timeout_ms(timeout))
            except ShoalError as exc:
                for tp in members:
                    out[tp] = _done(error=exc)
                continue
            for result in response.results:
                tp = TopicPartition(result.topic, result.partition)
                if result.error_code:
                    out[tp] = _done(error=error_for_code(result.error_code, result.error_message or str(tp)))
                else:
                    out[tp] = _done(ListOffsetsResult(result.offset, result.timestamp, result.leader_epoch))
        for tp in tps:
            out.setdefault(tp, _done(error=error_for_code(-1, f"no ListOffsets result for {tp}")))
        return out

    def delete_records(
        self, before: Mapping[TopicPartition, int], *, timeout: float | None = None
    ) -> dict[TopicPartition, Future[DeletedRecords]]:
        """Delete every record below the given offset (-1: the high watermark) of each partition."""
        tps = [TopicPartition(*tp) for tp in before]
        groups, failed = self._by_leader(tps)
        out: dict[TopicPartition, Future[DeletedRecords]] = {tp: _done(error=exc) for tp, exc in failed.items()}
        for address, members in groups.items():
            request = shoal_pb2.DeleteRecordsRequest(
                partitions=[
                    shoal_pb2.DeleteRecordsPartition(topic=tp.topic, partition=tp.partition, offset=before[tp]) for tp in members
                ],
                timeout_ms=self._timeout_ms(timeout),
            )
            try:
                response = self._conn.call(address, "DeleteRecords", request, self._timeout_ms(timeout) + 5000)
            except ShoalError as exc:
                for tp in members:
                    out[tp] = _done(error=exc)
                continue
            for result in response.results:
                tp = TopicPartition(result.topic, result.partition)
                if result.error_code:
                    out[tp] = _done(error=error_for_code(result.error_code, result.error_message or str(tp)))
                else:
                    out[tp] = _done(DeletedRecords(result.low_watermark))
        for tp in tps:
            out.setdefault(tp, _done(error=error_for_code(-1, f"no DeleteRecords result for {tp}")))
        return out

    # ------------------------------------------------------------ cluster

    def describe_cluster(self, *, timeout: float | None = None) -> ClusterDescription:
        """Nodes, the active controller, the Raft term, and each partition's leader/replicas/ISR."""
        r = self._any("DescribeCluster", shoal_pb2.DescribeClusterRequest(), timeout)
        return ClusterDescription(
            cluster_id=r.cluster_id,
            controller_id=r.controller_id,
            raft_term=r.raft_term,
            raft_commit_index=r.raft_commit_index,
            brokers=[BrokerDescription(b.node_id, b.host, b.port, b.fenced) for b in sorted(r.brokers, key=lambda b: b.node_id)],
            partitions=[
                PartitionHealth(p.topic, p.partition, p.leader, p.leader_epoch, list(p.replicas), list(p.isr))
                for p in sorted(r.partitions, key=lambda p: (p.topic, p.partition))
            ],
            under_replicated_partitions=r.under_replicated_partitions,
            offline_partitions=r.offline_partitions,
            answered_by=r.node_id,
        )

    # ------------------------------------------------------------ groups

    def list_groups(
        self, types: Iterable[str] | None = None, states: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> list[GroupListing]:
        """Groups of every coordinator, merged (types: "share", "consumer"; states: "Empty", "Stable", ...)."""
        request = shoal_pb2.ListGroupsRequest(types_filter=list(types or []), states_filter=list(states or []))
        brokers = self._retrying(lambda _r: self._conn.brokers(), timeout)
        merged: dict[str, GroupListing] = {}
        errors: list[ShoalError] = []
        for node_id, address in sorted(brokers.items()):
            try:
                response = self._conn.call(address, "ListGroups", request, self._timeout_ms(timeout))
            except ShoalError as exc:
                errors.append(exc)
                continue
            if response.error_code:
                errors.append(error_for_code(response.error_code, response.error_message))
                continue
            for g in response.groups:
                merged[g.group_id] = GroupListing(g.group_id, g.type, g.state, g.coordinator_id)
        if errors and not merged and len(errors) == len(brokers):
            raise errors[0]
        return sorted(merged.values(), key=lambda g: g.group_id)

    def _describe_groups(self, group_ids: Iterable[str], expected_type: str, timeout: float | None) -> dict[str, Future[GroupDescription]]:
        out: dict[str, Future[GroupDescription]] = {}
        for group_id in group_ids:
            try:
                response = self._coordinator(
                    group_id, "DescribeGroups", shoal_pb2.DescribeGroupsRequest(group_ids=[group_id]), timeout
                )
                match = [g for g in response.groups if g.group_id == group_id]
                if not match:
                    raise GroupIdNotFoundError(f"Group {group_id} not found.")
                g = match[0]
                if g.error_code:
                    raise error_for_code(g.error_code, g.error_message or f"group {group_id}")
                if g.type and g.type != expected_type:
                    raise GroupIdNotFoundError(f"Group {group_id} is not a {expected_type} group (it is a {g.type} group).")
                out[group_id] = _done(
                    GroupDescription(
                        group_id=g.group_id,
                        type=g.type,
                        state=g.state,
                        group_epoch=g.group_epoch,
                        assignment_epoch=g.assignment_epoch,
                        coordinator_id=g.coordinator_id,
                        members=[
                            MemberDescription(
                                m.member_id, m.client_id, m.client_host, m.member_epoch,
                                list(m.subscribed_topics), _assignment(m.assignment),
                            )
                            for m in g.members
                        ],
                    )
                )
            except ShoalError as exc:
                out[group_id] = _done(error=exc)
        return out

    def describe_share_groups(self, group_ids: Iterable[str], *, timeout: float | None = None) -> dict[str, Future[GroupDescription]]:
        return self._describe_groups(group_ids, "share", timeout)

    def describe_consumer_groups(self, group_ids: Iterable[str], *, timeout: float | None = None) -> dict[str, Future[GroupDescription]]:
        return self._describe_groups(group_ids, "consumer", timeout)

    def delete_groups(self, group_ids: Iterable[str], *, timeout: float | None = None) -> dict[str, Future[None]]:
        """Delete groups; a group with active members fails with GroupNotEmptyError."""
        out: dict[str, Future[None]] = {}
        for group_id in group_ids:
            try:
                response = self._coordinator(group_id, "DeleteGroups", shoal_pb2.DeleteGroupsRequest(group_ids=[group_id]), timeout)
                result = next((r for r in response.results if r.group_id == group_id), None)
                if result is None:
                    raise error_for_code(-1, f"no result for group {group_id}")
                if result.error_code:
                    raise error_for_code(result.error_code, result.error_message or f"group {group_id}")
                out[group_id] = _done(None)
            except ShoalError as exc:
                out[group_id] = _done(error=exc)
        return out

    def list_share_group_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None, *, timeout: float | None = None
    ) -> dict[TopicPartition, SharePartitionOffsetInfo]:
        """Start offset, leader epoch and lag of each initialized share partition of a group."""
        request = shoal_pb2.DescribeShareGroupOffsetsRequest(
            group_id=group_id,
            partitions=[shoal_pb2.TopicPartition(topic=tp[0], partition=tp[1]) for tp in (partitions or [])],
        )
        response = self._coordinator(group_id, "DescribeShareGroupOffsets", request, timeout)
        if response.error_code:
            raise error_for_code(response.error_code, response.error_message or f"group {group_id}")
        out: dict[TopicPartition, SharePartitionOffsetInfo] = {}
        for o in response.offsets:
            if o.error_code:
                raise error_for_code(o.error_code, o.error_message or f"{o.topic}-{o.partition}")
            out[TopicPartition(o.topic, o.partition)] = SharePartitionOffsetInfo(
                start_offset=o.start_offset,
                leader_epoch=o.leader_epoch if o.leader_epoch >= 0 else None,
                lag=o.lag if o.lag >= 0 else None,
            )
        return dict(sorted(out.items()))

    def alter_share_group_offsets(
        self, group_id: str, offsets: Mapping[TopicPartition, int], *, timeout: float | None = None
    ) -> None:
        """Set share-partition start offsets; the group must be empty (GroupNotEmptyError)."""
        request = shoal_pb2.AlterShareGroupOffsetsRequest(
            group_id=group_id,
            offsets=[
                shoal_pb2.SharePartitionOffset(topic=tp[0], partition=tp[1], start_offset=offset)
                for tp, offset in offsets.items()
            ],
        )
        response = self._coordinator(group_id, "AlterShareGroupOffsets", request, timeout)
        if response.error_code:
            raise error_for_code(response.error_code, response.error_message or f"group {group_id}")
        failures = [r for r in response.results if r.error_code]
        if failures:
            first = failures[0]
            detail = ", ".join(f"{r.topic}-{r.partition}: {shoal_pb2.ErrorCode.Name(r.error_code)}" for r in failures)
            raise error_for_code(first.error_code, f"altering share group offsets of {group_id} failed for {detail}")

    def delete_share_group_offsets(self, group_id: str, topics: Iterable[str], *, timeout: float | None = None) -> None:
        """Forget a share group's state for topics; the group must be empty."""
        request = shoal_pb2.DeleteShareGroupOffsetsRequest(group_id=group_id, topics=list(topics))
        response = self._coordinator(group_id, "DeleteShareGroupOffsets", request, timeout)
        if response.error_code:
            raise error_for_code(response.error_code, response.error_message or f"group {group_id}")
        failures = [r for r in response.results if r.error_code]
        if failures:
            detail = ", ".join(f"{r.name}: {r.error_message or shoal_pb2.ErrorCode.Name(r.error_code)}" for r in failures)
            raise error_for_code(failures[0].error_code, f"deleting share group offsets of {group_id} failed for {detail}")

    def describe_group_configs(self, group_ids: Iterable[str], *, timeout: float | None = None) -> dict[str, Future[list[ConfigEntry]]]:
        out: dict[str, Future[list[ConfigEntry]]] = {}
        for group_id in group_ids:
            try:
                response = self._coordinator(
                    group_id, "DescribeGroupConfigs", shoal_pb2.DescribeGroupConfigsRequest(group_ids=[group_id]), timeout
                )
                result = next((g for g in response.groups if g.group_id == group_id), None)
                if result is None:
                    raise error_for_code(-1, f"no configs returned for group {group_id}")
                if result.error_code:
                    raise error_for_code(result.error_code, result.error_message or f"group {group_id}")
                out[group_id] = _done(sorted((ConfigEntry(c.name, c.value, c.is_default) for c in result.configs), key=lambda c: c.name))
            except ShoalError as exc:
                out[group_id] = _done(error=exc)
        return out

    def alter_group_configs(
        self,
        group_id: str,
        *,
        set: Mapping[str, str] | None = None,
        delete: Iterable[str] = (),
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Set and/or delete group configs (share.auto.offset.reset, share.record.lock.duration.ms, ...)."""
        request = shoal_pb2.AlterGroupConfigsRequest(
            group_id=group_id, set={k: str(v) for k, v in (set or {}).items()}, delete=list(delete), validate_only=validate_only
        )
        response = self._coordinator(group_id, "AlterGroupConfigs", request, timeout)
        if response.result.error_code:
            raise error_for_code(response.result.error_code, response.result.error_message or f"group {group_id}")

    def describe_share_partitions(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None, *, timeout: float | None = None
    ) -> list[SharePartitionState]:
        """The in-flight window of each share partition (runs of offsets by state), from the leaders.

        Without ``partitions``: every partition of the group's initialized
        share partitions and of its members' assignments.
        """
        if partitions is None:
            wanted: set[TopicPartition] = set(self.list_share_group_offsets(group_id, timeout=timeout))
            description = self.describe_share_groups([group_id], timeout=timeout)[group_id].result()
            for member in description.members:
                wanted.update(member.assignment)
        else:
            wanted = {TopicPartition(*tp) for tp in partitions}
        groups, failed = self._by_leader(sorted(wanted))
        if failed:
            tp, exc = next(iter(failed.items()))
            raise exc
        states: list[SharePartitionState] = []
        for address, members in groups.items():
            request = shoal_pb2.DescribeSharePartitionsRequest(
                group_id=group_id,
                partitions=[shoal_pb2.TopicPartition(topic=tp.topic, partition=tp.partition) for tp in members],
            )
            response = self._conn.call(address, "DescribeSharePartitions", request, self._timeout_ms(timeout))
            for p in response.partitions:
                if p.error_code:
                    raise error_for_code(p.error_code, p.error_message or f"{p.topic}-{p.partition}")
                states.append(
                    SharePartitionState(
                        topic=p.topic,
                        partition=p.partition,
                        start_offset=p.start_offset,
                        end_offset=p.end_offset,
                        state_epoch=p.state_epoch,
                        leader_epoch=p.leader_epoch,
                        leader_id=p.leader_id,
                        delivery_complete_count=p.delivery_complete_count,
                        lag=p.lag,
                        high_watermark=p.high_watermark,
                        runs=[
                            StateRun(
                                r.first_offset, r.last_offset,
                                RecordState(r.state) if r.state in RecordState._value2member_map_ else RecordState.ARCHIVED,
                                r.delivery_count, r.member_id, r.lock_deadline_ms,
                            )
                            for r in p.runs
                        ],
                    )
                )
        return sorted(states, key=lambda s: (s.topic, s.partition))
