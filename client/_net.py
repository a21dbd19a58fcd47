"""The client's network layer: channels, cluster metadata, leaders, coordinators, backoff.

Every client (Producer, Consumer, ShareConsumer, Admin) owns one
:class:`Connections`. It keeps

* one gRPC channel per node address (channels multiplex calls, so one is
  enough; gRPC reconnects it by itself after a node restarts);
* a metadata cache: brokers and, per topic, each partition's leader, leader
  epoch, replicas and ISR, refreshed on demand (an unknown topic, a
  NOT_LEADER_OR_FOLLOWER, a FENCED_LEADER_EPOCH, an unreachable leader) and
  when older than ``metadata.max.age.ms``;
* a cache of group coordinators found with FindCoordinator.

Calls go through :meth:`Connections.call`, which turns any ``grpc.RpcError``
into the typed :mod:`client.errors` error it stands for, so that the callers
only ever reason about Kafka error codes.

The layer is synchronous (``grpc`` blocking stubs used from the clients'
threads): a single outstanding call costs the same as with ``grpc.aio``
(dependencies-notes.md §4) and a blocking API is what Kafka users expect.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from client.errors import (
    BrokerNotAvailableError,
    CoordinatorNotAvailableError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    ShoalError,
    UnknownTopicOrPartitionError,
    error_for_code,
    error_from_rpc,
)
from client.types import TopicPartition
from proto import shoal_pb2, shoal_pb2_grpc

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # A restarted node should be found again quickly, not after gRPC's
    # default reconnect backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]

# Error codes after which the cached leader of a partition is not to be trusted.
LEADER_MOVED_CODES = frozenset({3, 5, 6, 8, 74, 75})
# Error codes after which a cached coordinator is not to be trusted.
COORDINATOR_MOVED_CODES = frozenset({14, 15, 16})


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Backoff:
    """Exponential backoff with jitter, from ``retry.backoff.ms`` to ``retry.backoff.max.ms``.

    Jitter (±20 %, as Kafka's ExponentialBackoff) keeps many clients that lost
    the same leader from retrying in lock-step.
    """

    def __init__(self, initial_ms: int, max_ms: int) -> None:
        self.initial_ms = max(0, initial_ms)
        self.max_ms = max(self.initial_ms, max_ms)
        self.attempts = 0

    def next_ms(self) -> float:
        base = min(self.max_ms, self.initial_ms * (2 ** min(self.attempts, 20)))
        self.attempts += 1
        return base * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempts = 0

    def sleep(self, deadline_ms: int | None = None) -> None:
        delay = self.next_ms()
        if deadline_ms is not None:
            delay = max(0.0, min(delay, deadline_ms - now_ms()))
        time.sleep(delay / 1000.0)


@dataclass(frozen=True)
class PartitionInfo:
    topic: str
    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass
class TopicInfo:
    name: str
    topic_id: str
    partitions: dict[int, PartitionInfo]
    fetched_ms: int


class Connections:
    """Channels, metadata and coordinators for one client instance (thread-safe)."""

    def __init__(self, config: Any) -> None:
        self.bootstrap: list[str] = list(config["bootstrap.servers"])
        self.client_id: str = config["client.id"]
        self.request_timeout_ms: int = config["request.timeout.ms"]
        self.retry_backoff_ms: int = config["retry.backoff.ms"]
        self.retry_backoff_max_ms: int = config["retry.backoff.max.ms"]
        self.metadata_max_age_ms: int = config["metadata.max.age.ms"]
        self._lock = threading.RLock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, shoal_pb2_grpc.BrokerStub] = {}
        self._brokers: dict[int, str] = {}
        self._topics: dict[str, TopicInfo] = {}
        self._coordinators: dict[tuple[int, str], tuple[int, str]] = {}
        self.cluster_id = ""
        self.controller_id = -1
        self._closed = False
        self._rotation = random.randrange(len(self.bootstrap))

    # ------------------------------------------------------------ channels

    def stub(self, address: str) -> shoal_pb2_grpc.BrokerStub:
        with self._lock:
            if self._closed:
                raise BrokerNotAvailableError("the client is closed")
            stub = self._stubs.get(address)
            if stub is None:
                channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
                self._channels[address] = channel
                stub = shoal_pb2_grpc.BrokerStub(channel)
                self._stubs[address] = stub
            return stub

    def call(self, address: str, method: str, request: Any, timeout_ms: int | None = None) -> Any:
        """One RPC to ``address``; a failure becomes a typed ShoalError."""
        timeout_s = (timeout_ms if timeout_ms is not None else self.request_timeout_ms) / 1000.0
        rpc = getattr(self.stub(address), method)
        try:
            return rpc(request, timeout=max(0.001, timeout_s), metadata=(("client-id", self.client_id),))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, address) from None
        except ValueError as exc:
            # grpc raises ValueError on a closed channel (client closed concurrently).
            raise BrokerNotAvailableError(f"channel to {address} is closed: {exc}") from None

    def addresses(self) -> list[str]:
        """Known broker addresses first (fresher than bootstrap), then bootstrap, rotated."""
        with self._lock:
            known = list(self._brokers.values())
        rotated = self.bootstrap[self._rotation :] + self.bootstrap[: self._rotation]
        self._rotation = (self._rotation + 1) % len(self.bootstrap)
        seen: list[str] = []
        for address in known + rotated:
            if address not in seen:
                seen.append(address)
        return seen

    def call_any(self, method: str, request: Any, timeout_ms: int | None = None) -> Any:
        """Call the first node that answers; raise the last error if none does."""
        last: ShoalError | None = None
        deadline = now_ms() + (timeout_ms if timeout_ms is not None else self.request_timeout_ms)
        for address in self.addresses():
            remaining = deadline - now_ms()
            if remaining <= 0:
                break
            try:
                return self.call(address, method, request, remaining)
            except ShoalError as exc:
                if not exc.retriable:
                    raise
                last = exc
        raise last or KafkaTimeoutError(f"no node answered {method} in time")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        for channel in channels:
            channel.close()

    # ------------------------------------------------------------ metadata

    def _apply_metadata(self, response: shoal_pb2.MetadataResponse, requested: Iterable[str] | None) -> None:
        fetched = now_ms()
        with self._lock:
            self.cluster_id = response.cluster_id
            self.controller_id = response.controller_id
            if response.brokers:
                self._brokers = {b.node_id: f"{b.host}:{b.port}" for b in response.brokers if not b.fenced}
            for topic in response.topics:
                if topic.error_code != 0:
                    self._topics.pop(topic.name, None)
                    continue
                partitions = {
                    p.partition: PartitionInfo(
                        topic.name, p.partition, p.leader, p.leader_epoch, tuple(p.replicas), tuple(p.isr)
                    )
                    for p in topic.partitions
                }
                self._topics[topic.name] = TopicInfo(topic.name, topic.topic_id, partitions, fetched)
            if requested is None:
                # A full refresh also forgets topics that were deleted.
                present = {t.name for t in response.topics}
                for name in list(self._topics):
                    if name not in present:
                        del self._topics[name]

    def refresh_metadata(self, topics: Iterable[str] | None = None, timeout_ms: int | None = None) -> shoal_pb2.MetadataResponse:
        """Fetch metadata for ``topics`` (None: every topic) and update the cache."""
        names = sorted(set(topics)) if topics is not None else None
        response = self.call_any("Metadata", shoal_pb2.MetadataRequest(topics=names or []), timeout_ms)
        self._apply_metadata(response, names)
        return response

    def topic(self, name: str, *, refresh_if_missing: bool = True) -> TopicInfo:
        """Cached metadata for a topic; UnknownTopicOrPartitionError if it does not exist."""
        with self._lock:
            info = self._topics.get(name)
        if info is not None and now_ms() - info.fetched_ms < self.metadata_max_age_ms:
            return info
        if not refresh_if_missing and info is not None:
            return info
        response = self.refresh_metadata([name])
        for topic in response.topics:
            if topic.name == name and topic.error_code != 0:
                raise error_for_code(topic.error_code, topic.error_message or f"topic {name!r}")
        with self._lock:
            info = self._topics.get(name)
        if info is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return info

    def partition_count(self, topic: str) -> int:
        return len(self.topic(topic).partitions)

    def invalidate(self, topic: str | None = None) -> None:
        """Forget cached leaders (all, or of one topic) so the next lookup refreshes."""
        with self._lock:
            if topic is None:
                for info in self._topics.values():
                    info.fetched_ms = -(10**12)
            elif topic in self._topics:
                self._topics[topic].fetched_ms = -(10**12)

    def note_leader(self, tp: TopicPartition, leader_id: int, leader_epoch: int) -> None:
        """Apply a LeaderHint from a response (cheaper than a metadata round trip)."""
        with self._lock:
            info = self._topics.get(tp.topic)
            if info is None or leader_id < 0 or leader_id not in self._brokers:
                self.invalidate(tp.topic)
                return
            current = info.partitions.get(tp.partition)
            if current is not None and leader_epoch >= current.leader_epoch:
                info.partitions[tp.partition] = PartitionInfo(
                    tp.topic, tp.partition, leader_id, leader_epoch, current.replicas, current.isr
                )

    def leader(self, tp: TopicPartition) -> tuple[int, str, int]:
        """(leader id, address, leader epoch) of a partition; retriable errors when unknown."""
        info = self.topic(tp.topic)
        part = info.partitions.get(tp.partition)
        if part is None:
            raise UnknownTopicOrPartitionError(
                f"partition {tp.partition} of topic {tp.topic!r} does not exist "
                f"(the topic has {len(info.partitions)} partitions)"
            )
        with self._lock:
            address = self._brokers.get(part.leader)
        if part.leader < 0 or address is None:
            self.invalidate(tp.topic)
            raise LeaderNotAvailableError(f"partition {tp} has no live leader right now")
        return part.leader, address, part.leader_epoch

    def broker_address(self, node_id: int) -> str | None:
        with self._lock:
            return self._brokers.get(node_id)

    def brokers(self) -> dict[int, str]:
        """Live brokers by node id (refreshing metadata when none is known yet)."""
        with self._lock:
            known = dict(self._brokers)
        if known:
            return known
        self.refresh_metadata()
        with self._lock:
            return dict(self._brokers)

    def available_partitions(self, topic: str) -> list[int]:
        info = self.topic(topic)
        with self._lock:
            return [p.partition for p in info.partitions.values() if p.leader in self._brokers]

    # ------------------------------------------------------------ coordinators

    def coordinator(self, key_type: int, key: str, timeout_ms: int | None = None) -> tuple[int, str]:
        """(node id, address) of the coordinator for a group (key_type 0) or share key (2)."""
        with self._lock:
            cached = self._coordinators.get((key_type, key))
        if cached is not None:
            return cached
        response = self.call_any(
            "FindCoordinator", shoal_pb2.FindCoordinatorRequest(key_type=key_type, keys=[key]), timeout_ms
        )
        for found in response.coordinators:
            if found.key != key:
                continue
            if found.error_code != 0:
                raise error_for_code(found.error_code, found.error_message or f"no coordinator for {key!r}")
            result = (found.node_id, f"{found.host}:{found.port}")
            with self._lock:
                self._coordinators[(key_type, key)] = result
            return result
        raise CoordinatorNotAvailableError(f"FindCoordinator returned no coordinator for {key!r}")

    def forget_coordinator(self, key_type: int, key: str) -> None:
        with self._lock:
            self._coordinators.pop((key_type, key), None)

    def call_coordinator(
        self, group_id: str, method: str, request: Any, *, timeout_ms: int | None = None, key_type: int = 0
    ) -> Any:
        """Call the group's coordinator, following NOT_COORDINATOR and friends until the deadline.

        Request-level errors in the response body (``error_code`` field) are
        handled the same way as gRPC-level ones.
        """
        total = timeout_ms if timeout_ms is not None else self.request_timeout_ms
        deadline = now_ms() + total
        backoff = Backoff(self.retry_backoff_ms, self.retry_backoff_max_ms)
        while True:
            try:
                _, address = self.coordinator(key_type, group_id, max(1, deadline - now_ms()))
                response = self.call(address, method, request, max(1, deadline - now_ms()))
                code = getattr(response, "error_code", 0)
                if code in COORDINATOR_MOVED_CODES:
                    raise error_for_code(code, getattr(response, "error_message", ""))
                return response
            except ShoalError as exc:
                if not exc.retriable:
                    raise
                if exc.code in COORDINATOR_MOVED_CODES or isinstance(exc, BrokerNotAvailableError):
                    self.forget_coordinator(key_type, group_id)
                if now_ms() + backoff.initial_ms >= deadline:
                    raise
                backoff.sleep(deadline)


def retry_until(deadline_ms: int, backoff: Backoff, attempt: Any, on_retriable: Any = None) -> Any:
    """Run ``attempt()`` until it succeeds, a non-retriable error, or the deadline."""
    while True:
        try:
            return attempt()
        except ShoalError as exc:
            if not exc.retriable or now_ms() + backoff.initial_ms >= deadline_ms:
                raise
            if on_retriable is not None:
                on_retriable(exc)
            backoff.sleep(deadline_ms)
