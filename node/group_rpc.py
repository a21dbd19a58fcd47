"""The group and share services of a node, as the gRPC server calls them.

``node/server.py`` builds one ``GroupServices(local, cluster, peers, settings)``,
awaits ``start()`` once the data plane is up, delegates the RPCs below to the
methods of the same name (``(request, context) -> response``), and awaits
``stop()`` on shutdown.

Wiring (one object per node)::

    ShareCoordinator (``__share_group_state`` shards)  <-- Internal.*ShareGroupState*
          ^ local calls / Internal RPCs to other nodes
    SharePersister  <-- ShareManager (ShareFetch, ShareAcknowledge, DescribeSharePartitions)
          ^                    ^ group settings (cached)
    GroupCoordinator (``__consumer_offsets`` shards)  <-- heartbeats, offsets, group admin

Rules
-----
* Request-level failures of ShareFetch / ShareAcknowledge and of the Internal
  share-state RPCs end the call with a gRPC status and the ErrorCode name in
  the "shoal-error-code" trailer (``node/grpc_errors.py``). The share
  coordinator's limits (RECORD_LIST_TOO_LARGE, POLICY_VIOLATION) are reported
  as RESOURCE_EXHAUSTED.
* Group-coordinator RPCs carry their errors in the response's error fields
  (the clients follow NOT_COORDINATOR from there), per group / per partition
  where the response has entries.
* Settings are the node's broker settings with Kafka's names (``group.*``
  validated by ``coordinator.config.GroupBrokerConfig``; ``share.coordinator.*``
  by the share coordinator).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import grpc

from coordinator.config import GroupBrokerConfig
from coordinator.errors import ErrorCode, OperatingError
from node.grpc_errors import ERROR_CODE_METADATA_KEY, abort_with
from node.group_coordinator import GroupCoordinator
from node.interfaces import DEFAULT_INTERNAL_TOPIC_PARTITIONS, ClusterView, LocalPartitions, PeerClients
from node.share_coordinator import ShareCoordinator
from node.share_manager import ShareManager
from node.share_persister import SharePersister

log = logging.getLogger("node.group_rpc")

_LIMIT_CODES = frozenset({ErrorCode.RECORD_LIST_TOO_LARGE, ErrorCode.POLICY_VIOLATION})


def _raw_settings(settings: Any) -> Mapping[str, Any]:
    """``node.config.BrokerSettings`` (its ``raw`` strings) or a plain mapping."""
    raw = getattr(settings, "raw", None)
    return raw if raw is not None else (settings or {})


async def _abort(context, error: OperatingError) -> None:
    if error.code in _LIMIT_CODES:
        context.set_trailing_metadata(((ERROR_CODE_METADATA_KEY, error.code.name),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, error.message)
    await abort_with(context, error)


class GroupServices:
    """Group coordinator, share coordinator and share-partition leaders of one node."""

    def __init__(self, local: LocalPartitions, cluster: ClusterView, peers: PeerClients, settings: Any) -> None:
        raw = _raw_settings(settings)
        self.broker_config = GroupBrokerConfig.from_mapping(raw)
        offsets_partitions = int(raw.get("offsets.topic.num.partitions", DEFAULT_INTERNAL_TOPIC_PARTITIONS))
        self.share_coordinator = ShareCoordinator(local, raw)
        self.persister = SharePersister(
            cluster, peers, self.share_coordinator, self.share_coordinator.runtime.num_partitions
        )
        self.group_coordinator = GroupCoordinator(
            local, cluster, peers, self.broker_config, offsets_partitions, self.persister,
            release_member=lambda group_id, member_id: self.share_manager.release_member(group_id, member_id),
        )
        self.share_manager = ShareManager(
            local, cluster, self.persister, self.group_coordinator.share_settings,
            max_share_sessions=self.broker_config.share_max_share_sessions,
        )

    async def start(self) -> None:
        self.share_coordinator.start()
        self.group_coordinator.start()
        self.share_manager.start()

    async def stop(self) -> None:
        await self.share_manager.stop()
        await self.group_coordinator.stop()
        await self.share_coordinator.stop()

    # ------------------------------------------------------------------ share-partition leaders

    async def ShareFetch(self, request, context):
        try:
            return await self.share_manager.ShareFetch(request)
        except OperatingError as error:
            await _abort(context, error)

    async def ShareAcknowledge(self, request, context):
        try:
            return await self.share_manager.ShareAcknowledge(request)
        except OperatingError as error:
            await _abort(context, error)

    async def DescribeSharePartitions(self, request, context):
        return await self.share_manager.DescribeSharePartitions(request)

    # ------------------------------------------------------------------ group coordinator

    async def ShareGroupHeartbeat(self, request, context):
        return await self.group_coordinator.ShareGroupHeartbeat(request, context)

    async def ConsumerGroupHeartbeat(self, request, context):
        return await self.group_coordinator.ConsumerGroupHeartbeat(request, context)

    async def OffsetCommit(self, request, context):
        return await self.group_coordinator.OffsetCommit(request, context)

    async def OffsetFetch(self, request, context):
        return await self.group_coordinator.OffsetFetch(request, context)

    async def ListGroups(self, request, context):
        return await self.group_coordinator.ListGroups(request, context)

    async def DescribeGroups(self, request, context):
        return await self.group_coordinator.DescribeGroups(request, context)

    async def DescribeShareGroupOffsets(self, request, context):
        return await self.group_coordinator.DescribeShareGroupOffsets(request, context)

    async def AlterShareGroupOffsets(self, request, context):
        return await self.group_coordinator.AlterShareGroupOffsets(request, context)

    async def DeleteShareGroupOffsets(self, request, context):
        return await self.group_coordinator.DeleteShareGroupOffsets(request, context)

    async def DeleteGroups(self, request, context):
        return await self.group_coordinator.DeleteGroups(request, context)

    async def DescribeGroupConfigs(self, request, context):
        return await self.group_coordinator.DescribeGroupConfigs(request, context)

    async def AlterGroupConfigs(self, request, context):
        return await self.group_coordinator.AlterGroupConfigs(request, context)

    # ------------------------------------------------------------------ share coordinator (Internal)

    async def ReadShareGroupState(self, request, context):
        try:
            return await self.share_coordinator.ReadShareGroupState(request, context)
        except OperatingError as error:
            await _abort(context, error)

    async def WriteShareGroupState(self, request, context):
        return await self.share_coordinator.WriteShareGroupState(request, context)

    async def InitializeShareGroupState(self, request, context):
        try:
            return await self.share_coordinator.InitializeShareGroupState(request, context)
        except OperatingError as error:
            await _abort(context, error)

    async def DeleteShareGroupState(self, request, context):
        try:
            return await self.share_coordinator.DeleteShareGroupState(request, context)
        except OperatingError as error:
            await _abort(context, error)

    async def ReadShareGroupStateSummary(self, request, context):
        return await self.share_coordinator.ReadShareGroupStateSummary(request, context)
