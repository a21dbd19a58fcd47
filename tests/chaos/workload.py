"""The chaos workload: producers, share consumers, a classic consumer, a sampler, an observer.

Rules (reliability-plan §3.1, §6.1; the history format is in `history.py`)
-------------------------------------------------------------------------
* One harness process, one thread per client process; every client operation is
  recorded as an invoke before it starts and exactly one completion after it:
  "ok" with what the broker answered, "fail" only when the broker guarantees no
  effect, "info" otherwise (timeouts, resets, errors whose effect is unknown).
* Producers `P<n>` write unique values `"P<n>-<seq>"` with acks=all through the
  idempotent `client.Producer`; each has several process slots `P<n>.<slot>` (one
  operation at a time each, completed from the send future's callback) sharing
  its sequence counter, so that throughput does not hinge on one round trip. Every
  producer error is "info": the client retries internally, so an earlier
  attempt may have been appended even when the last one was refused.
* Share members use `client.ShareConsumer` in explicit acknowledgement mode and
  `record_limit` acquisition. A poll fans out to every leader at once; the
  history records it as one `share_fetch` per node (processes `<member>@n<node>`,
  all invoked before the poll, completed after it) so that every delivery names
  the node that served it (`ConsumerRecord.node_id`). In `record_limit` mode the
  client splits `max_poll_records` over the leaders, so a poll should return all
  it acquired; a client that held records back for a later poll (it did so
  until 2026-11-25, and `batch_optimized` still does) would make a delivery look
  acquired after that later poll's invoke. So records left in the client
  (`ShareConsumer.buffered_records()`) are recorded in the share_fetch of the
  poll that acquired them, and a delivery's window always contains its
  acquisition. Acknowledgements are sent with
  `commit_sync` right after the decision, one `ack` operation per node.
* Per record: ACCEPT 80 %, RELEASE 12 %, REJECT 3 %, ACCEPT for the rest; a
  poison value (every `poison_every`-th value of P1) is always RELEASEd, so it
  reaches the delivery-count limit and is archived. Per poll: with
  `slow_probability` the member sleeps past the lock before acknowledging (the
  acknowledgement must fail), with `crash_probability` it vanishes without
  acknowledging or leaving (`crash` event), with `leave_probability` it closes
  cleanly (`leave`); a fresh member joins (`join`) in its place.
* A classic consumer group member (`C1`) reads beside the share group (`consume`).
* The sampler asks every node, once a second, for the share-partition start
  offsets and high watermarks it answers for (`sample`, per node).
* The observer polls cluster metadata twice a second and records `leader_change`
  (a workload partition's leader epoch went up) and `coordinator_move` (the
  share coordinator of a partition's share state, or the group coordinator, moved).
* Acknowledgement outcomes per record: the partition's result in `commit_sync`.
  None is "ok"; INVALID_RECORD_STATE, the share-session errors, UNKNOWN_MEMBER_ID
  and INVALID_REQUEST are "fail:<CODE>" (the broker validates before it changes
  anything, and a refused acknowledgement leaves the state as it was); any other
  error leaves the record out of the results, which the checker reads as unknown.

Theory of operation
-------------------
`Workload.start()` creates the topic and the group configs, then starts the
threads; `stop_producers()`, `drain()` and `stop()` end the phases the runner
drives. Each thread loops until its stop event; every client call has a timeout,
so a thread notices a stop within about one request timeout. The harness never
retries an operation inside one history op (Jepsen's rule): a retry is a new op.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from client import Admin, Consumer, Producer, ShareConsumer
from client.errors import ShoalError
from client.types import AcknowledgeType, TopicPartition
from proto import shoal_pb2
from tests.chaos.history import HistoryRecorder
from tests.chaos.nemesis import Roles

# Acknowledgement errors the broker returns only for a request it did not apply.
DEFINITE_ACK_FAILURES = {
    121: "INVALID_RECORD_STATE",
    122: "SHARE_SESSION_NOT_FOUND",
    123: "INVALID_SHARE_SESSION_EPOCH",
    25: "UNKNOWN_MEMBER_ID",
    42: "INVALID_REQUEST",
}
_RPC_TIMEOUT_S = 1.0


@dataclass
class WorkloadConfig:
    topic: str = "chaos"
    partitions: int = 3
    share_group: str = "chaos-share"
    classic_group: str = "chaos-classic"
    producers: int = 2
    in_flight_per_producer: int = 24
    share_members: int = 5
    lock_duration_ms: int = 2000
    delivery_limit: int = 4
    produce_timeout_s: float = 6.0
    # Per producer: at most about 40 produces a second each.
    produce_interval_s: float = 0.025
    poll_timeout_s: float = 0.5
    max_poll_records: int = 20
    accept: float = 0.80
    release: float = 0.12
    reject: float = 0.03
    slow_probability: float = 0.05
    crash_probability: float = 0.02
    leave_probability: float = 0.01
    poison_every: int = 40
    sample_interval_s: float = 1.0
    observe_interval_s: float = 0.5
    request_timeout_ms: int = 5000


def _decode(data: bytes | None) -> Any:
    return data.decode("utf-8", "backslashreplace") if data is not None else None


@dataclass
class _Counters:
    produced_ok: int = 0
    produced_info: int = 0
    delivered: int = 0
    acks_ok: int = 0
    acks_failed: int = 0
    consumed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, where: str, error: BaseException) -> None:
        key = f"{where}:{type(error).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1


class Workload:
    def __init__(
        self,
        *,
        bootstrap: str,
        node_ids: list[int],
        broker_stub: Callable[[int], Any],
        recorder: HistoryRecorder,
        config: WorkloadConfig,
        seed: int,
    ) -> None:
        self.bootstrap = bootstrap
        self.node_ids = node_ids
        self.broker_stub = broker_stub
        self.recorder = recorder
        self.config = config
        self.rng = random.Random(seed)
        self.counters = _Counters()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop_producers = threading.Event()
        self._stop_consumers = threading.Event()
        self._stop_background = threading.Event()
        self._draining = threading.Event()
        self._member_serial = 0
        self._producer_sequences = [0] * config.producers
        self._roles = Roles()
        self._leaders: dict[int, tuple[int, int]] = {}  # partition -> (leader, epoch)
        self._coordinators: dict[str, int] = {}

    # ---- setup ---------------------------------------------------------------------------

    def _client_config(self, **extra: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "request.timeout.ms": self.config.request_timeout_ms,
            "retry.backoff.ms": 100,
            "retry.backoff.max.ms": 500,
            "metadata.max.age.ms": 2000,
            **extra,
        }

    def setup(self, timeout_s: float = 60.0) -> None:
        """Create the topic (RF 3) and make the share group read from the earliest offset."""
        deadline = time.monotonic() + timeout_s
        with Admin(self._client_config()) as admin:
            while True:
                try:
                    futures = admin.create_topics(
                        [_new_topic(self.config.topic, self.config.partitions)], timeout=10
                    )
                    for future in futures.values():
                        try:
                            future.result(timeout=15)
                        except ShoalError as error:
                            if error.code != 36:  # TOPIC_ALREADY_EXISTS
                                raise
                    # The checker needs every produced record to be deliverable:
                    # without this, records written before a member joined are skipped.
                    admin.alter_group_configs(
                        self.config.share_group, set={"share.auto.offset.reset": "earliest"}, timeout=10
                    )
                    return
                except ShoalError as error:
                    if time.monotonic() > deadline or not error.retriable:
                        raise
                    time.sleep(0.5)

    def start(self) -> None:
        self._spawn("observer", self._observe_loop)
        self._spawn("sampler", self._sample_loop)
        for producer in range(self.config.producers):
            self._spawn(f"producer-{producer + 1}", self._producer_loop, producer)
        for _ in range(self.config.share_members):
            self._spawn_member()
        self._spawn("classic", self._classic_loop)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(name, target, *args), name=f"chaos-{name}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return thread

    def _guard(self, name: str, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as error:  # noqa: BLE001 - a dead harness thread must show in the history
            self.recorder.event("harness_error", {"thread": name, "error": repr(error)[:500]}, process=name)

    # ---- observation ----------------------------------------------------------------------

    def roles(self) -> Roles:
        """The latest observed roles (for the nemesis)."""
        with self._lock:
            return self._roles

    def _freshest_cluster_view(self) -> shoal_pb2.DescribeClusterResponse | None:
        best = None
        for node_id in self.node_ids:
            try:
                response = self.broker_stub(node_id).DescribeCluster(
                    shoal_pb2.DescribeClusterRequest(), timeout=_RPC_TIMEOUT_S
                )
            except grpc.RpcError:
                continue
            if response.controller_id < 0:
                continue
            # The node that has applied the most metadata has the least stale view.
            if best is None or (response.raft_term, response.raft_commit_index) > (
                best.raft_term,
                best.raft_commit_index,
            ):
                best = response
        return best

    def _coordinator_of(self, node_id: int, key_type: int, key: str) -> int | None:
        try:
            response = self.broker_stub(node_id).FindCoordinator(
                shoal_pb2.FindCoordinatorRequest(key_type=key_type, keys=[key]), timeout=_RPC_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        for coordinator in response.coordinators:
            if coordinator.error_code == 0 and coordinator.node_id >= 0:
                return coordinator.node_id
        return None

    def _observe_once(self) -> None:
        view = self._freshest_cluster_view()
        if view is None:
            return
        leaders: dict[int, int] = {}
        for health in view.partitions:
            if health.topic != self.config.topic:
                continue
            leaders[health.partition] = health.leader
            known = self._leaders.get(health.partition)
            if known is None:
                self._leaders[health.partition] = (health.leader, health.leader_epoch)
            elif health.leader_epoch > known[1]:
                self._leaders[health.partition] = (health.leader, health.leader_epoch)
                self.recorder.event(
                    "leader_change",
                    {
                        "partition": health.partition,
                        "old": known[0],
                        "new": health.leader,
                        "old_epoch": known[1],
                        "epoch": health.leader_epoch,
                    },
                    process="observer",
                )
        coordinators: set[int] = set()
        asked = view.node_id if view.node_id > 0 else self.node_ids[0]
        keys = [(2, f"{self.config.share_group}:{self.config.topic}:{p}", p) for p in range(self.config.partitions)]
        keys.append((0, self.config.share_group, None))
        for key_type, key, partition in keys:
            node = self._coordinator_of(asked, key_type, key)
            if node is None:
                continue
            coordinators.add(node)
            old = self._coordinators.get(key)
            self._coordinators[key] = node
            if old is not None and old != node:
                # The group coordinator concerns every partition: recorded with partition null.
                self.recorder.event(
                    "coordinator_move",
                    {"partition": partition, "old": old, "new": node, "key": key},
                    process="observer",
                )
        controller = view.controller_id if view.controller_id >= 0 else None
        with self._lock:
            self._roles = Roles(partition_leaders=leaders, controller=controller, coordinators=frozenset(coordinators))

    def _observe_loop(self) -> None:
        while not self._stop_background.wait(self.config.observe_interval_s):
            self._observe_once()

    def _sample_loop(self) -> None:
        partitions = [
            shoal_pb2.TopicPartition(topic=self.config.topic, partition=p) for p in range(self.config.partitions)
        ]
        while not self._stop_background.wait(self.config.sample_interval_s):
            for node_id in self.node_ids:
                try:
                    response = self.broker_stub(node_id).DescribeSharePartitions(
                        shoal_pb2.DescribeSharePartitionsRequest(
                            group_id=self.config.share_group, partitions=partitions
                        ),
                        timeout=_RPC_TIMEOUT_S,
                    )
                except grpc.RpcError:
                    continue
                for state in response.partitions:
                    if state.error_code != 0 or state.start_offset < 0:
                        continue
                    self.recorder.event(
                        "sample",
                        {
                            "node": node_id,
                            "partition": state.partition,
                            "start_offset": state.start_offset,
                            # The start offset as of the last durable share-state write;
                            # the live one runs ahead of it while a write is in flight.
                            "durable_start_offset": state.durable_start_offset,
                            "high_watermark": state.high_watermark,
                            "leader_epoch": state.leader_epoch,
                            "state_epoch": state.state_epoch,
                        },
                        process="sampler",
                        node=node_id,
                    )

    # ---- producers -------------------------------------------------------------------------

    def _next_value(self, producer: int) -> str:
        with self._lock:
            self._producer_sequences[producer] += 1
            return f"P{producer + 1}-{self._producer_sequences[producer]}"

    def is_poison(self, value: str) -> bool:
        name, _, sequence = value.partition("-")
        return name == "P1" and sequence.isdigit() and int(sequence) % self.config.poison_every == 0

    def _producer_loop(self, producer: int) -> None:
        """One client.Producer; `in_flight_per_producer` process slots `P<n>.<slot>`, each
        running one produce at a time, so that about one round trip of acks=all
        latency does not cap the rate at one record per slot per round trip."""
        client = Producer(
            self._client_config(
                acks="all",
                **{
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    "delivery.timeout.ms": int(self.config.produce_timeout_s * 1000),
                    "max.block.ms": int(self.config.produce_timeout_s * 1000),
                    "value.serializer": lambda value: value.encode("utf-8"),
                },
            )
        )
        rng = random.Random(self.rng.random())
        free_slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.config.in_flight_per_producer):
            free_slots.put(slot)
        try:
            while not self._stop_producers.is_set():
                try:
                    slot = free_slots.get(timeout=0.2)
                except queue.Empty:
                    continue
                value = self._next_value(producer)
                partition = rng.randrange(self.config.partitions)
                handle = self.recorder.invoke(
                    f"P{producer + 1}.{slot}", "produce", {"partition": partition, "value": value}
                )
                try:
                    future = client.send(self.config.topic, value, partition=partition)
                except Exception as error:  # noqa: BLE001 - not queued, but record it honestly
                    self._produce_done(handle, value, None, error)
                    free_slots.put(slot)
                    time.sleep(0.1)
                    continue
                future.add_done_callback(
                    lambda done, handle=handle, value=value, slot=slot: (
                        self._produce_done(handle, value, done, None),
                        free_slots.put(slot),
                    )
                )
                time.sleep(self.config.produce_interval_s)
        finally:
            try:
                client.close(timeout=self.config.produce_timeout_s + 2)
            except Exception:  # noqa: BLE001 - closing against a broken cluster
                pass

    def _produce_done(self, handle: Any, value: str, future: Any, error: BaseException | None) -> None:
        if error is None:
            error = future.exception()
        if error is not None:
            # Every failure is indeterminate: the client retried, an earlier attempt may have landed.
            handle.info(f"{type(error).__name__}: {str(error)[:200]}")
            with self._lock:
                self.counters.produced_info += 1
                self.counters.error("produce", error)
            return
        metadata = future.result()
        handle.ok({"partition": metadata.partition, "offset": metadata.offset, "value": value})
        with self._lock:
            self.counters.produced_ok += 1

    # ---- share members ---------------------------------------------------------------------

    def _spawn_member(self) -> None:
        with self._lock:
            self._member_serial += 1
            serial = self._member_serial
        self._spawn(f"S{serial}", self._member_loop, serial)

    def _new_share_consumer(self) -> ShareConsumer:
        consumer = ShareConsumer(
            self._client_config(
                **{
                    "group.id": self.config.share_group,
                    "share.acknowledgement.mode": "explicit",
                    "share.acquire.mode": "record_limit",
                    "max.poll.records": self.config.max_poll_records,
                    "fetch.max.wait.ms": 300,
                    "value.deserializer": _decode,
                }
            )
        )
        consumer.subscribe([self.config.topic])
        return consumer

    def _member_loop(self, serial: int) -> None:
        name = f"S{serial}"
        rng = random.Random(self.rng.random())
        consumer = self._new_share_consumer()
        member = consumer.member_id
        # Records this member's fetches acquired that the client still buffers.
        unreturned: set[tuple[int, int, int]] = set()
        self.recorder.event("join", {"member": member, "name": name}, process=name)
        ended = "stopped"
        try:
            while not self._stop_consumers.is_set():
                draining = self._draining.is_set()
                records = self._share_fetch(consumer, name, member, unreturned)
                if records is None:
                    continue
                if not records:
                    continue
                if not draining and rng.random() < self.config.crash_probability:
                    # A member crash: no acknowledgement, no session close, no leave;
                    # the broker must notice by itself (lock expiry, session timeout).
                    consumer.abort()
                    self.recorder.event("crash", {"member": member, "name": name}, process=name)
                    ended = "crashed"
                    return
                if not draining and rng.random() < self.config.slow_probability:
                    # Past the lock: the acknowledgement below must be refused.
                    time.sleep(self.config.lock_duration_ms / 1000 * 1.5)
                decisions = [(record, self._decide(record.value, rng, draining)) for record in records]
                self._acknowledge(consumer, name, member, decisions)
                if not draining and rng.random() < self.config.leave_probability:
                    ended = "left"
                    return
        finally:
            if ended != "crashed":
                try:
                    consumer.close(timeout=5)
                except Exception as error:  # noqa: BLE001 - closing a member of a broken cluster
                    with self._lock:
                        self.counters.error("close", error)
                if ended == "left":
                    self.recorder.event("leave", {"member": member, "name": name}, process=name)
            if ended in ("crashed", "left") and not self._stop_consumers.is_set():
                self._spawn_member()

    def _decide(self, value: str, rng: random.Random, draining: bool) -> AcknowledgeType:
        if self.is_poison(value):
            return AcknowledgeType.RELEASE
        if draining:
            return AcknowledgeType.ACCEPT
        draw = rng.random()
        if draw < self.config.accept:
            return AcknowledgeType.ACCEPT
        if draw < self.config.accept + self.config.release:
            return AcknowledgeType.RELEASE
        if draw < self.config.accept + self.config.release + self.config.reject:
            return AcknowledgeType.REJECT
        return AcknowledgeType.ACCEPT

    def _share_fetch(
        self, consumer: ShareConsumer, name: str, member: str, unreturned: set[tuple[int, int, int]]
    ) -> list[Any] | None:
        """One poll, recorded as one `share_fetch` per node.

        A poll fans out to every leader and each may hand out `max_poll_records`,
        but poll returns at most that many: the client buffers the rest, and the
        next polls return it without contacting any node. A record's delivery is
        therefore recorded by the poll whose fetch acquired it, returned or
        buffered (`unreturned` remembers the buffered ones, keyed by partition,
        offset and delivery count), never by the later poll that hands it over;
        otherwise a record acquired seconds earlier would look acquired after
        that poll's invoke (false resurrections, overlaps and regressions).
        """
        handles = {
            node_id: self.recorder.invoke(f"{name}@n{node_id}", "share_fetch", {"member": member})
            for node_id in self.node_ids
        }
        error: Exception | None = None
        records: list[Any] = []
        try:
            records = consumer.poll(self.config.poll_timeout_s)
        except Exception as raised:  # noqa: BLE001 - the poll's effect on the broker is unknown
            error = raised
            with self._lock:
                self.counters.error("share_fetch", raised)
        acquired: list[Any] = []
        for record in records:
            key = (record.partition, record.offset, record.delivery_count)
            if key in unreturned:
                unreturned.discard(key)  # acquired by an earlier poll, recorded there
            else:
                acquired.append(record)
        for record in consumer.buffered_records():
            key = (record.partition, record.offset, record.delivery_count)
            if key not in unreturned:
                unreturned.add(key)
                acquired.append(record)
        by_node: dict[int, list[dict[str, Any]]] = {node_id: [] for node_id in self.node_ids}
        unattributed = []
        for record in acquired:
            entry = {
                "partition": record.partition,
                "offset": record.offset,
                "value": record.value,
                "delivery_count": record.delivery_count,
                "member": member,
                "lock_deadline_ms": None,
                "leader_epoch": record.leader_epoch,
            }
            (by_node[record.node_id] if record.node_id in by_node else unattributed).append(entry)
        lost = consumer.unknown_fetch_outcomes()
        for node_id, handle in handles.items():
            node_error = lost.get(node_id, error)
            if node_error is not None and not by_node[node_id]:
                # Nothing of this node is known to have been acquired, but a reply may
                # have been lost: the poll itself may succeed while one node's fetch
                # failed in transit after it acquired (and durably counted) records.
                handle.info(f"{type(node_error).__name__}: {str(node_error)[:200]}")
            else:
                handle.ok({"records": by_node[node_id]}, node=node_id)
        if unattributed:
            # Not expected; recorded rather than dropped so that the checker still sees them.
            extra = self.recorder.invoke(f"{name}@unknown", "share_fetch", {"member": member})
            extra.ok({"records": unattributed}, node=None)
        if error is not None:
            time.sleep(0.2)
            return None
        with self._lock:
            self.counters.delivered += len(records)
        return records

    def _acknowledge(
        self, consumer: ShareConsumer, name: str, member: str, decisions: list[tuple[Any, AcknowledgeType]]
    ) -> None:
        by_node: dict[int | None, list[tuple[Any, AcknowledgeType]]] = {}
        for record, decision in decisions:
            by_node.setdefault(record.node_id, []).append((record, decision))
            consumer.acknowledge(record, decision)
        handles = {
            node_id: self.recorder.invoke(
                f"{name}@n{node_id}" if node_id is not None else f"{name}@unknown",
                "ack",
                {
                    "member": member,
                    "acks": [[record.partition, record.offset, decision.name] for record, decision in items],
                },
            )
            for node_id, items in by_node.items()
        }
        try:
            results = consumer.commit_sync(timeout=self.config.request_timeout_ms / 1000)
        except Exception as error:  # noqa: BLE001 - unknown whether the broker applied them
            for handle in handles.values():
                handle.info(f"{type(error).__name__}: {str(error)[:200]}")
            with self._lock:
                self.counters.error("ack", error)
            return
        for node_id, items in by_node.items():
            per_record = []
            for record, _ in items:
                tp = TopicPartition(record.topic, record.partition)
                error = results.get(tp)
                if tp not in results:
                    continue  # no answer for this partition: unknown
                if error is None:
                    per_record.append([record.partition, record.offset, "ok"])
                    with self._lock:
                        self.counters.acks_ok += 1
                elif getattr(error, "code", None) in DEFINITE_ACK_FAILURES:
                    per_record.append(
                        [record.partition, record.offset, f"fail:{DEFINITE_ACK_FAILURES[error.code]}"]
                    )
                    with self._lock:
                        self.counters.acks_failed += 1
            handles[node_id].ok({"results": per_record}, node=node_id)

    # ---- classic consumer group -------------------------------------------------------------

    def _classic_loop(self) -> None:
        consumer = Consumer(
            self._client_config(
                **{
                    "group.id": self.config.classic_group,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": True,
                    "auto.commit.interval.ms": 1000,
                    "fetch.max.wait.ms": 300,
                    "value.deserializer": _decode,
                }
            )
        )
        consumer.subscribe([self.config.topic])
        try:
            while not self._stop_consumers.is_set():
                handle = self.recorder.invoke("C1", "consume", {"member": self.config.classic_group})
                try:
                    records = consumer.poll(self.config.poll_timeout_s)
                except Exception as error:  # noqa: BLE001 - a failed poll has no effect on the log
                    handle.info(f"{type(error).__name__}: {str(error)[:200]}")
                    time.sleep(0.2)
                    continue
                handle.ok(
                    {
                        "records": [
                            {"partition": r.partition, "offset": r.offset, "value": r.value} for r in records
                        ]
                    }
                )
                with self._lock:
                    self.counters.consumed += len(records)
        finally:
            try:
                consumer.close(timeout=5)
            except Exception:  # noqa: BLE001 - closing against a broken cluster
                pass

    # ---- phases ---------------------------------------------------------------------------

    def stop_producers(self) -> None:
        self._stop_producers.set()

    def share_backlog(self) -> dict[int, tuple[int, int]] | None:
        """partition -> (start offset, high watermark) from the leaders; None if any is unknown."""
        found: dict[int, tuple[int, int]] = {}
        partitions = [
            shoal_pb2.TopicPartition(topic=self.config.topic, partition=p) for p in range(self.config.partitions)
        ]
        for node_id in self.node_ids:
            try:
                response = self.broker_stub(node_id).DescribeSharePartitions(
                    shoal_pb2.DescribeSharePartitionsRequest(group_id=self.config.share_group, partitions=partitions),
                    timeout=_RPC_TIMEOUT_S * 2,
                )
            except grpc.RpcError:
                continue
            for state in response.partitions:
                if state.error_code == 0 and state.start_offset >= 0:
                    found[state.partition] = (state.start_offset, state.high_watermark)
        if len(found) < self.config.partitions:
            return None
        return found

    def drain(self, timeout_s: float) -> bool:
        """Fresh members ACCEPT everything (poison is still released) until every share
        partition's start offset reaches its high watermark, or `timeout_s` passes."""
        self._draining.set()
        # Fresh members, so that the drain does not depend on members that the
        # faults left in odd states; the old ones keep running and draining too.
        for _ in range(2):
            self._spawn_member()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            backlog = self.share_backlog()
            if backlog is not None and all(start >= high for start, high in backlog.values()):
                self.recorder.event("drained", {"backlog": {str(p): list(v) for p, v in backlog.items()}})
                return True
            time.sleep(1.0)
        self.recorder.event("drain_timeout", {"backlog": {str(p): list(v) for p, v in (self.share_backlog() or {}).items()}})
        return False

    def stop(self, timeout_s: float = 30.0) -> list[str]:
        """Stop every thread; returns the names of threads that did not stop in time."""
        self._stop_producers.set()
        self._stop_consumers.set()
        self._stop_background.set()
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                threads = list(self._threads)
            alive = [thread for thread in threads if thread.is_alive()]
            if not alive or time.monotonic() > deadline:
                return [thread.name for thread in alive]
            alive[0].join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))


def _new_topic(name: str, partitions: int) -> Any:
    from client.types import NewTopic

    return NewTopic(name=name, num_partitions=partitions, replication_factor=3)

