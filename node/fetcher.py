"""Replica fetchers: one long-poll loop per (this follower, leader node).

Rules (Kafka's ReplicaFetcherThread, one per source broker)
* A single `LeaderFetcher` carries every partition this node follows from one
  leader node, so the number of loops is bounded by the number of nodes, not
  partitions. The replica manager hands the fetcher manager the full desired
  map after every metadata change; fetchers for leaders that lead nothing here
  any more stop.
* Each request asks for every partition from its log end offset with the
  current leader epoch and the epoch of the last batch the follower holds.
  The leader parks the request up to ``replica.fetch.wait.max.ms`` when it has
  nothing new, so an idle cluster costs a handful of wake-ups per second.
* A response applies per partition: records are appended as follower (the
  leader's offsets and epochs kept), the HW and log start offset follow the
  leader's, a ``diverging_epoch`` truncates the follower's tail first (KIP-279),
  OFFSET_OUT_OF_RANGE below the leader's log start restarts the log there.
  Epoch errors (FENCED/UNKNOWN_LEADER_EPOCH, NOT_LEADER_OR_FOLLOWER) leave the
  partition alone until the metadata moves; it is retried after a back-off.
* Transport failures back off (100 ms doubling to 1 s) and retry; a paused or
  dead leader is dropped by the metadata, not by the fetcher.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from coordinator.errors import ErrorCode, OperatingError
from node.peers import Peers
from node.replica_manager import ReplicaManager
from proto import shoal_pb2

log = logging.getLogger("node.fetcher")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 1.0
#: A partition whose leader refused it (epoch not applied yet, ...) is left
#: out of requests for this long.
PARTITION_BACKOFF_S = 0.2


class LeaderFetcher:
    def __init__(
        self,
        leader_id: int,
        node_id: int,
        broker_epoch: callable,
        replicas: ReplicaManager,
        peers: Peers,
        max_wait_ms: int,
        max_bytes: int,
    ) -> None:
        self.leader_id = leader_id
        self.node_id = node_id
        self._broker_epoch = broker_epoch
        self._replicas = replicas
        self._peers = peers
        self._max_wait_ms = max_wait_ms
        self._max_bytes = max_bytes
        #: (topic, partition) -> leader epoch we follow it at
        self.partitions: dict[tuple[str, int], int] = {}
        self._paused_until: dict[tuple[str, int], float] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._call: grpc.aio.UnaryUnaryCall | None = None
        self.fetches_total = 0

    def set_partitions(self, partitions: dict[tuple[str, int], int]) -> None:
        added = set(partitions) - set(self.partitions) or any(
            self.partitions.get(key) != epoch for key, epoch in partitions.items()
        )
        self.partitions = dict(partitions)
        for key in list(self._paused_until):
            if key not in partitions:
                del self._paused_until[key]
        if added:
            # A parked fetch does not carry the new partitions: cut it short.
            self._changed.set()
            if self._call is not None:
                self._call.cancel()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def _build_request(self) -> tuple[shoal_pb2.ReplicaFetchRequest, dict[tuple[str, int], int]]:
        loop_time = asyncio.get_running_loop().time()
        request = shoal_pb2.ReplicaFetchRequest(
            replica_id=self.node_id,
            broker_epoch=self._broker_epoch(),
            max_wait_ms=self._max_wait_ms,
            max_bytes=self._max_bytes,
        )
        sent: dict[tuple[str, int], int] = {}
        # Rotate the order each round: the leader fills max_bytes in request
        # order, so a fixed order would starve the partitions listed last.
        items = list(self.partitions.items())
        if items:
            shift = self.fetches_total % len(items)
            items = items[shift:] + items[:shift]
        for key, epoch in items:
            if self._paused_until.get(key, 0.0) > loop_time:
                continue
            state = self._replicas.follower_fetch_state(key)
            if state is None or state[1] != epoch:
                continue
            fetch_offset, leader_epoch, last_fetched_epoch, log_start = state
            request.partitions.append(
                shoal_pb2.ReplicaFetchPartition(
                    topic=key[0],
                    partition=key[1],
                    fetch_offset=fetch_offset,
                    current_leader_epoch=leader_epoch,
                    last_fetched_epoch=last_fetched_epoch,
                    log_start_offset=log_start,
                )
            )
            sent[key] = leader_epoch
        return request, sent

    async def _run(self) -> None:
        backoff_s = BACKOFF_MIN_S
        while True:
            self._changed.clear()
            request, sent = self._build_request()
            if not sent:
                # Nothing to fetch right now (all paused or not yet followers).
                try:
                    await asyncio.wait_for(self._changed.wait(), PARTITION_BACKOFF_S)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                stub = self._peers.internal(self.leader_id)
                self._call = stub.ReplicaFetch(request, timeout=(self._max_wait_ms + 5000) / 1000)
                response = await self._call
            except asyncio.CancelledError:
                if self._call is not None and self._call.cancelled() and not _current_task_cancelling():
                    continue  # our own cancel to add partitions
                raise
            except (grpc.aio.AioRpcError, KeyError) as error:
                if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.CANCELLED:
                    continue
                log.debug("replica fetch from node %d failed: %s", self.leader_id, error)
                await asyncio.sleep(backoff_s)
                backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)
                continue
            finally:
                self._call = None
            backoff_s = BACKOFF_MIN_S
            self.fetches_total += 1
            self._apply(response, sent)

    def _apply(self, response: shoal_pb2.ReplicaFetchResponse, sent: dict[tuple[str, int], int]) -> None:
        loop_time = asyncio.get_running_loop().time()
        for data in response.partitions:
            key = (data.topic, data.partition)
            epoch = sent.get(key)
            if epoch is None:
                continue
            code = data.error_code
            try:
                if code == shoal_pb2.NONE:
                    if data.HasField("diverging_epoch") and data.diverging_epoch.epoch >= 0:
                        self._replicas.truncate_follower(
                            key, epoch, data.diverging_epoch.epoch, data.diverging_epoch.end_offset
                        )
                        continue
                    self._replicas.append_as_follower(
                        key, epoch, data.records, data.high_watermark, data.log_start_offset
                    )
                elif code == shoal_pb2.OFFSET_OUT_OF_RANGE:
                    state = self._replicas.follower_fetch_state(key)
                    if state is not None and state[0] < data.log_start_offset:
                        self._replicas.reset_follower_to(key, epoch, data.log_start_offset)
                    else:
                        self._paused_until[key] = loop_time + PARTITION_BACKOFF_S
                else:
                    self._paused_until[key] = loop_time + PARTITION_BACKOFF_S
                    log.debug(
                        "leader %d refused %s-%s: %s %s",
                        self.leader_id,
                        data.topic,
                        data.partition,
                        shoal_pb2.ErrorCode.Name(code),
                        data.error_message,
                    )
            except OperatingError as error:
                # E.g. a corrupt replicated batch or a full disk: keep the log as
                # it is and retry this partition after a back-off.
                self._paused_until[key] = loop_time + PARTITION_BACKOFF_S
                log.error("replicating %s-%s from node %d failed: %s", data.topic, data.partition, self.leader_id, error)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class FetcherManager:
    """Keeps one LeaderFetcher per leader node this node follows partitions from."""

    def __init__(
        self, node_id: int, broker_epoch: callable, replicas: ReplicaManager, peers: Peers, settings
    ) -> None:
        self.node_id = node_id
        self._broker_epoch = broker_epoch
        self._replicas = replicas
        self._peers = peers
        self._settings = settings
        self.fetchers: dict[int, LeaderFetcher] = {}
        self._stopped = False

    def follow(self, desired: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Follow exactly ``desired``: {(topic, partition): (leader id, leader epoch)}."""
        if self._stopped:
            return
        by_leader: dict[int, dict[tuple[str, int], int]] = {}
        for key, (leader_id, epoch) in desired.items():
            if leader_id < 0 or leader_id == self.node_id:
                continue
            by_leader.setdefault(leader_id, {})[key] = epoch
        for leader_id in list(self.fetchers):
            if leader_id not in by_leader:
                fetcher = self.fetchers.pop(leader_id)
                asyncio.get_running_loop().create_task(fetcher.stop())
        for leader_id, partitions in by_leader.items():
            fetcher = self.fetchers.get(leader_id)
            if fetcher is None:
                fetcher = LeaderFetcher(
                    leader_id,
                    self.node_id,
                    self._broker_epoch,
                    self._replicas,
                    self._peers,
                    self._settings["replica.fetch.wait.max.ms"],
                    self._settings["replica.fetch.max.bytes"],
                )
                fetcher.set_partitions(partitions)
                self.fetchers[leader_id] = fetcher
                fetcher.start()
            else:
                fetcher.set_partitions(partitions)

    async def stop(self) -> None:
        self._stopped = True
        fetchers, self.fetchers = list(self.fetchers.values()), {}
        for fetcher in fetchers:
            await fetcher.stop()
