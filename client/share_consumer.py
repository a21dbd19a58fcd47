"""ShareConsumer: a member of a share group (KIP-932, "queues for Kafka").

Use::

    config = {"bootstrap.servers": "127.0.0.1:19092", "group.id": "workers",
              "share.acknowledgement.mode": "explicit"}
    with ShareConsumer(config) as consumer:
        consumer.subscribe(["jobs"])
        while True:
            for record in consumer.poll(1.0):
                try:
                    work(record)
                    consumer.acknowledge(record)                        # ACCEPT
                except Retryable:
                    consumer.acknowledge(record, AcknowledgeType.RELEASE)
                except Exception:
                    consumer.acknowledge(record, AcknowledgeType.REJECT)
            consumer.commit_sync()

Unlike a consumer group, several members may read the same partition: the
partition's leader hands each record to one member at a time under an
acquisition lock, and the member acknowledges it. Behaviour follows Kafka's
``KafkaShareConsumer`` (kip932-facts.md §3.3, §4, §10).

Theory of operation

* **Membership.** A background thread heartbeats the group coordinator
  (ShareGroupHeartbeat). The member id is a UUID chosen here; epoch 0 joins,
  -1 leaves; UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH rejoin with epoch 0. The
  response's assignment is the set of partitions to fetch; share groups have
  no revocation phase, so it is applied as it comes.
* **Fetching.** ``poll`` sends one ShareFetch per leader node of the assigned
  partitions, in parallel. Each node has a *share session*: epoch 0 opens it
  (no acknowledgements allowed then), every later request carries the next
  epoch, -1 closes it and releases this member's acquired records.
  SHARE_SESSION_NOT_FOUND / INVALID_SHARE_SESSION_EPOCH reopen the session.
* **Acquired ranges.** A response carries log batches and the ranges of
  offsets this member acquired. Only records inside those ranges are returned;
  an acquired offset with no record (a compaction hole, a control record) is
  acknowledged as GAP automatically. In ``batch_optimized`` mode the broker may
  hand out more than ``max.poll.records``; the rest is buffered for the next
  poll (its locks are already running).
* **Acknowledgements** live in an :class:`AcknowledgementBook`. Implicit mode:
  the next poll (or commit) ACCEPTs everything the previous poll returned.
  Explicit mode: each record must be acknowledged before the next poll
  (IllegalStateError otherwise); RENEW keeps a record acquired and poll returns
  it again (KIP-1222). Acknowledgements travel on the next ShareFetch to the
  node the records came from, or in a ShareAcknowledge on ``commit_sync`` /
  ``commit_async``. Every outcome — including NOT_LEADER_OR_FOLLOWER from a
  former leader and a lost session — reaches the commit results and the
  acknowledgement commit callback; none is dropped silently.
* **Bad records** (§10). A record failing deserialization is RELEASEd (in
  explicit mode the application may REJECT it instead with
  ``acknowledge_offset``) and poll raises RecordDeserializationError after
  returning the records before it. A batch failing its CRC has its acquired
  offsets REJECTed and poll raises CorruptRecordError.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

from client._net import COORDINATOR_MOVED_CODES, LEADER_MOVED_CODES, Backoff, Connections, now_ms
from client.config import default_deserializer, share_consumer_config
from client.consumer import decode_batches, deserialize
from client.metrics import attach_exporter
from client.errors import (
    CorruptRecordError,
    IllegalStateError,
    RecordDeserializationError,
    ShoalError,
    WakeupError,
    error_for_code,
)
from client.types import AcknowledgeType, ConsumerRecord, TopicPartition
from proto import shoal_pb2

AckCallback = Callable[[dict[TopicPartition, set[int]], Union[Exception, None]], None]

_SESSION_RESET_CODES = frozenset({122, 123})  # SHARE_SESSION_NOT_FOUND, INVALID_SHARE_SESSION_EPOCH
_REJOIN_CODES = frozenset({25, 110})  # UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH


class AcknowledgementBook:
    """Which delivered records await an acknowledgement, and which acknowledgements await sending.

    Pure bookkeeping (no I/O), so that both acknowledgement modes can be unit
    tested. Offsets are keyed by the node they were acquired from, because an
    acknowledgement is only valid on the share session that acquired the record.

    * ``delivered`` — records the last poll returned: (tp, offset) → (node, type or None).
    * ``pending`` — acknowledgements ready to send: node → tp → offset → type.
    """

    def __init__(self, explicit: bool) -> None:
        self.explicit = explicit
        self.delivered: dict[tuple[TopicPartition, int], tuple[int, AcknowledgeType | None]] = {}
        self.pending: dict[int, dict[TopicPartition, dict[int, AcknowledgeType]]] = {}

    def on_delivered(self, node_id: int, tp: TopicPartition, offset: int) -> None:
        self.delivered[(tp, offset)] = (node_id, None)

    def on_failed_record(self, node_id: int, tp: TopicPartition, offset: int) -> None:
        """A record poll could not hand out (deserialization): RELEASE unless the app says otherwise."""
        self.delivered[(tp, offset)] = (node_id, AcknowledgeType.RELEASE)

    def add_automatic(self, node_id: int, tp: TopicPartition, offset: int, ack_type: AcknowledgeType) -> None:
        """An acknowledgement the client decides by itself (GAP, REJECT of a corrupt batch)."""
        self.pending.setdefault(node_id, {}).setdefault(tp, {})[offset] = ack_type

    def acknowledge(self, tp: TopicPartition | tuple[str, int], offset: int, ack_type: AcknowledgeType) -> None:
        """Record the application's decision for a delivered record.

        ``tp`` may be a plain ``(topic, partition)`` tuple: a NamedTuple equals
        and hashes like the plain tuple, so it finds the key stored by
        ``on_delivered`` (which stays a TopicPartition), and the per-record
        ``acknowledge()`` need not build a TopicPartition.
        """
        if not self.explicit:
            raise IllegalStateError(
                "acknowledge() needs share.acknowledgement.mode=explicit; in implicit mode the next poll or "
                "commit accepts every record of the previous poll"
            )
        if ack_type is AcknowledgeType.GAP or not isinstance(ack_type, AcknowledgeType):
            raise ValueError("the acknowledge type must be ACCEPT, RELEASE, REJECT or RENEW")
        key = (tp, offset)
        entry = self.delivered.get(key)
        if entry is None:
            raise IllegalStateError(
                f"the record at offset {offset} of {TopicPartition(*tp)} is not awaiting acknowledgement"
            )
        self.delivered[key] = (entry[0], ack_type)

    def unacknowledged(self) -> list[tuple[TopicPartition, int]]:
        return sorted(key for key, (_, ack) in self.delivered.items() if ack is None)

    def check_can_poll(self) -> None:
        if self.explicit:
            missing = self.unacknowledged()
            if missing:
                tp, offset = missing[0]
                raise IllegalStateError(
                    f"{len(missing)} record(s) from the previous poll are not acknowledged (first: offset {offset} "
                    f"of {tp}); in explicit mode acknowledge every record before polling again"
                )

    def finalize(self) -> list[tuple[int, TopicPartition, int]]:
        """Turn the previous poll's records into pending acknowledgements.

        Implicit mode accepts them all. Explicit mode moves those acknowledged
        so far (unacknowledged ones stay delivered). Returns the RENEWed
        records (node, tp, offset), which poll must return again.
        """
        renewed: list[tuple[int, TopicPartition, int]] = []
        kept: dict[tuple[TopicPartition, int], tuple[int, AcknowledgeType | None]] = {}
        # Records of one partition and node come in runs: look their pending
        # map up once per run, not once per record.
        run_node: int | None = None
        run_tp: TopicPartition | None = None
        run_acks: dict[int, AcknowledgeType] = {}
        for key, (node_id, ack) in self.delivered.items():
            if ack is None:
                if self.explicit:
                    kept[key] = (node_id, None)
                    continue
                ack = AcknowledgeType.ACCEPT
            tp, offset = key
            if node_id != run_node or tp != run_tp:
                run_node, run_tp = node_id, tp
                run_acks = self.pending.setdefault(node_id, {}).setdefault(tp, {})
            run_acks[offset] = ack
            if ack is AcknowledgeType.RENEW:
                renewed.append((node_id, tp, offset))
        self.delivered = kept
        return renewed

    def drop_unacknowledged(self) -> list[tuple[TopicPartition, int]]:
        """Forget delivered-but-unacknowledged records (close releases them through the session)."""
        dropped = self.unacknowledged()
        for key in dropped:
            del self.delivered[key]
        return dropped

    def take_pending(self, node_id: int | None = None) -> dict[int, dict[TopicPartition, dict[int, AcknowledgeType]]]:
        if node_id is None:
            taken, self.pending = self.pending, {}
            return taken
        return {node_id: self.pending.pop(node_id)} if node_id in self.pending else {}

    def has_pending(self) -> bool:
        return any(self.pending.values())

    @staticmethod
    def to_batches(acks: Mapping[int, AcknowledgeType]) -> list[tuple[int, int, list[int]]]:
        """Runs of consecutive offsets with one type: (first, last, [type])."""
        out: list[tuple[int, int, list[int]]] = []
        for offset in sorted(acks):
            ack = int(acks[offset])
            if out and out[-1][1] == offset - 1 and out[-1][2][0] == ack:
                out[-1] = (out[-1][0], offset, out[-1][2])
            else:
                out.append((offset, offset, [ack]))
        return out


class _Session:
    """The share session with one node."""

    def __init__(self) -> None:
        self.epoch = 0  # 0: not open; the next ShareFetch opens it
        self.partitions: set[TopicPartition] = set()

    def advance(self) -> None:
        # Epochs wrap like Kafka's nextEpoch: after Int32.MAX comes 1, never 0 or -1.
        self.epoch = 1 if self.epoch >= 2**31 - 1 else self.epoch + 1

    def reset(self) -> None:
        self.epoch = 0
        self.partitions = set()


class _RateWindow:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.events: deque[tuple[float, float]] = deque()

    def add(self, amount: float = 1.0) -> None:
        now = time.monotonic()
        self.events.append((now, amount))
        self._trim(now)

    def rate(self) -> float:
        now = time.monotonic()
        self._trim(now)
        return sum(a for _, a in self.events) / self.window_s

    def _trim(self, now: float) -> None:
        while self.events and self.events[0][0] < now - self.window_s:
            self.events.popleft()


_BufferItem = Union[tuple[int, ConsumerRecord], ShoalError]


class ShareConsumer:
    """A share-group member. Not thread-safe, except ``wakeup()``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._cfg = share_consumer_config(config)
        cfg = self._cfg
        self._conn = Connections(cfg)
        self._group_id: str = cfg["group.id"]
        self._explicit = cfg["share.acknowledgement.mode"] == "explicit"
        self._acquire_mode = 1 if cfg["share.acquire.mode"] == "record_limit" else 0
        self._key_deserializer = cfg["key.deserializer"] or default_deserializer
        self._value_deserializer = cfg["value.deserializer"] or default_deserializer
        #: Port for the client's Prometheus exporter, when one is attached (None: no exporter).
        self.metrics_port: int | None = cfg["metrics.port"]
        self._book = AcknowledgementBook(self._explicit)
        self._buffer: deque[_BufferItem] = deque()
        # The records of the last poll, so that RENEWed ones can be returned again.
        self._renewable: dict[tuple[TopicPartition, int], ConsumerRecord] = {}
        self._sessions: dict[int, _Session] = {}
        self._budget_rotation = 0  # which node gets the remainder of a record_limit budget
        self._unknown_fetch_outcomes: dict[int, Exception] = {}  # since the start of the last poll
        self._io_lock = threading.RLock()  # sessions and the book: poll vs commit_async
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shoal-share-fetch")
        self._async_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-share-commit")
        self._background: list = []  # futures of acknowledgements sent in the background
        self._ack_callback: AckCallback | None = None
        self._lock_timeout_ms: int | None = None
        self._subscription: list[str] = []
        self._woken = threading.Event()
        self._closed = False
        self._fatal: ShoalError | None = None
        # Membership, shared with the heartbeat thread under _group_lock.
        self._group_lock = threading.Lock()
        self._member_id = str(uuid.uuid4())
        self._member_epoch = 0
        self._assignment: set[TopicPartition] = set()
        self._assignment_changed = threading.Event()
        self._heartbeat_interval_ms = 5000
        self._heartbeat_wake = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        # Metrics (real counters only).
        self._m_lock = threading.Lock()
        self._heartbeats = 0
        self._heartbeat_rate = _RateWindow()
        self._heartbeat_time_total_ms = 0.0
        self._heartbeat_time_max_ms = 0.0
        self._last_poll: float | None = None
        self._records_fetched = 0
        self._records_rate = _RateWindow()
        self._fetches = 0
        self._fetch_bytes_total = 0
        self._fetch_bytes_max = 0
        self._fetch_latency_total_ms = 0.0
        self._fetch_latency_max_ms = 0.0
        self._acks_sent = 0
        self._acks_failed = 0
        # Last, so that a scrape never sees a half-built consumer.
        self._exporter = attach_exporter(self, "share_consumer", self.metrics_port)

    # ------------------------------------------------------------ subscription

    def subscribe(self, topics: Iterable[str]) -> None:
        """Join the share group for ``topics`` (replaces the subscription; empty = unsubscribe)."""
        self._check_open()
        topics = sorted(set(topics))
        if not topics:
            self.unsubscribe()
            return
        for topic in topics:
            if not isinstance(topic, str) or not topic:
                raise ValueError("topic names must be non-empty strings")
        self._subscription = topics
        if self._heartbeat_thread is None:
            self._heartbeat_stop.clear()
            self._heartbeat_thread = threading.Thread(target=self._run_heartbeat, name="shoal-share-heartbeat", daemon=True)
            self._heartbeat_thread.start()
        self._heartbeat_wake.set()

    def subscription(self) -> list[str]:
        return list(self._subscription)

    def unsubscribe(self) -> None:
        """Leave the group; acquired records not acknowledged are released."""
        if not self._subscription:
            return
        self._close_sessions(commit=self._explicit)
        self._leave_group()

    def assignment(self) -> list[TopicPartition]:
        """The partitions the coordinator currently assigns to this member."""
        with self._group_lock:
            return sorted(self._assignment)

    @property
    def member_id(self) -> str:
        return self._member_id

    # ------------------------------------------------------------ polling

    def poll(self, timeout: float = 1.0) -> list[ConsumerRecord]:
        """Acquire and return records, waiting up to ``timeout`` seconds for some."""
        self._check_open()
        if not self._subscription:
            raise IllegalStateError("poll() needs subscribe() first")
        with self._io_lock:
            self._book.check_can_poll()
            self._last_poll = time.monotonic()
            self._unknown_fetch_outcomes = {}
            self._prepare_acknowledgements()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self._woken.is_set():
                self._woken.clear()
                raise WakeupError("poll() was interrupted by wakeup()")
            if self._fatal is not None:
                error, self._fatal = self._fatal, None
                raise error
            with self._io_lock:
                if self._buffer:
                    # The previous poll's acknowledgements stay pending: the next
                    # ShareFetch (when the buffer is drained) carries them, so this
                    # poll waits for no durable write. They cannot miss their locks
                    # by waiting: the buffered records came in the same fetch, with
                    # the same lock deadline, and are processed first. Sending them
                    # from another thread instead queued them behind a long-poll
                    # fetch and starved competing members (docs/benchmarks.md).
                    return self._drain_buffer()
                remaining = deadline - time.monotonic()
                assigned = self.assignment()
                if assigned:
                    self._fetch_round(assigned, max_wait_ms=int(max(0.0, min(remaining, self._cfg["fetch.max.wait.ms"] / 1000.0)) * 1000))
                    if self._buffer:
                        return self._drain_buffer()
                elif self._book.has_pending():
                    self._send_acknowledgements(self._book.take_pending(), final=False)
            if time.monotonic() >= deadline:
                return []
            if not assigned:
                # Not assigned yet: wait for the heartbeat thread to bring an assignment.
                self._assignment_changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                self._assignment_changed.clear()

    def acknowledge(self, record: ConsumerRecord, ack_type: AcknowledgeType = AcknowledgeType.ACCEPT) -> None:
        """Acknowledge a record returned by the last poll (explicit mode only)."""
        if type(ack_type) is not AcknowledgeType:
            ack_type = AcknowledgeType(ack_type)  # an int: ValueError unless it is a wire value
        with self._io_lock:
            self._book.acknowledge((record.topic, record.partition), record.offset, ack_type)

    def acknowledge_offset(self, topic: str, partition: int, offset: int, ack_type: AcknowledgeType) -> None:
        """Acknowledge by coordinates, e.g. a record that failed deserialization (explicit mode only)."""
        with self._io_lock:
            self._book.acknowledge(TopicPartition(topic, partition), offset, AcknowledgeType(ack_type))

    def commit_sync(self, timeout: float | None = None) -> dict[TopicPartition, Exception | None]:
        """Send the acknowledgements made so far and wait; the outcome per partition.

        Implicit mode first accepts every record of the last poll.
        """
        self._check_open()
        timeout_ms = int(timeout * 1000) if timeout is not None else self._cfg["request.timeout.ms"]
        # Acknowledgements a poll sent in the background count as "made so far".
        results = self._wait_for_background(timeout_ms / 1000.0)
        with self._io_lock:
            self._prepare_acknowledgements()
            results.update(self._send_acknowledgements(self._book.take_pending(), final=False, timeout_ms=timeout_ms))
        return results

    def commit_async(self, callback: Callable[[dict[TopicPartition, Exception | None]], None] | None = None) -> None:
        """Send the acknowledgements made so far in the background.

        Results reach ``callback`` (if given) and the acknowledgement commit callback.
        """
        self._check_open()
        with self._io_lock:
            self._prepare_acknowledgements()
            pending = self._book.take_pending()
        self._send_in_background(pending, callback)

    def _send_in_background(
        self,
        pending: dict[int, dict[TopicPartition, dict[int, AcknowledgeType]]],
        callback: Callable[[dict[TopicPartition, Exception | None]], None] | None = None,
    ) -> None:
        """Send acknowledgements from the background pool; outcomes reach the callbacks.

        The send takes the I/O lock, so it is ordered with fetches and never
        races a share session's epoch.
        """

        def run() -> dict[TopicPartition, Exception | None]:
            with self._io_lock:
                results = self._send_acknowledgements(pending, final=False)
            if callback is not None:
                callback(results)
            return results

        future = self._async_pool.submit(run)
        self._background = [f for f in self._background if not f.done()] + [future]

    def _wait_for_background(self, timeout: float | None) -> dict[TopicPartition, Exception | None]:
        """Wait for acknowledgements sent in the background; their outcomes."""
        results: dict[TopicPartition, Exception | None] = {}
        for future in self._background:
            results.update(future.result(timeout))
        self._background = []
        return results

    def set_acknowledgement_commit_callback(self, callback: AckCallback | None) -> None:
        """``callback(offsets, exception)`` runs once per partition when its acknowledgements complete."""
        self._ack_callback = callback

    def unknown_fetch_outcomes(self) -> dict[int, Exception]:
        """Nodes whose ShareFetch failed in transit during the last ``poll``, with the error.

        Such a node may have acquired records for this member (counting a delivery
        attempt) before its reply was lost; they come back after their locks
        expire. A harness that records what was delivered (the chaos workload)
        marks those fetches as of unknown outcome; applications need not.
        """
        return dict(self._unknown_fetch_outcomes)

    def buffered_records(self) -> list[ConsumerRecord]:
        """Records already acquired by a fetch but not returned by ``poll`` yet.

        A poll fetches from every leader at once. In ``batch_optimized`` mode each
        may hand out up to ``max.poll.records`` (and whole batches), but poll
        returns at most ``max.poll.records``: the rest waits in the client for
        the next polls, its acquisition locks already running. ``record_limit``
        splits the limit over the leaders, so only RENEWed records wait there.
        A test harness that records when each record was acquired (the chaos
        workload) reads them here; applications need not.
        """
        with self._io_lock:
            return [item[1] for item in self._buffer if not isinstance(item, ShoalError)]

    @property
    def acquisition_lock_timeout_ms(self) -> int | None:
        """The acquisition lock timeout the broker reported with the last fetch (None before one)."""
        return self._lock_timeout_ms

    def wakeup(self) -> None:
        """Make a blocking poll() raise WakeupError (safe from any thread)."""
        self._woken.set()
        self._assignment_changed.set()

    def close(self, timeout: float | None = 30.0) -> None:
        """Leave the group.

        Explicit mode commits the acknowledgements made and releases the rest;
        implicit mode releases the records of the last poll. Closing a share
        session (epoch -1) is what releases them on the broker.
        """
        if self._closed:
            return
        try:
            self._async_pool.shutdown(wait=True)
            if self._subscription:
                self._close_sessions(commit=self._explicit, timeout_ms=int((timeout or 30.0) * 1000))
                self._leave_group()
        finally:
            self._closed = True
            self._heartbeat_stop.set()
            self._heartbeat_wake.set()
            if self._heartbeat_thread is not None:
                self._heartbeat_thread.join(timeout=5)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._conn.close()
            if self._exporter is not None:
                self._exporter.close()

    def abort(self) -> None:
        """Crash without leaving: a testing and chaos aid, not for applications.

        Stops the heartbeat and drops every connection at once, without sending
        acknowledgements, closing the share sessions or leaving the group, as if
        the process had died. The broker has to find out by itself: the records
        this member holds stay acquired until their acquisition locks expire, and
        the group coordinator removes the member after share.session.timeout.ms.
        Acknowledgements not yet sent are dropped. Afterwards the consumer is
        closed; ``close()`` does nothing more.
        """
        if self._closed:
            return
        self._closed = True
        self._heartbeat_stop.set()
        self._heartbeat_wake.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
            self._heartbeat_thread = None
        # No waiting for queued work: a pending commit_async must not reach the broker.
        self._async_pool.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._conn.close()
        if self._exporter is not None:
            self._exporter.close()

    def __enter__(self) -> ShareConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def metrics(self) -> dict[str, float | None]:
        """Client metrics (KIP-932 §9.4 names, snake_case)."""
        with self._m_lock:
            fetches = self._fetches
            return {
                "heartbeat_total": self._heartbeats,
                "heartbeat_rate": self._heartbeat_rate.rate(),
                "heartbeat_response_time_avg_ms": self._heartbeat_time_total_ms / self._heartbeats if self._heartbeats else 0.0,
                "heartbeat_response_time_max_ms": self._heartbeat_time_max_ms,
                "last_poll_seconds_ago": (time.monotonic() - self._last_poll) if self._last_poll is not None else None,
                "records_fetched_total": self._records_fetched,
                "records_fetched_rate": self._records_rate.rate(),
                "fetch_total": fetches,
                "fetch_size_avg": self._fetch_bytes_total / fetches if fetches else 0.0,
                "fetch_size_max": self._fetch_bytes_max,
                "fetch_latency_avg_ms": self._fetch_latency_total_ms / fetches if fetches else 0.0,
                "fetch_latency_max_ms": self._fetch_latency_max_ms,
                "acknowledgements_send_total": self._acks_sent,
                "acknowledgements_error_total": self._acks_failed,
            }

    # ------------------------------------------------------------ internals: acknowledgements

    def _check_open(self) -> None:
        if self._closed:
            raise IllegalStateError("the share consumer is closed")

    def _prepare_acknowledgements(self) -> None:
        """Finalize the previous poll's records; RENEWed ones go back to the buffer front."""
        renewed = self._book.finalize()
        returned = []
        for node_id, tp, offset in renewed:
            record = self._renewable.pop((tp, offset), None)
            if record is not None:
                returned.append((node_id, record))
        for item in reversed(returned):
            self._buffer.appendleft(item)

    def _drain_buffer(self) -> list[ConsumerRecord]:
        limit = self._cfg["max.poll.records"]
        out: list[ConsumerRecord] = []
        buffer, book, renewable = self._buffer, self._book, self._renewable
        renewable.clear()
        tp: TopicPartition | None = None
        while buffer and len(out) < limit:
            item = buffer[0]
            if isinstance(item, ShoalError):
                if out:
                    break  # records before the failure first; the error on the next poll
                buffer.popleft()
                raise item
            buffer.popleft()
            node_id, record = item
            out.append(record)
            # Records of one partition come in runs: one TopicPartition per run.
            if tp is None or record.partition != tp.partition or record.topic != tp.topic:
                tp = TopicPartition(record.topic, record.partition)
            key = (tp, record.offset)
            book.on_delivered(node_id, tp, record.offset)
            renewable[key] = record
        return out

    def _report(self, tp: TopicPartition, offsets: set[int], error: Exception | None, results: dict[TopicPartition, Exception | None]) -> None:
        with self._m_lock:
            if error is None:
                self._acks_sent += len(offsets)
            else:
                self._acks_failed += len(offsets)
        if error is not None or tp not in results:
            results[tp] = error
        if self._ack_callback is not None and offsets:
            self._ack_callback({tp: set(offsets)}, error)

    def _send_acknowledgements(
        self,
        pending: dict[int, dict[TopicPartition, dict[int, AcknowledgeType]]],
        *,
        final: bool,
        timeout_ms: int | None = None,
    ) -> dict[TopicPartition, Exception | None]:
        """ShareAcknowledge to each node; every partition's outcome is reported."""
        results: dict[TopicPartition, Exception | None] = {}
        futures = []
        for node_id, by_tp in pending.items():
            if by_tp:
                futures.append((node_id, by_tp, self._pool.submit(self._acknowledge_node, node_id, by_tp, final, timeout_ms)))
        for node_id, by_tp, future in futures:
            try:
                outcome = future.result()
            except ShoalError as exc:
                outcome = {tp: exc for tp in by_tp}
            for tp, error in outcome.items():
                self._report(tp, set(by_tp.get(tp, {})), error, results)
        return results

    def _acknowledge_node(
        self, node_id: int, by_tp: dict[TopicPartition, dict[int, AcknowledgeType]], final: bool, timeout_ms: int | None
    ) -> dict[TopicPartition, Exception | None]:
        session = self._sessions.setdefault(node_id, _Session())
        if session.epoch == 0 and not final:
            error = error_for_code(
                122, f"no open share session with node {node_id}: the acknowledgements cannot be delivered "
                "(the records will be delivered again)"
            )
            return {tp: error for tp in by_tp}
        address = self._conn.broker_address(node_id)
        if address is None:
            self._conn.invalidate()
            error = error_for_code(8, f"node {node_id} is not in the cluster metadata any more")
            return {tp: error for tp in by_tp}
        request = shoal_pb2.ShareAcknowledgeRequest(
            group_id=self._group_id,
            member_id=self._member_id,
            share_session_epoch=-1 if final else session.epoch,
            partitions=[self._ack_partition(tp, acks) for tp, acks in by_tp.items()],
        )
        try:
            response = self._conn.call(address, "ShareAcknowledge", request, timeout_ms)
        except ShoalError as exc:
            session.reset()
            self._conn.invalidate()
            return {tp: exc for tp in by_tp}
        if final:
            session.reset()
        if response.error_code:
            if response.error_code in _SESSION_RESET_CODES:
                session.reset()
            error = error_for_code(response.error_code, response.error_message)
            return {tp: error for tp in by_tp}
        if not final:
            session.advance()
        if response.acquisition_lock_timeout_ms > 0:
            self._lock_timeout_ms = response.acquisition_lock_timeout_ms
        outcome: dict[TopicPartition, Exception | None] = {tp: None for tp in by_tp}
        for result in response.partitions:
            tp = TopicPartition(result.topic, result.partition)
            if result.error_code:
                outcome[tp] = error_for_code(result.error_code, result.error_message or f"acknowledgement for {tp} failed")
                if result.error_code in LEADER_MOVED_CODES:
                    self._conn.invalidate(tp.topic)
        return outcome

    @staticmethod
    def _ack_partition(tp: TopicPartition, acks: Mapping[int, AcknowledgeType]) -> shoal_pb2.ShareFetchPartition:
        return shoal_pb2.ShareFetchPartition(
            topic=tp.topic,
            partition=tp.partition,
            acknowledgement_batches=[
                shoal_pb2.AcknowledgementBatch(first_offset=first, last_offset=last, acknowledge_types=types)
                for first, last, types in AcknowledgementBook.to_batches(acks)
            ],
        )

    # ------------------------------------------------------------ internals: fetching

    def _fetch_round(self, assigned: list[TopicPartition], max_wait_ms: int) -> None:
        by_node: dict[int, tuple[str, list[TopicPartition]]] = {}
        for tp in assigned:
            try:
                node_id, address, _ = self._conn.leader(tp)
            except ShoalError as exc:
                if not exc.retriable:
                    raise
                continue
            by_node.setdefault(node_id, (address, []))[1].append(tp)
        budgets = self._record_budgets(sorted(by_node))
        by_node = {node: entry for node, entry in by_node.items() if budgets[node] > 0}
        # Acknowledgements for nodes we are not fetching from go in a ShareAcknowledge.
        pending = self._book.take_pending()
        others = {node: acks for node, acks in pending.items() if node not in by_node}
        if others:
            self._send_acknowledgements(others, final=False)
        if not by_node:
            time.sleep(self._cfg["retry.backoff.ms"] / 1000.0)
            return
        futures = [
            self._pool.submit(
                self._fetch_node, node_id, address, tps, pending.get(node_id, {}), max_wait_ms, budgets[node_id]
            )
            for node_id, (address, tps) in by_node.items()
        ]
        results: dict[TopicPartition, Exception | None] = {}
        for future in futures:
            items, ack_outcome, sent = future.result()
            for tp, error in ack_outcome.items():
                self._report(tp, set(sent.get(tp, {})), error, results)
            # Errors travel in the buffer, in order, so that records before
            # them are returned first.
            self._buffer.extend(items)

    def _record_budgets(self, nodes: list[int]) -> dict[int, int]:
        """How many records each node may acquire for this poll.

        batch_optimized: ``max.poll.records`` each (a soft limit, as in Kafka).
        record_limit (KIP-1206): the limit is strict for the poll as a whole, so
        it is split over the nodes fetched in parallel, the remainder going to a
        node that rotates from poll to poll; a node whose share is 0 is skipped
        this round. Acquiring more and releasing the surplus would spend a
        delivery attempt of every surplus record.
        """
        limit = self._cfg["max.poll.records"]
        if self._acquire_mode == 0 or not nodes:
            return {node: limit for node in nodes}
        self._budget_rotation = (self._budget_rotation + 1) % len(nodes)
        ordered = nodes[self._budget_rotation:] + nodes[: self._budget_rotation]
        base, remainder = divmod(limit, len(ordered))
        return {node: base + (1 if index < remainder else 0) for index, node in enumerate(ordered)}

    def _fetch_node(
        self,
        node_id: int,
        address: str,
        tps: list[TopicPartition],
        acks: dict[TopicPartition, dict[int, AcknowledgeType]],
        max_wait_ms: int,
        max_records: int,
    ) -> tuple[list[_BufferItem], dict[TopicPartition, Exception | None], dict[TopicPartition, dict[int, AcknowledgeType]]]:
        """One ShareFetch to one node: (buffer items, ack outcome per partition, acks sent)."""
        session = self._sessions.setdefault(node_id, _Session())
        ack_outcome: dict[TopicPartition, Exception | None] = {}
        if session.epoch == 0 and acks:
            # A new session cannot carry acknowledgements (KIP-932): the old
            # session is gone, and with it the records these acks were for.
            error = error_for_code(122, f"the share session with node {node_id} was lost; the records will be redelivered")
            ack_outcome = {tp: error for tp in acks}
            sent, acks = acks, {}
        else:
            sent = acks
        partitions = []
        for tp in tps:
            partitions.append(self._ack_partition(tp, acks.get(tp, {})))
        for tp, tp_acks in acks.items():
            if tp not in tps:
                partitions.append(self._ack_partition(tp, tp_acks))
        forgotten = [
            shoal_pb2.TopicPartition(topic=tp.topic, partition=tp.partition)
            for tp in sorted(session.partitions - set(tps))
        ] if session.epoch != 0 else []
        request = shoal_pb2.ShareFetchRequest(
            group_id=self._group_id,
            member_id=self._member_id,
            share_session_epoch=session.epoch,
            max_wait_ms=max_wait_ms,
            min_bytes=self._cfg["fetch.min.bytes"],
            max_bytes=self._cfg["fetch.max.bytes"],
            max_records=max_records,
            batch_size=max_records,
            acquire_mode=self._acquire_mode,
            partitions=partitions,
            forgotten=forgotten,
        )
        started = time.monotonic()
        try:
            response = self._conn.call(address, "ShareFetch", request, self._cfg["request.timeout.ms"] + max_wait_ms)
        except ShoalError as exc:
            # The node may have restarted: its session (and our locks) are gone.
            # Whether it acquired records for us before the reply was lost is
            # unknown; a test harness reads that through unknown_fetch_outcomes().
            self._unknown_fetch_outcomes[node_id] = exc
            session.reset()
            self._conn.invalidate()
            for tp in acks:
                ack_outcome[tp] = exc
            if not exc.retriable:
                return [exc], ack_outcome, sent
            return [], ack_outcome, sent
        latency_ms = (time.monotonic() - started) * 1000.0
        if response.error_code:
            error = error_for_code(response.error_code, response.error_message)
            for tp in acks:
                ack_outcome[tp] = error
            if response.error_code in _SESSION_RESET_CODES:
                session.reset()
                return [], ack_outcome, sent
            session.reset()
            if response.error_code in _REJOIN_CODES:
                with self._group_lock:
                    self._member_epoch = 0
                self._heartbeat_wake.set()
                return [], ack_outcome, sent
            if error.retriable:
                self._conn.invalidate()
                return [], ack_outcome, sent
            return [error], ack_outcome, sent
        session.advance()
        session.partitions = set(tps)
        if response.acquisition_lock_timeout_ms > 0:
            self._lock_timeout_ms = response.acquisition_lock_timeout_ms
        items: list[_BufferItem] = []
        fetched_bytes = 0
        fetched_records = 0
        for data in response.partitions:
            tp = TopicPartition(data.topic, data.partition)
            if tp in acks and tp not in ack_outcome:
                ack_outcome[tp] = (
                    error_for_code(data.acknowledge_error_code, data.acknowledge_error_message or f"acknowledgement for {tp} failed")
                    if data.acknowledge_error_code
                    else None
                )
            if data.error_code:
                if data.error_code in LEADER_MOVED_CODES:
                    if data.HasField("current_leader") and data.current_leader.leader_id >= 0:
                        self._conn.note_leader(tp, data.current_leader.leader_id, data.current_leader.leader_epoch)
                    else:
                        self._conn.invalidate(tp.topic)
                    continue
                error = error_for_code(data.error_code, data.error_message or f"share fetch from {tp} failed")
                if not error.retriable:
                    items.append(error)
                continue
            fetched_bytes += len(data.records)
            new_items = self._acquired_records(node_id, tp, data)
            fetched_records += sum(1 for item in new_items if not isinstance(item, ShoalError))
            items.extend(new_items)
        for tp in acks:
            ack_outcome.setdefault(tp, None)
        with self._m_lock:
            self._fetches += 1
            self._fetch_bytes_total += fetched_bytes
            self._fetch_bytes_max = max(self._fetch_bytes_max, fetched_bytes)
            self._fetch_latency_total_ms += latency_ms
            self._fetch_latency_max_ms = max(self._fetch_latency_max_ms, latency_ms)
            self._records_fetched += fetched_records
            self._records_rate.add(fetched_records)
        return items, ack_outcome, sent

    def _acquired_records(self, node_id: int, tp: TopicPartition, data: shoal_pb2.ShareFetchPartitionData) -> list[_BufferItem]:
        """Records inside the acquired ranges; GAP for acquired offsets without a record."""
        ranges = sorted((r.first_offset, r.last_offset, r.delivery_count) for r in data.acquired_records)
        if not ranges:
            return []
        # Acquired offsets not handled yet → their delivery count. Each offset
        # is popped when a record (or a REJECT/RELEASE) accounts for it; what
        # is left at the end holds no record and becomes a GAP.
        unhandled: dict[int, int] = {}
        for first, last, count in ranges:
            unhandled.update(dict.fromkeys(range(first, last + 1), count))
        book = self._book
        items: list[_BufferItem] = []
        try:
            batches = decode_batches(data.records, check_crcs=self._cfg["check.crcs"])
        except CorruptRecordError as exc:
            # The bytes cannot even be split into batches: reject every
            # acquired offset, since none of them can ever be read.
            for offset in unhandled:
                book.add_automatic(node_id, tp, offset, AcknowledgeType.REJECT)
            return [CorruptRecordError(f"{exc.message} (share fetch from {tp}; acquired records rejected)")]
        # The default deserializers return the bytes as they are: skip the
        # per-record calls then (two of the few per-record costs left here).
        key_deserializer = None if self._key_deserializer is default_deserializer else self._key_deserializer
        value_deserializer = None if self._value_deserializer is default_deserializer else self._value_deserializer
        topic, partition = tp
        failed = False
        for header, records in batches:
            if failed:
                # After a failing record the rest stays acquired but undelivered:
                # release it so that it is not held until the lock expires.
                for offset in range(header.base_offset, header.last_offset + 1):
                    if unhandled.pop(offset, None) is not None:
                        book.add_automatic(node_id, tp, offset, AcknowledgeType.RELEASE)
                continue
            if records is None:
                rejected = [o for o in range(header.base_offset, header.last_offset + 1) if unhandled.pop(o, None) is not None]
                for offset in rejected:
                    book.add_automatic(node_id, tp, offset, AcknowledgeType.REJECT)
                if rejected:
                    items.append(
                        CorruptRecordError(
                            f"record batch at offset {header.base_offset} of {tp} fails its CRC check; its "
                            f"{len(rejected)} acquired record(s) were rejected"
                        )
                    )
                continue
            leader_epoch = data.leader_epoch or header.leader_epoch
            timestamp_type = header.timestamp_type
            for record in records:
                offset = record.offset
                delivery_count = unhandled.pop(offset, None)
                if delivery_count is None:
                    continue  # not acquired by this fetch
                if failed:
                    book.add_automatic(node_id, tp, offset, AcknowledgeType.RELEASE)
                    continue
                key, value = record.key, record.value
                try:
                    if key_deserializer is not None:
                        key = deserialize(key_deserializer, key, tp, offset, "key")
                    if value_deserializer is not None:
                        value = deserialize(value_deserializer, value, tp, offset, "value")
                except RecordDeserializationError as exc:
                    book.on_failed_record(node_id, tp, offset)
                    items.append(
                        RecordDeserializationError(
                            f"{exc.message}. The record has been released.",
                            topic=topic, partition=partition, offset=offset, cause=exc.__cause__,
                        )
                    )
                    failed = True
                    continue
                items.append(
                    (
                        node_id,
                        ConsumerRecord._decoded(
                            topic, partition, offset, record.timestamp_ms, key, value, list(record.headers),
                            delivery_count, leader_epoch, node_id, timestamp_type,
                        ),
                    )
                )
        for offset in unhandled:
            # Acquired, but no record holds the offset: a compaction hole
            # or a control record. GAP archives it (KIP-932).
            book.add_automatic(node_id, tp, offset, AcknowledgeType.GAP)
        return items

    # ------------------------------------------------------------ internals: sessions and membership

    def _close_sessions(self, *, commit: bool, timeout_ms: int = 30000) -> None:
        """Send what must be sent, then close every share session (epoch -1)."""
        with self._io_lock:
            if commit:
                self._prepare_acknowledgements()
            else:
                # Implicit mode: the last poll's records are released by the
                # session close, not accepted (Kafka's close()). Decisions the
                # client made itself (RELEASE of an undeserializable record) still go.
                for (tp, offset), (node_id, ack) in list(self._book.delivered.items()):
                    if ack is not None and ack != AcknowledgeType.RENEW:
                        self._book.add_automatic(node_id, tp, offset, ack)
                self._book.delivered.clear()
            # Unacknowledged and buffered records are released by closing the session.
            self._book.drop_unacknowledged()
            self._buffer.clear()
            pending = self._book.take_pending()
            open_nodes = [n for n, s in self._sessions.items() if s.epoch != 0]
            if pending:
                self._send_acknowledgements(pending, final=False, timeout_ms=timeout_ms)
            for node_id in open_nodes:
                session = self._sessions[node_id]
                if session.epoch == 0:
                    continue
                address = self._conn.broker_address(node_id)
                if address is None:
                    session.reset()
                    continue
                request = shoal_pb2.ShareFetchRequest(
                    group_id=self._group_id, member_id=self._member_id, share_session_epoch=-1
                )
                try:
                    self._conn.call(address, "ShareFetch", request, min(timeout_ms, self._cfg["request.timeout.ms"]))
                except ShoalError:
                    pass  # the node is gone: its share sessions and locks went with it
                session.reset()

    def _leave_group(self) -> None:
        self._heartbeat_stop.set()
        self._heartbeat_wake.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
            self._heartbeat_thread = None
        with self._group_lock:
            joined = self._member_epoch > 0
        if joined:
            request = shoal_pb2.ShareGroupHeartbeatRequest(
                group_id=self._group_id, member_id=self._member_id, member_epoch=-1, client_id=self._cfg["client.id"]
            )
            try:
                self._conn.call_coordinator(self._group_id, "ShareGroupHeartbeat", request, timeout_ms=5000)
            except ShoalError:
                pass  # the coordinator removes us after share.session.timeout.ms anyway
        with self._group_lock:
            self._member_epoch = 0
            self._assignment = set()
        self._subscription = []

    def _run_heartbeat(self) -> None:
        backoff = Backoff(self._cfg["retry.backoff.ms"], self._cfg["retry.backoff.max.ms"])
        last_sent_subscription: list[str] | None = None
        while not self._heartbeat_stop.is_set():
            with self._group_lock:
                epoch = self._member_epoch
            subscription = list(self._subscription)
            request = shoal_pb2.ShareGroupHeartbeatRequest(
                group_id=self._group_id, member_id=self._member_id, member_epoch=epoch, client_id=self._cfg["client.id"]
            )
            if epoch == 0 or subscription != last_sent_subscription:
                request.subscribed_topics.CopyFrom(shoal_pb2.SubscribedTopics(names=subscription))
            wait_ms: float = self._heartbeat_interval_ms
            started = time.monotonic()
            try:
                response = self._conn.call_coordinator(
                    self._group_id, "ShareGroupHeartbeat", request, timeout_ms=self._cfg["request.timeout.ms"]
                )
                elapsed_ms = (time.monotonic() - started) * 1000.0
                with self._m_lock:
                    self._heartbeats += 1
                    self._heartbeat_rate.add()
                    self._heartbeat_time_total_ms += elapsed_ms
                    self._heartbeat_time_max_ms = max(self._heartbeat_time_max_ms, elapsed_ms)
                if response.error_code in _REJOIN_CODES:
                    with self._group_lock:
                        self._member_epoch = 0
                    last_sent_subscription = None
                    wait_ms = 0
                elif response.error_code:
                    error = error_for_code(response.error_code, response.error_message)
                    if not error.retriable:
                        self._fatal = error
                        self._assignment_changed.set()
                    wait_ms = backoff.next_ms()
                else:
                    backoff.reset()
                    last_sent_subscription = subscription
                    with self._group_lock:
                        self._member_epoch = response.member_epoch
                        if response.HasField("assignment"):
                            new = {
                                TopicPartition(t.topic, p)
                                for t in response.assignment.topic_partitions
                                for p in t.partitions
                            }
                            if new != self._assignment:
                                self._assignment = new
                                self._assignment_changed.set()
                    if response.heartbeat_interval_ms > 0:
                        self._heartbeat_interval_ms = response.heartbeat_interval_ms
                        wait_ms = response.heartbeat_interval_ms
            except ShoalError as exc:
                if exc.code in COORDINATOR_MOVED_CODES:
                    self._conn.forget_coordinator(0, self._group_id)
                if not exc.retriable:
                    self._fatal = exc
                    self._assignment_changed.set()
                wait_ms = backoff.next_ms()
            self._heartbeat_wake.wait(wait_ms / 1000.0)
            self._heartbeat_wake.clear()

