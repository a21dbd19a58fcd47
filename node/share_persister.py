"""The share-partition leader's client of the share coordinator (Kafka's Persister).

Rules
-----
* The coordinator of a share partition is the leader of ``__share_group_state``
  partition ``coordinator_partition("group:topic:partition")`` as this node's
  metadata names it. When that is this node, calls go straight to the local
  ``ShareCoordinator`` (no gRPC); otherwise to the peer's Internal service.
* Every call retries while the error is retriable (NOT_COORDINATOR,
  COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, an unreachable
  peer, ...) with backoff, until its deadline; then the last error is raised
  as an ``OperatingError``. An attempt still unanswered at the deadline is
  abandoned with COORDINATOR_NOT_AVAILABLE. Fencing errors (FENCED_STATE_EPOCH,
  FENCED_LEADER_EPOCH) are never retried: the caller must reload.
* Writes are idempotent and commutative (per-offset maximum, see
  ``coordinator/share_partition.py``), so retrying a write whose first attempt
  may have landed is safe.
* Writes to one remote coordinator node are coalesced: while one
  WriteShareGroupState RPC to a node is in flight, writes for that node queue
  and go out together in the next RPC (one RPC carries many keys).

Theory of operation
-------------------
``write`` puts (request entry, future) on the node's pending list and makes
sure a sender task runs for that node; the sender swaps the list out, sends one
RPC, and completes each future from the positionally matching result. A failed
RPC fails every future of that round with the mapped error; ``write`` then
retries (re-resolving the coordinator, which may have moved).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar

import grpc

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_state import PersistedBatch, ReadResult, ShareKey, ShareSummary
from node.grpc_errors import error_code_of
from node.interfaces import (
    SHARE_STATE_TOPIC,
    ClusterView,
    PeerClients,
    coordinator_partition,
    monotonic_ms,
    share_state_key,
)
from node.share_coordinator import ShareCoordinator, batches_from_proto, batches_to_proto
from proto import shoal_pb2

log = logging.getLogger("node.share_persister")

T = TypeVar("T")

RPC_TIMEOUT_S = 5.0
BACKOFF_INITIAL_MS = 50
BACKOFF_MAX_MS = 1000
#: Keys sent in one WriteShareGroupState RPC at most.
WRITES_PER_RPC_MAX = 500


def operating_error_from_rpc(error: grpc.RpcError, what: str) -> OperatingError:
    """A failed call to a peer → the OperatingError its trailer names (or unavailable)."""
    code = error_code_of(error)  # type: ignore[arg-type]
    details = error.details() if hasattr(error, "details") else str(error)
    if code is None:
        return OperatingError(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{what} failed: {details}")
    return OperatingError(code, f"{what}: {details}")


@dataclass
class _PendingWrite:
    entry: shoal_pb2.ShareStateWrite
    future: asyncio.Future


class SharePersister:
    """Reads and writes share state at the share coordinators. See the module docstring."""

    def __init__(
        self,
        cluster: ClusterView,
        peers: PeerClients,
        share_coordinator: ShareCoordinator,
        num_partitions: int,
    ) -> None:
        self._cluster = cluster
        self._peers = peers
        self._local = share_coordinator
        self._num_partitions = num_partitions
        self._pending: dict[int, list[_PendingWrite]] = {}
        self._senders: dict[int, asyncio.Task] = {}
        # Counters for metrics.
        self.write_rpcs_total = 0
        self.writes_total = 0
        self.write_retries_total = 0

    def coordinator_of(self, key: ShareKey) -> int:
        partition = coordinator_partition(share_state_key(key.group_id, key.topic, key.partition), self._num_partitions)
        leader = self._cluster.partition_leader(SHARE_STATE_TOPIC, partition)
        if leader.node_id < 0:
            raise OperatingError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE,
                f"{SHARE_STATE_TOPIC}-{partition} has no leader yet; retry shortly",
            )
        return leader.node_id

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]], timeout_ms: int) -> T:
        deadline_ms = monotonic_ms() + timeout_ms
        backoff_ms = BACKOFF_INITIAL_MS
        while True:
            try:
                # The deadline bounds each attempt too, not only the gaps between
                # them: a local coordinator operation has no RPC timeout of its own,
                # and an attempt that never answered used to hold the caller (a share
                # partition's only writer) forever.
                remaining_ms = max(1, deadline_ms - monotonic_ms())
                return await asyncio.wait_for(attempt(), remaining_ms / 1000)
            except asyncio.TimeoutError:
                raise OperatingError(
                    ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{what}: no answer within {timeout_ms} ms"
                ) from None
            except grpc.RpcError as error:
                failure = operating_error_from_rpc(error, what)
            except KeyError as error:  # no address known for the node yet
                failure = OperatingError(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{what}: {error}")
            except OperatingError as error:
                failure = error
            if not failure.retriable or monotonic_ms() + backoff_ms >= deadline_ms:
                raise failure
            self.write_retries_total += 1
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(BACKOFF_MAX_MS, backoff_ms * 2)

    # ------------------------------------------------------------------ read / initialize / delete

    async def read(self, key: ShareKey, leader_epoch: int, timeout_ms: int = 10_000) -> ReadResult:
        async def attempt() -> ReadResult:
            node_id = self.coordinator_of(key)
            if node_id == self._cluster.node_id:
                return await self._local.read(key, leader_epoch)
            response = await self._peers.internal(node_id).ReadShareGroupState(
                shoal_pb2.ReadShareGroupStateRequest(
                    group_id=key.group_id, topic=key.topic, partition=key.partition, leader_epoch=leader_epoch
                ),
                timeout=RPC_TIMEOUT_S,
            )
            if response.error_code:
                raise OperatingError(ErrorCode(response.error_code), response.error_message)
            return ReadResult(
                state_epoch=response.state_epoch,
                start_offset=response.start_offset,
                delivery_complete_count=response.delivery_complete_count,
                batches=tuple(batches_from_proto(response.batches)),
                leader_epoch=response.leader_epoch,
            )

        return await self._retrying(f"reading share state of {key}", attempt, timeout_ms)

    async def initialize(self, key: ShareKey, state_epoch: int, start_offset: int, timeout_ms: int = 10_000) -> None:
        async def attempt() -> None:
            node_id = self.coordinator_of(key)
            if node_id == self._cluster.node_id:
                await self._local.initialize(key, state_epoch, start_offset)
                return
            response = await self._peers.internal(node_id).InitializeShareGroupState(
                shoal_pb2.InitializeShareGroupStateRequest(
                    group_id=key.group_id, topic=key.topic, partition=key.partition,
                    state_epoch=state_epoch, start_offset=start_offset,
                ),
                timeout=RPC_TIMEOUT_S,
            )
            if response.error_code:
                raise OperatingError(ErrorCode(response.error_code), response.error_message)

        await self._retrying(f"initializing share state of {key}", attempt, timeout_ms)

    async def delete(self, key: ShareKey, timeout_ms: int = 10_000) -> None:
        async def attempt() -> None:
            node_id = self.coordinator_of(key)
            if node_id == self._cluster.node_id:
                await self._local.delete(key)
                return
            response = await self._peers.internal(node_id).DeleteShareGroupState(
                shoal_pb2.DeleteShareGroupStateRequest(group_id=key.group_id, topic=key.topic, partition=key.partition),
                timeout=RPC_TIMEOUT_S,
            )
            if response.error_code:
                raise OperatingError(ErrorCode(response.error_code), response.error_message)

        await self._retrying(f"deleting share state of {key}", attempt, timeout_ms)

    async def summary(self, key: ShareKey, timeout_ms: int = 5000) -> ShareSummary:
        async def attempt() -> ShareSummary:
            node_id = self.coordinator_of(key)
            if node_id == self._cluster.node_id:
                return self._local.summary(key)
            response = await self._peers.internal(node_id).ReadShareGroupStateSummary(
                shoal_pb2.ReadShareGroupStateSummaryRequest(
                    keys=[shoal_pb2.ShareStateSummary(group_id=key.group_id, topic=key.topic, partition=key.partition)]
                ),
                timeout=RPC_TIMEOUT_S,
            )
            entry = response.summaries[0]
            if entry.error_code:
                raise OperatingError(ErrorCode(entry.error_code), entry.error_message)
            return ShareSummary(
                start_offset=entry.start_offset,
                state_epoch=entry.state_epoch,
                leader_epoch=entry.leader_epoch,
                delivery_complete_count=entry.delivery_complete_count,
                snapshot_epoch=-1,
                snapshot_log_offset=-1,
                updates_since_snapshot=0,
                batch_count=-1,
            )

        return await self._retrying(f"reading the share state summary of {key}", attempt, timeout_ms)

    # ------------------------------------------------------------------ write (coalesced)

    async def write(
        self,
        key: ShareKey,
        state_epoch: int,
        leader_epoch: int,
        start_offset: int,
        delivery_complete_count: int,
        batches: Sequence[PersistedBatch],
        timeout_ms: int = 10_000,
    ) -> None:
        self.writes_total += 1

        async def attempt() -> None:
            node_id = self.coordinator_of(key)
            if node_id == self._cluster.node_id:
                await self._local.write(key, state_epoch, leader_epoch, start_offset, delivery_complete_count, batches)
                return
            entry = shoal_pb2.ShareStateWrite(
                group_id=key.group_id, topic=key.topic, partition=key.partition, state_epoch=state_epoch,
                leader_epoch=leader_epoch, start_offset=start_offset,
                delivery_complete_count=delivery_complete_count, batches=batches_to_proto(batches),
            )
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            self._pending.setdefault(node_id, []).append(_PendingWrite(entry, future))
            sender = self._senders.get(node_id)
            if sender is None or sender.done():
                self._senders[node_id] = asyncio.get_running_loop().create_task(self._send(node_id))
            await future

        await self._retrying(f"writing share state of {key}", attempt, timeout_ms)

    async def _send(self, node_id: int) -> None:
        while self._pending.get(node_id):
            pending = self._pending[node_id][:WRITES_PER_RPC_MAX]
            del self._pending[node_id][: len(pending)]
            self.write_rpcs_total += 1
            try:
                response = await self._peers.internal(node_id).WriteShareGroupState(
                    shoal_pb2.WriteShareGroupStateRequest(writes=[p.entry for p in pending]), timeout=RPC_TIMEOUT_S
                )
            except grpc.RpcError as error:
                failure = operating_error_from_rpc(error, f"WriteShareGroupState to node {node_id}")
                for item in pending:
                    if not item.future.done():
                        item.future.set_exception(failure)
                continue
            except KeyError as error:
                failure = OperatingError(ErrorCode.COORDINATOR_NOT_AVAILABLE, str(error))
                for item in pending:
                    if not item.future.done():
                        item.future.set_exception(failure)
                continue
            assert len(response.results) == len(pending), "one result per write, in order"
            for item, result in zip(pending, response.results):
                if item.future.done():
                    continue
                if result.error_code:
                    item.future.set_exception(OperatingError(ErrorCode(result.error_code), result.error_message))
                else:
                    item.future.set_result(None)
