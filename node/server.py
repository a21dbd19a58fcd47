"""gRPC servicers: the Broker and Internal services of one node.

Rules
* Per-partition failures go into the response's ``error_code`` /
  ``error_message`` (with a LeaderHint for NOT_LEADER_OR_FOLLOWER and
  FENCED_LEADER_EPOCH); request-level failures abort the call with a status
  code and the ErrorCode name in the ``shoal-error-code`` trailer
  (node/grpc_errors.py).
* Requests are decoded by our own deserializer: bytes that are not a valid
  message (truncated, garbage) end the call with INVALID_ARGUMENT /
  INVALID_REQUEST instead of gRPC's generic INTERNAL. Messages above
  ``grpc.max.message.bytes`` are refused by gRPC itself (RESOURCE_EXHAUSTED).
* Bounds: a request names at most `MAX_PARTITIONS_PER_REQUEST` partitions and
  at most `MAX_TOPICS_PER_REQUEST` topics; long polls wait at most
  `MAX_WAIT_MS`.
* Admin mutations run on the active controller. Another node forwards the
  same request to the controller's listener once, marked with the
  ``shoal-forwarded`` metadata key; a forwarded request that reaches a node
  that is not (any longer) the controller fails with NOT_CONTROLLER
  (UNAVAILABLE: retry).
* Group and share RPCs are served by ``node.group_rpc.GroupServices`` when
  that module exists; without it they answer UNIMPLEMENTED with a message.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Callable

import grpc

from cluster import controller as decisions
from cluster.metadata import (
    AllocateProducerIds,
    AlterTopicConfigs,
    DeleteTopic,
    MetadataImage,
    ProducerIdBlock,
)
from cluster.topic_config import validate_min_insync_replicas, validate_topic_configs, validate_topic_name
from coordinator.errors import ErrorCode, OperatingError
from node.grpc_errors import abort_with, error_code_of
from node.interfaces import CONSUMER_OFFSETS_TOPIC, SHARE_STATE_TOPIC, coordinator_partition, monotonic_ms
from node.replica_manager import Role, wait_any
from proto import shoal_pb2

log = logging.getLogger("node.server")

MAX_PARTITIONS_PER_REQUEST = 10_000
MAX_TOPICS_PER_REQUEST = 1_000
MAX_WAIT_MS = 30_000
DEFAULT_PRODUCE_TIMEOUT_MS = 30_000
DEFAULT_PARTITION_MAX_BYTES = 1 << 20
DEFAULT_FETCH_MAX_BYTES = 50 << 20
FORWARDED_METADATA_KEY = "shoal-forwarded"
ADMIN_TIMEOUT_S = 10.0
PRODUCER_ID_BLOCK = 1000
CLUSTER_ID = "shoal"

GROUP_BROKER_METHODS = (
    "ShareGroupHeartbeat",
    "ShareFetch",
    "ShareAcknowledge",
    "ConsumerGroupHeartbeat",
    "OffsetCommit",
    "OffsetFetch",
    "ListGroups",
    "DescribeGroups",
    "DescribeShareGroupOffsets",
    "AlterShareGroupOffsets",
    "DeleteShareGroupOffsets",
    "DeleteGroups",
    "DescribeGroupConfigs",
    "AlterGroupConfigs",
    "DescribeSharePartitions",
)
GROUP_INTERNAL_METHODS = (
    "ReadShareGroupState",
    "WriteShareGroupState",
    "InitializeShareGroupState",
    "DeleteShareGroupState",
    "ReadShareGroupStateSummary",
)


class _BadRequest:
    """What our deserializer returns for bytes that do not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe_deserializer(message_class: type) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as error:  # protobuf raises DecodeError (and others on garbage)
            return _BadRequest(f"the request is not a valid {message_class.__name__}: {error}")

    return deserialize


def _operating_error_from_rpc(error: grpc.aio.AioRpcError, what: str) -> OperatingError:
    code = error_code_of(error)
    if code is not None:
        return OperatingError(code, error.details() or what)
    return OperatingError(ErrorCode.NOT_CONTROLLER, f"{what}: {error.code().name} {error.details()}")


def _leader_hint(replicas, topic: str, partition: int) -> shoal_pb2.LeaderHint:
    leader, epoch = replicas.leader_hint(topic, partition)
    return shoal_pb2.LeaderHint(leader_id=leader, leader_epoch=epoch)


_HINTED_CODES = (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH, ErrorCode.UNKNOWN_LEADER_EPOCH)


class Servicer:
    """Both services; methods are looked up by gRPC method name."""

    def __init__(self, node) -> None:
        self.node = node
        self.replicas = node.replicas
        self._producer_ids: list[int] = []  # [next, end)
        self._producer_id_lock = asyncio.Lock()

    # ------------------------------------------------------------ helpers

    def _image(self) -> MetadataImage:
        return self.node.image()

    def _refuse_internal(self, topic: str, action: str) -> None:
        """Clients may read internal topics but never write them (as in Kafka):
        only the coordinators on this node append to them, through
        LocalPartitions, so a client cannot corrupt group or share state."""
        registration = self._image().topic_by_name(topic)
        if registration is not None and registration.internal:
            raise OperatingError(
                ErrorCode.INVALID_TOPIC_EXCEPTION,
                f"cannot {action} internal topic {topic!r}: it belongs to the group and share coordinators",
            )

    @staticmethod
    def _check_partition_count(count: int) -> None:
        if count > MAX_PARTITIONS_PER_REQUEST:
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"the request names {count} partitions; the limit is {MAX_PARTITIONS_PER_REQUEST} per request",
            )

    # ------------------------------------------------------------ produce

    async def Produce(self, request: shoal_pb2.ProduceRequest, context) -> shoal_pb2.ProduceResponse:
        if request.acks not in (-1, 0, 1):
            raise OperatingError(ErrorCode.INVALID_REQUIRED_ACKS, f"acks must be -1 (all), 0 or 1, got {request.acks}")
        self._check_partition_count(len(request.partitions))
        timeout_ms = request.timeout_ms if request.timeout_ms > 0 else DEFAULT_PRODUCE_TIMEOUT_MS
        seen: set[tuple[str, int]] = set()

        async def one(entry: shoal_pb2.PartitionRecords) -> shoal_pb2.ProducePartitionResult:
            result = shoal_pb2.ProducePartitionResult(topic=entry.topic, partition=entry.partition)
            key = (entry.topic, entry.partition)
            try:
                if key in seen:
                    raise OperatingError(ErrorCode.INVALID_REQUEST, f"{entry.topic}-{entry.partition} appears twice")
                seen.add(key)
                self._refuse_internal(entry.topic, "append to")
                appended = await self.replicas.append(
                    entry.topic, entry.partition, entry.records, acks=request.acks, timeout_ms=timeout_ms
                )
                result.base_offset = appended.base_offset
                result.log_append_time_ms = appended.log_append_time_ms
                result.log_start_offset = self.replicas.log_start_offset(entry.topic, entry.partition)
            except OperatingError as error:
                result.error_code = int(error.code)
                result.error_message = error.message
                result.base_offset = -1
                if error.code in _HINTED_CODES:
                    result.current_leader.CopyFrom(_leader_hint(self.replicas, entry.topic, entry.partition))
            return result

        results = await asyncio.gather(*(one(entry) for entry in request.partitions))
        return shoal_pb2.ProduceResponse(results=results)

    # ------------------------------------------------------------ fetch

    async def Fetch(self, request: shoal_pb2.FetchRequest, context) -> shoal_pb2.FetchResponse:
        self._check_partition_count(len(request.partitions))
        if request.max_wait_ms < 0 or request.min_bytes < 0 or request.max_bytes < 0:
            raise OperatingError(ErrorCode.INVALID_REQUEST, "max_wait_ms, min_bytes and max_bytes must be >= 0")
        max_wait_ms = min(request.max_wait_ms, MAX_WAIT_MS)
        max_bytes = request.max_bytes or DEFAULT_FETCH_MAX_BYTES
        deadline_ms = monotonic_ms() + max_wait_ms
        keys = [(p.topic, p.partition) for p in request.partitions]
        while True:
            response, total_bytes, any_error = self._fetch_once(request, max_bytes)
            remaining_ms = deadline_ms - monotonic_ms()
            if total_bytes >= request.min_bytes or any_error or remaining_ms <= 0:
                return response
            # Park until any partition's HW moves (or leadership changes).
            await wait_any(self.replicas.park_on(keys), remaining_ms)

    def _fetch_once(self, request: shoal_pb2.FetchRequest, max_bytes: int) -> tuple[shoal_pb2.FetchResponse, int, bool]:
        response = shoal_pb2.FetchResponse()
        total = 0
        any_error = False
        for entry in request.partitions:
            data = response.partitions.add(topic=entry.topic, partition=entry.partition)
            try:
                partition_max = entry.partition_max_bytes or DEFAULT_PARTITION_MAX_BYTES
                if partition_max < 0:
                    raise OperatingError(ErrorCode.INVALID_FETCH_SIZE, "partition_max_bytes must be >= 0")
                budget = min(partition_max, max(0, max_bytes - total))
                if budget == 0 and total > 0:
                    # Over the request's max_bytes: report the offsets only.
                    data.high_watermark = self.replicas.high_watermark(entry.topic, entry.partition)
                    data.log_start_offset = self.replicas.log_start_offset(entry.topic, entry.partition)
                    continue
                result = self.replicas.fetch_partition(
                    entry.topic, entry.partition, entry.fetch_offset, max(budget, 1), entry.current_leader_epoch
                )
                data.records = result.records
                data.high_watermark = result.high_watermark
                data.log_start_offset = result.log_start_offset
                total += len(result.records)
            except OperatingError as error:
                any_error = True
                data.error_code = int(error.code)
                data.error_message = error.message
                data.high_watermark = -1
                data.log_start_offset = -1
                if error.code in _HINTED_CODES:
                    data.current_leader.CopyFrom(_leader_hint(self.replicas, entry.topic, entry.partition))
        return response, total, any_error

    # ------------------------------------------------------------ offsets

    async def ListOffsets(self, request: shoal_pb2.ListOffsetsRequest, context) -> shoal_pb2.ListOffsetsResponse:
        self._check_partition_count(len(request.partitions))
        response = shoal_pb2.ListOffsetsResponse()
        for entry in request.partitions:
            result = response.results.add(topic=entry.topic, partition=entry.partition, offset=-1, timestamp=-1)
            try:
                if not self.replicas.is_leader(entry.topic, entry.partition):
                    self.replicas._leader(entry.topic, entry.partition)  # raises the typed error
                result.leader_epoch = self.replicas.leader_epoch(entry.topic, entry.partition)
                high_watermark = self.replicas.high_watermark(entry.topic, entry.partition)
                if entry.timestamp == -2:
                    result.offset = self.replicas.log_start_offset(entry.topic, entry.partition)
                elif entry.timestamp == -1:
                    result.offset = high_watermark
                elif entry.timestamp < 0:
                    raise OperatingError(
                        ErrorCode.INVALID_REQUEST,
                        f"timestamp {entry.timestamp} is not valid: use -2 (earliest), -1 (latest) or a time in ms",
                    )
                else:
                    found = await self.replicas.record_for_timestamp(entry.topic, entry.partition, entry.timestamp)
                    if found is not None:
                        # Kafka answers with the found record's own timestamp.
                        result.offset, result.timestamp = found
            except OperatingError as error:
                result.error_code = int(error.code)
                result.error_message = error.message
        return response

    async def DeleteRecords(self, request: shoal_pb2.DeleteRecordsRequest, context) -> shoal_pb2.DeleteRecordsResponse:
        self._check_partition_count(len(request.partitions))
        response = shoal_pb2.DeleteRecordsResponse()
        for entry in request.partitions:
            result = response.results.add(topic=entry.topic, partition=entry.partition, low_watermark=-1)
            try:
                self._refuse_internal(entry.topic, "delete records of")
                result.low_watermark = await self.replicas.delete_records_before(entry.topic, entry.partition, entry.offset)
            except OperatingError as error:
                result.error_code = int(error.code)
                result.error_message = error.message
        return response

    # ------------------------------------------------------------ metadata

    def _broker_infos(self, image: MetadataImage) -> list[shoal_pb2.BrokerInfo]:
        return [
            shoal_pb2.BrokerInfo(node_id=b.broker_id, host=b.host, port=b.port, fenced=b.fenced)
            for b in image.brokers_list()
        ]

    def _controller_id(self) -> int:
        leader = self.node.quorum.leader_node_id()
        return -1 if leader is None else leader

    def _topics_for(self, image: MetadataImage, names: list[str], include_internal: bool) -> list[shoal_pb2.TopicMetadata]:
        if len(names) > MAX_TOPICS_PER_REQUEST:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"at most {MAX_TOPICS_PER_REQUEST} topics per request")
        topics = []
        selected = names or [t.name for t in image.topics() if include_internal or not t.internal]
        for name in selected:
            registration = image.topic_by_name(name)
            if registration is None:
                topics.append(
                    shoal_pb2.TopicMetadata(
                        name=name,
                        error_code=shoal_pb2.UNKNOWN_TOPIC_OR_PARTITION,
                        error_message=f"topic {name!r} does not exist",
                    )
                )
                continue
            topic = shoal_pb2.TopicMetadata(name=name, topic_id=registration.topic_id, internal=registration.internal)
            for p in registration.partitions:
                topic.partitions.add(
                    partition=p.partition,
                    leader=p.leader,
                    leader_epoch=p.leader_epoch,
                    replicas=p.replicas,
                    isr=p.isr,
                    error_code=shoal_pb2.LEADER_NOT_AVAILABLE if p.leader < 0 else shoal_pb2.NONE,
                )
            topics.append(topic)
        return topics

    async def Metadata(self, request: shoal_pb2.MetadataRequest, context) -> shoal_pb2.MetadataResponse:
        image = self._image()
        return shoal_pb2.MetadataResponse(
            cluster_id=CLUSTER_ID,
            controller_id=self._controller_id(),
            brokers=self._broker_infos(image),
            topics=self._topics_for(image, list(request.topics), request.include_internal),
        )

    async def DescribeTopics(self, request: shoal_pb2.DescribeTopicsRequest, context) -> shoal_pb2.DescribeTopicsResponse:
        image = self._image()
        topics = self._topics_for(image, list(request.names), request.include_internal)
        remote: dict[int, list[tuple[shoal_pb2.PartitionMetadata, str]]] = {}
        for topic in topics:
            registration = image.topic_by_name(topic.name)
            if registration is None:
                continue
            topic.configs.update(registration.configs)
            for p in topic.partitions:
                if self.replicas.is_leader(topic.name, p.partition):
                    p.high_watermark = self.replicas.high_watermark(topic.name, p.partition)
                    p.log_start_offset = self.replicas.log_start_offset(topic.name, p.partition)
                elif p.leader >= 0:
                    p.high_watermark = -1
                    p.log_start_offset = -1
                    remote.setdefault(p.leader, []).append((p, topic.name))
                else:
                    p.high_watermark = -1
                    p.log_start_offset = -1
        await asyncio.gather(*(self._fill_offsets_from(leader, entries) for leader, entries in remote.items()))
        return shoal_pb2.DescribeTopicsResponse(topics=topics)

    async def _fill_offsets_from(self, leader: int, entries: list[tuple[shoal_pb2.PartitionMetadata, str]]) -> None:
        """Ask a leader for HW and log start (ListOffsets latest/earliest); -1 if it cannot answer."""
        request = shoal_pb2.ListOffsetsRequest()
        for p, name in entries:
            request.partitions.add(topic=name, partition=p.partition, timestamp=-1)
            request.partitions.add(topic=name, partition=p.partition, timestamp=-2)
        try:
            response = await self.node.peers.broker(leader).ListOffsets(request, timeout=2.0)
        except (grpc.aio.AioRpcError, KeyError):
            return
        by_key = {}
        for result in response.results:
            if result.error_code == shoal_pb2.NONE:
                by_key.setdefault((result.topic, result.partition), []).append(result.offset)
        for p, name in entries:
            offsets = by_key.get((name, p.partition))
            if offsets and len(offsets) == 2:
                p.high_watermark, p.log_start_offset = offsets[0], offsets[1]

    async def DescribeCluster(self, request, context) -> shoal_pb2.DescribeClusterResponse:
        image = self._image()
        quorum = self.node.quorum
        response = shoal_pb2.DescribeClusterResponse(
            cluster_id=CLUSTER_ID,
            controller_id=self._controller_id(),
            raft_term=quorum.term(),
            raft_commit_index=quorum.commit_index(),
            brokers=self._broker_infos(image),
            node_id=self.node.node_id,
        )
        under_replicated = offline = 0
        for p in image.all_partitions():
            response.partitions.add(
                topic=p.topic,
                partition=p.partition,
                leader=p.leader,
                leader_epoch=p.leader_epoch,
                replicas=p.replicas,
                isr=p.isr,
            )
            if p.leader < 0:
                offline += 1
            elif len(p.isr) < len(p.replicas):
                under_replicated += 1
        response.under_replicated_partitions = under_replicated
        response.offline_partitions = offline
        return response

    # ------------------------------------------------------------ admin (controller)

    async def _forward_or_run(self, method: str, request, context, run: Callable):
        if self.node.controller.active and self.node.quorum.is_leader():
            return await run(request)
        forwarded = any(key == FORWARDED_METADATA_KEY for key, _ in (context.invocation_metadata() or ()))
        controller_id = self.node.quorum.leader_node_id()
        if forwarded or controller_id is None or controller_id == self.node.node_id:
            raise OperatingError(
                ErrorCode.NOT_CONTROLLER,
                "no active controller is known to this node right now (election in progress); retry shortly",
            )
        stub = self.node.peers.broker(controller_id)
        try:
            return await getattr(stub, method)(
                request, timeout=ADMIN_TIMEOUT_S + 2, metadata=((FORWARDED_METADATA_KEY, str(self.node.node_id)),)
            )
        except grpc.aio.AioRpcError as error:
            raise _operating_error_from_rpc(error, f"forwarding {method} to the controller (node {controller_id}) failed")
        except KeyError:
            raise OperatingError(ErrorCode.NOT_CONTROLLER, f"the controller (node {controller_id}) has no known address yet; retry")

    async def CreateTopics(self, request: shoal_pb2.CreateTopicsRequest, context) -> shoal_pb2.CreateTopicsResponse:
        if len(request.topics) > MAX_TOPICS_PER_REQUEST:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"at most {MAX_TOPICS_PER_REQUEST} topics per request")
        return await self._forward_or_run("CreateTopics", request, context, self._create_topics)

    async def _create_topics(self, request: shoal_pb2.CreateTopicsRequest) -> shoal_pb2.CreateTopicsResponse:
        response = shoal_pb2.CreateTopicsResponse()
        names = [t.name for t in request.topics]
        for new_topic in request.topics:
            result = response.results.add(name=new_topic.name)
            try:
                if names.count(new_topic.name) > 1:
                    raise OperatingError(ErrorCode.INVALID_REQUEST, f"topic {new_topic.name!r} appears twice in the request")
                command = self._plan_topic(new_topic)
                if not request.validate_only:
                    await self.node.propose(command, ADMIN_TIMEOUT_S)
                result.topic_id = command.topic_id
            except OperatingError as error:
                result.error_code = int(error.code)
                result.error_message = error.message
        return response

    def _plan_topic(self, new_topic: shoal_pb2.NewTopic):
        settings = self.node.settings
        image = self._image()
        validate_topic_name(new_topic.name)
        num_partitions = new_topic.num_partitions
        if num_partitions == -1:
            num_partitions = settings["num.partitions"]
        if num_partitions < 1:
            raise OperatingError(
                ErrorCode.INVALID_PARTITIONS, f"num_partitions must be at least 1 (or -1 for the default), got {num_partitions}"
            )
        live = image.live_broker_ids()
        replication_factor = new_topic.replication_factor
        if replication_factor == -1:
            configured = settings["default.replication.factor"]
            replication_factor = configured if configured > 0 else min(3, max(1, len(live)))
        if replication_factor < 1:
            raise OperatingError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication_factor must be at least 1 (or -1 for the default), got {replication_factor}",
            )
        configs = dict(new_topic.configs)
        if "message.max.bytes" in settings.explicit and "max.message.bytes" not in configs:
            configs["max.message.bytes"] = str(settings["message.max.bytes"])
        if "min.insync.replicas" in settings.explicit and "min.insync.replicas" not in configs:
            # An explicitly configured broker default applies to new topics
            # (capped by the replication factor so the topic stays writable).
            configs["min.insync.replicas"] = str(min(settings["min.insync.replicas"], replication_factor))
        validate_min_insync_replicas(validate_topic_configs(configs), replication_factor)
        return decisions.plan_create_topic(
            image, new_topic.name, uuid.uuid4().hex, num_partitions, replication_factor, configs
        )

    async def DeleteTopics(self, request: shoal_pb2.DeleteTopicsRequest, context) -> shoal_pb2.DeleteTopicsResponse:
        if len(request.names) > MAX_TOPICS_PER_REQUEST:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"at most {MAX_TOPICS_PER_REQUEST} topics per request")
        return await self._forward_or_run("DeleteTopics", request, context, self._delete_topics)

    async def _delete_topics(self, request: shoal_pb2.DeleteTopicsRequest) -> shoal_pb2.DeleteTopicsResponse:
        response = shoal_pb2.DeleteTopicsResponse()
        for name in request.names:
            result = response.results.add(name=name)
            try:
                registration = self._image().topic_by_name(name)
                if registration is not None:
                    result.topic_id = registration.topic_id
                await self.node.propose(DeleteTopic(name), ADMIN_TIMEOUT_S)
            except OperatingError as error:
                result.error_code = int(error.code)
                result.error_message = error.message
        return response

    async def AlterTopicConfigs(self, request: shoal_pb2.AlterTopicConfigsRequest, context) -> shoal_pb2.AlterTopicConfigsResponse:
        return await self._forward_or_run("AlterTopicConfigs", request, context, self._alter_topic_configs)

    async def _alter_topic_configs(self, request: shoal_pb2.AlterTopicConfigsRequest) -> shoal_pb2.AlterTopicConfigsResponse:
        result = shoal_pb2.TopicResult(name=request.name)
        try:
            registration = self._image().topic_by_name(request.name)
            if registration is None:
                raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {request.name!r} does not exist")
            result.topic_id = registration.topic_id
            changes: dict[str, str | None] = dict(request.set)
            for name in request.delete:
                if name in changes:
                    raise OperatingError(ErrorCode.INVALID_CONFIG, f"config {name!r} is both set and deleted")
                changes[name] = None
            merged = dict(registration.configs)
            for name, value in changes.items():
                if value is None:
                    merged.pop(name, None)
                else:
                    merged[name] = value
            validate_min_insync_replicas(validate_topic_configs(merged), registration.replication_factor)
            if not request.validate_only:
                await self.node.propose(AlterTopicConfigs(request.name, changes), ADMIN_TIMEOUT_S)
        except OperatingError as error:
            result.error_code = int(error.code)
            result.error_message = error.message
        return shoal_pb2.AlterTopicConfigsResponse(result=result)

    async def InitProducerId(self, request, context) -> shoal_pb2.InitProducerIdResponse:
        async with self._producer_id_lock:
            if not self._producer_ids or self._producer_ids[0] >= self._producer_ids[1]:
                try:
                    block = await self.node.propose(AllocateProducerIds(self.node.node_id, PRODUCER_ID_BLOCK), ADMIN_TIMEOUT_S)
                except OperatingError as error:
                    return shoal_pb2.InitProducerIdResponse(error_code=int(error.code), error_message=error.message, producer_id=-1, producer_epoch=-1)
                assert isinstance(block, ProducerIdBlock)
                self._producer_ids = [block.first_id, block.first_id + block.count]
            producer_id = self._producer_ids[0]
            self._producer_ids[0] += 1
        return shoal_pb2.InitProducerIdResponse(producer_id=producer_id, producer_epoch=0)

    async def FindCoordinator(self, request: shoal_pb2.FindCoordinatorRequest, context) -> shoal_pb2.FindCoordinatorResponse:
        if request.key_type == 0:
            topic = CONSUMER_OFFSETS_TOPIC
        elif request.key_type == 2:
            topic = SHARE_STATE_TOPIC
        else:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"key_type must be 0 (group) or 2 (share), got {request.key_type}")
        if len(request.keys) > MAX_PARTITIONS_PER_REQUEST:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"at most {MAX_PARTITIONS_PER_REQUEST} keys per request")
        image = self._image()
        registration = image.topic_by_name(topic)
        response = shoal_pb2.FindCoordinatorResponse()
        for key in request.keys:
            entry = response.coordinators.add(key=key, node_id=-1, port=-1)
            if registration is None:
                entry.error_code = shoal_pb2.COORDINATOR_NOT_AVAILABLE
                entry.error_message = f"internal topic {topic} is not created yet (it is created once enough brokers are up)"
                continue
            partition = registration.partitions[coordinator_partition(key, len(registration.partitions))]
            broker = image.broker(partition.leader) if partition.leader >= 0 else None
            if broker is None:
                entry.error_code = shoal_pb2.COORDINATOR_NOT_AVAILABLE
                entry.error_message = f"{topic}-{partition.partition} has no leader right now; retry"
                continue
            entry.node_id = broker.broker_id
            entry.host = broker.host
            entry.port = broker.port
        return response

    # ------------------------------------------------------------ internal

    async def ReplicaFetch(self, request: shoal_pb2.ReplicaFetchRequest, context) -> shoal_pb2.ReplicaFetchResponse:
        self._check_partition_count(len(request.partitions))
        max_wait_ms = min(max(request.max_wait_ms, 0), MAX_WAIT_MS)
        max_bytes = request.max_bytes if request.max_bytes > 0 else DEFAULT_PARTITION_MAX_BYTES
        deadline_ms = monotonic_ms() + max_wait_ms
        keys = [(p.topic, p.partition) for p in request.partitions]
        follower_id = request.replica_id
        while True:
            response = self._replica_fetch_once(request, max_bytes)
            remaining_ms = deadline_ms - monotonic_ms()
            answer_now = (
                remaining_ms <= 0
                or any(
                    data.records or data.error_code != shoal_pb2.NONE or data.HasField("diverging_epoch")
                    for data in response.partitions
                )
                # A newer HW than the follower has seen is news worth a response.
                or any(
                    self.replicas.follower_needs_answer(follower_id, key, p.fetch_offset)
                    for key, p in zip(keys, request.partitions)
                )
            )
            if answer_now:
                for key, data in zip(keys, response.partitions):
                    if data.error_code == shoal_pb2.NONE:
                        self.replicas.note_high_watermark_sent(follower_id, key, data.high_watermark)
                return response
            # Park until data or a newer HW arrives (or leadership changes).
            parked = self.replicas.park_on(keys)
            if any(
                self.replicas.follower_needs_answer(request.replica_id, key, p.fetch_offset)
                for key, p in zip(keys, request.partitions)
            ):
                for replica, future in parked:
                    future.cancel()
                    if future in replica.waiters:
                        replica.waiters.remove(future)
                continue
            await wait_any(parked, remaining_ms)

    def _replica_fetch_once(self, request: shoal_pb2.ReplicaFetchRequest, max_bytes: int) -> shoal_pb2.ReplicaFetchResponse:
        response = shoal_pb2.ReplicaFetchResponse()
        total = 0
        for entry in request.partitions:
            data = response.partitions.add(topic=entry.topic, partition=entry.partition)
            try:
                # Past the byte budget a partition still reports its fetch
                # offset (the HW and ISR depend on it) but reads nothing.
                records, high_watermark, log_start, diverging = self.replicas.replica_fetch_partition(
                    request.replica_id,
                    entry.topic,
                    entry.partition,
                    entry.fetch_offset,
                    entry.current_leader_epoch,
                    entry.last_fetched_epoch,
                    max(0, max_bytes - total),
                )
                data.records = records
                data.high_watermark = high_watermark
                data.log_start_offset = log_start
                total += len(records)
                if diverging is not None:
                    data.diverging_epoch.epoch = diverging[0]
                    data.diverging_epoch.end_offset = diverging[1]
            except OperatingError as error:
                data.error_code = int(error.code)
                data.error_message = error.message
                if error.code == ErrorCode.OFFSET_OUT_OF_RANGE:
                    try:
                        data.log_start_offset = self.replicas.log_start_offset(entry.topic, entry.partition)
                        data.high_watermark = self.replicas.high_watermark(entry.topic, entry.partition)
                    except OperatingError:
                        pass
        return response

    async def BrokerHeartbeat(self, request: shoal_pb2.BrokerHeartbeatRequest, context) -> shoal_pb2.BrokerHeartbeatResponse:
        return await self.node.controller.heartbeat(request)


def _delegate(node, name: str) -> Callable:
    async def handler(request, context):
        services = node.group_services
        if services is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{name} is served by the group services (node/group_rpc.py), which this build does not include yet",
            )
        return await getattr(services, name)(request, context)

    return handler


def _wrap(behavior: Callable, method_name: str) -> Callable:
    async def handler(request, context):
        if isinstance(request, _BadRequest):
            await abort_with(context, OperatingError(ErrorCode.INVALID_REQUEST, request.reason))
        try:
            return await behavior(request, context)
        except OperatingError as error:
            await abort_with(context, error)

    handler.__name__ = method_name
    return handler


def build_server(node, max_message_bytes: int, interceptors: list | None = None) -> grpc.aio.Server:
    servicer = Servicer(node)
    server = grpc.aio.server(
        interceptors=interceptors or None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
    )
    handlers = []
    for service_name in ("Broker", "Internal"):
        service = shoal_pb2.DESCRIPTOR.services_by_name[service_name]
        method_handlers = {}
        for method in service.methods:
            request_class = getattr(shoal_pb2, method.input_type.name)
            response_class = getattr(shoal_pb2, method.output_type.name)
            if method.name in GROUP_BROKER_METHODS or method.name in GROUP_INTERNAL_METHODS:
                behavior = _delegate(node, method.name)
            else:
                behavior = getattr(servicer, method.name)
            method_handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _wrap(behavior, method.name),
                request_deserializer=_safe_deserializer(request_class),
                response_serializer=response_class.SerializeToString,
            )
        handlers.append(grpc.method_handlers_generic_handler(service.full_name, method_handlers))
    server.add_generic_rpc_handlers(handlers)
    return server
