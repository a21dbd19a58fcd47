"""Producer: batches records per partition and sends them from a background thread.

Use::

    with Producer({"bootstrap.servers": "127.0.0.1:19092"}) as producer:
        future = producer.send("orders", b"payload", key=b"customer-7")
        metadata = future.result()          # RecordMetadata(topic, partition, offset, ...)

Theory of operation

1. ``send`` serializes the key and value, picks a partition (murmur2 of the
   key, or the sticky partition for keyless records — :mod:`client.partitioner`)
   and appends the record to the open batch of that partition in the
   *accumulator*. It returns a ``RecordFuture`` (the Future methods, one shared
   Future per batch).
2. The sender thread drains a partition's first batch when it is full
   (``batch.size``), when it has waited ``linger.ms``, or when someone flushes
   or closes. Batches of partitions led by the same node travel in one
   ProduceRequest (up to ``max.request.size``); a node has at most
   ``max.in.flight.requests.per.connection`` requests outstanding.
3. Each partition has at most one batch in flight. This keeps records of a
   partition in order across retries without relying on the broker to reorder
   (Kafka allows up to five with idempotence; one is simpler and still
   pipelines across partitions and nodes).
4. Idempotence (``enable.idempotence``, default on): the producer gets a
   producer id and epoch (InitProducerId) and stamps every batch with a base
   sequence number per partition. A batch is encoded once, when it is first
   drained, and retried byte for byte, so a retry after a timeout or a leader
   move carries the same sequence and the leader drops it as a duplicate
   (DUPLICATE_SEQUENCE_NUMBER counts as success). The sequence of a partition
   advances only when its batch succeeded. When a batch fails for good
   (delivery timeout, non-retriable error) its fate on the broker is unknown,
   so the partition moves to a fresh producer id with sequence 0 instead of
   reusing numbers the broker may already have seen.
5. Errors: NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, UNAVAILABLE and other
   retriable errors refresh metadata (or apply the response's leader hint),
   back off (``retry.backoff.ms`` doubling to ``retry.backoff.max.ms``) and
   retry. A future fails only with a non-retriable error, after ``retries``
   retries, or when ``delivery.timeout.ms`` has passed since ``send``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from client._net import LEADER_MOVED_CODES, Backoff, Connections, now_ms
from client.config import default_serializer, producer_config
from client.metrics import attach_exporter
from client.errors import (
    IllegalStateError,
    KafkaTimeoutError,
    MessageTooLargeError,
    ShoalError,
    UnknownServerError,
    error_for_code,
)
from client.partitioner import DefaultPartitioner
from client.types import RecordMetadata, TopicPartition
from proto import batch as batch_codec
from proto import shoal_pb2

_COMPRESSION = {
    "none": batch_codec.Compression.NONE,
    "lz4": batch_codec.Compression.LZ4,
    "zstd": batch_codec.Compression.ZSTD,
}
_ACKS = {"0": 0, "1": 1, "all": -1, "-1": -1}
# Per-record framing in proto/batch.py: 21 fixed bytes, 4 for the value
# length, 4 for the header count; the batch header is 61 bytes.
_RECORD_OVERHEAD = 29
_BATCH_OVERHEAD = batch_codec.HEADER_BYTES
_DUPLICATE_SEQUENCE_NUMBER = 46


class RecordFuture:
    """The outcome of one ``send()``: a future of its RecordMetadata.

    It offers the ``concurrent.futures.Future`` methods applications use
    (``result``, ``exception``, ``done``, ``add_done_callback``, ``cancel``,
    ``cancelled``, ``running``) but is not a Future subclass: a real Future per
    record costs a Condition and an RLock, about a third of ``send()`` (measured
    in docs/benchmarks.md). Every record of a batch shares the batch's one Future
    and reads its own offset from it: base offset + its index in the batch.
    """

    __slots__ = ("_batch_future", "_tp", "_index", "_timestamp_ms")

    def __init__(self, batch_future: Future[tuple[int, int]], tp: TopicPartition, index: int, timestamp_ms: int) -> None:
        self._batch_future = batch_future
        self._tp = tp
        self._index = index
        self._timestamp_ms = timestamp_ms

    def result(self, timeout: float | None = None) -> RecordMetadata:
        base_offset, log_append_time_ms = self._batch_future.result(timeout)
        offset = base_offset + self._index if base_offset >= 0 else -1
        timestamp = log_append_time_ms if log_append_time_ms > 0 else self._timestamp_ms
        return RecordMetadata(self._tp.topic, self._tp.partition, offset, timestamp)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._batch_future.exception(timeout)

    def done(self) -> bool:
        return self._batch_future.done()

    def running(self) -> bool:
        return not self._batch_future.done()

    def cancel(self) -> bool:
        return False  # a queued record cannot be taken back out of its batch

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[RecordFuture], object]) -> None:
        self._batch_future.add_done_callback(lambda _future: fn(self))


@dataclass
class _Batch:
    tp: TopicPartition
    created_ms: int
    deadline_ms: int
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]] = field(default_factory=list)
    #: One future for the whole batch: (base offset, log append time or -1).
    future: Future[tuple[int, int]] = field(default_factory=Future)
    size_bytes: int = _BATCH_OVERHEAD
    encoded: bytes | None = None  # fixed at first drain; retries resend these bytes
    attempts: int = 0
    retry_at_ms: int = 0
    base_sequence: int = -1
    producer_id: int = -1
    producer_epoch: int = -1


@dataclass
class _PartitionSequence:
    producer_id: int
    producer_epoch: int
    next_sequence: int = 0


class Producer:
    """A Kafka-style producer. Thread-safe: many threads may call ``send``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._cfg = producer_config(config)
        cfg = self._cfg
        self._conn = Connections(cfg)
        self._acks = _ACKS[cfg["acks"]]
        self._idempotent: bool = cfg["enable.idempotence"]
        self._compression = _COMPRESSION[cfg["compression.type"]]
        self._batch_size: int = cfg["batch.size"]
        self._linger_ms: int = cfg["linger.ms"]
        self._max_request_size: int = cfg["max.request.size"]
        self._max_in_flight: int = cfg["max.in.flight.requests.per.connection"]
        self._key_serializer: Callable[[Any], bytes | None] = cfg["key.serializer"] or default_serializer
        self._value_serializer: Callable[[Any], bytes | None] = cfg["value.serializer"] or default_serializer
        self._partitioner = DefaultPartitioner(self._batch_size)
        self._custom_partitioner = cfg["partitioner"]

        self._lock = threading.Condition()
        self._queues: dict[TopicPartition, deque[_Batch]] = {}
        self._in_flight_tps: set[TopicPartition] = set()
        self._in_flight_per_node: dict[int, int] = {}
        self._pending_records = 0  # appended but not completed
        self._buffered_bytes = 0
        self._flushing = 0
        self._closing = False
        self._closed = False
        self._sequences: dict[TopicPartition, _PartitionSequence] = {}
        self._producer_id = -1
        self._producer_epoch = -1
        self._backoff_by_tp: dict[TopicPartition, Backoff] = {}

        self._metrics_lock = threading.Lock()
        self._records_sent = 0
        self._batches_sent = 0
        self._bytes_sent = 0
        self._record_errors = 0
        self._retries = 0
        self._requests = 0
        self._latency_total_ms = 0.0
        self._latency_max_ms = 0.0

        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="shoal-producer-io")
        self._sender = threading.Thread(target=self._run_sender, name="shoal-producer-sender", daemon=True)
        self._sender.start()
        self._exporter = attach_exporter(self, "producer", cfg["metrics.port"])

    # ------------------------------------------------------------ public API

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Mapping[str, bytes | str | None] | list[tuple[str, bytes | str | None]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Queue a record for ``topic``; the future completes with its RecordMetadata.

        Blocks up to ``max.block.ms`` only to learn the topic's partitions or
        when ``buffer.memory`` is full.
        """
        if self._closing:
            raise IllegalStateError("cannot send after the producer is closed")
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string")
        key_bytes = self._key_serializer(key)
        value_bytes = self._value_serializer(value)
        header_list: list[tuple[str, bytes | None]] = []
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            for name, header_value in items:
                header_list.append((str(name), default_serializer(header_value)))
        timestamp = int(timestamp_ms) if timestamp_ms is not None else time.time_ns() // 1_000_000
        size = _RECORD_OVERHEAD + len(key_bytes or b"") + len(value_bytes or b"")
        size += sum(8 + len(n.encode()) + len(v or b"") for n, v in header_list)
        if size + _BATCH_OVERHEAD > self._max_request_size:
            raise MessageTooLargeError(
                f"the record is {size + _BATCH_OVERHEAD} bytes when serialized, larger than "
                f"max.request.size ({self._max_request_size})"
            )
        deadline = now_ms() + self._cfg["max.block.ms"]
        num_partitions = self._partitions_of(topic, deadline)
        if partition is not None:
            if not 0 <= partition < num_partitions:
                raise error_for_code(
                    3, f"partition {partition} of topic {topic!r} does not exist (it has {num_partitions})"
                )
            chosen = partition
        elif self._custom_partitioner is not None:
            chosen = int(self._custom_partitioner(topic, key_bytes, num_partitions))
        else:
            available = None if key_bytes is not None else self._conn.available_partitions(topic)
            chosen = self._partitioner.partition(topic, key_bytes, num_partitions, available)
        tp = TopicPartition(topic, chosen)
        with self._lock:
            while self._buffered_bytes + size > self._cfg["buffer.memory"] and not self._closing:
                remaining = deadline - now_ms()
                if remaining <= 0:
                    raise KafkaTimeoutError(
                        f"buffer.memory ({self._cfg['buffer.memory']} bytes) stayed full for max.block.ms"
                    )
                self._lock.wait(remaining / 1000.0)
            if self._closing:
                raise IllegalStateError("cannot send after the producer is closed")
            queue = self._queues.setdefault(tp, deque())
            current = queue[-1] if queue else None
            new_batch = (
                current is None
                or current.encoded is not None
                or current.size_bytes + size > self._batch_size and current.records
            )
            if new_batch:
                now = now_ms()
                current = _Batch(tp, now, now + self._cfg["delivery.timeout.ms"])
                queue.append(current)
            future = RecordFuture(current.future, tp, len(current.records), timestamp)
            current.records.append((key_bytes, value_bytes, header_list, timestamp))
            current.size_bytes += size
            self._pending_records += 1
            self._buffered_bytes += size
            # A new batch must wake the sender so that it re-arms its wait to
            # linger.ms; otherwise the first record of a batch could wait for the
            # sender's idle timeout (docs/benchmarks.md measured p99 508 ms).
            if new_batch or current.size_bytes >= self._batch_size or len(queue) > 1 or self._linger_ms == 0:
                self._lock.notify_all()
        if partition is None and key_bytes is None and self._custom_partitioner is None:
            self._partitioner.on_append(topic, chosen, size, num_partitions, self._conn.available_partitions(topic))
        return future

    def produce(self, topic: str, value: Any = None, key: Any = None, **kwargs: Any) -> RecordFuture:
        """Alias of :meth:`send` for confluent-kafka users."""
        return self.send(topic, value, key, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait until every record completed (or failed).

        Raises KafkaTimeoutError if records are still outstanding after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._lock.notify_all()
            try:
                while self._pending_records > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise KafkaTimeoutError(
                            f"flush timed out with {self._pending_records} records still undelivered"
                        )
                    self._lock.wait(remaining if remaining is not None else 1.0)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop.

        Records still undelivered when the timeout passes fail with KafkaTimeoutError.
        """
        if self._closed:
            return
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        try:
            self.flush(timeout)
        except KafkaTimeoutError:
            pass
        with self._lock:
            self._closed = True
            leftovers = [b for q in self._queues.values() for b in q]
            self._queues.clear()
            self._lock.notify_all()
        for batch in leftovers:
            self._fail(batch, KafkaTimeoutError("the producer was closed before the record was delivered"))
        self._sender.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._conn.close()
        if self._exporter is not None:
            self._exporter.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def partitions_for(self, topic: str) -> list[int]:
        """The partition ids of a topic (from metadata)."""
        return sorted(self._conn.topic(topic).partitions)

    def metrics(self) -> dict[str, float]:
        """Counters this producer keeps (Kafka's producer-metrics names, snake_case)."""
        with self._metrics_lock:
            requests = self._requests
            return {
                "record_send_total": self._records_sent,
                "batch_send_total": self._batches_sent,
                "byte_send_total": self._bytes_sent,
                "record_error_total": self._record_errors,
                "record_retry_total": self._retries,
                "request_total": requests,
                "request_latency_avg_ms": self._latency_total_ms / requests if requests else 0.0,
                "request_latency_max_ms": self._latency_max_ms,
                "records_queued": self._pending_records,
                "buffer_bytes_used": self._buffered_bytes,
                "producer_id": self._producer_id,
            }

    # ------------------------------------------------------------ internals

    def _partitions_of(self, topic: str, deadline_ms: int) -> int:
        try:
            count = self._conn.partition_count(topic)
            if count > 0:
                return count  # the common case: known topic, no backoff needed
        except ShoalError as exc:
            if not exc.retriable:
                raise
        backoff = Backoff(self._cfg["retry.backoff.ms"], self._cfg["retry.backoff.max.ms"])
        while True:
            try:
                count = self._conn.partition_count(topic)
                if count > 0:
                    return count
                raise error_for_code(5, f"topic {topic!r} has no partitions yet")
            except ShoalError as exc:
                if not exc.retriable:
                    raise
                if now_ms() + backoff.initial_ms >= deadline_ms:
                    raise KafkaTimeoutError(
                        f"topic {topic!r} not present in metadata after max.block.ms "
                        f"({self._cfg['max.block.ms']} ms): {exc.message}"
                    ) from exc
                backoff.sleep(deadline_ms)

    def _ensure_producer_id(self, *, new: bool = False) -> None:
        if not self._idempotent or (self._producer_id >= 0 and not new):
            return
        response = self._conn.call_any("InitProducerId", shoal_pb2.InitProducerIdRequest())
        if response.error_code != 0:
            raise error_for_code(response.error_code, response.error_message or "InitProducerId failed")
        self._producer_id = response.producer_id
        self._producer_epoch = response.producer_epoch

    def _ready_batches(self, now: int) -> tuple[list[_Batch], float]:
        """Batches to send now, and how long the sender may sleep otherwise. Holds the lock."""
        ready: list[_Batch] = []
        expired: list[_Batch] = []
        wait_ms = 1000.0
        urgent = self._flushing > 0 or self._closing
        for tp, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            if head.deadline_ms <= now and tp not in self._in_flight_tps:
                expired.append(queue.popleft())
                continue
            wait_ms = min(wait_ms, max(0, head.deadline_ms - now))
            if tp in self._in_flight_tps:
                continue
            if head.retry_at_ms > now:
                wait_ms = min(wait_ms, head.retry_at_ms - now)
                continue
            full = head.size_bytes >= self._batch_size or len(queue) > 1 or head.encoded is not None
            lingered = now - head.created_ms >= self._linger_ms
            if full or lingered or urgent:
                # Reserved: out of the queue and marked in flight until it is
                # sent, or put back at the head by _retry_or_fail/_put_back.
                ready.append(queue.popleft())
                self._in_flight_tps.add(tp)
            else:
                wait_ms = min(wait_ms, head.created_ms + self._linger_ms - now)
        for batch in expired:
            self._fail_locked_later(batch)
        return ready, wait_ms

    def _fail_locked_later(self, batch: _Batch) -> None:
        self._pool.submit(
            self._fail,
            batch,
            KafkaTimeoutError(
                f"expiring {len(batch.records)} record(s) for {batch.tp}: delivery.timeout.ms "
                f"({self._cfg['delivery.timeout.ms']} ms) passed since the batch was created"
            ),
        )

    def _run_sender(self) -> None:
        while True:
            with self._lock:
                if self._closed and not any(self._queues.values()):
                    return
                now = now_ms()
                ready, wait_ms = self._ready_batches(now)
                if not ready:
                    if self._closed:
                        return
                    self._lock.wait(max(0.001, wait_ms / 1000.0))
                    continue
            if not self._dispatch(ready):
                # Every leader node already has its maximum of requests in
                # flight: wait until one completes (it notifies) instead of spinning.
                with self._lock:
                    self._lock.wait(0.05)

    def _put_back(self, batches: list[_Batch]) -> None:
        with self._lock:
            for batch in reversed(batches):
                self._in_flight_tps.discard(batch.tp)
                self._queues.setdefault(batch.tp, deque()).appendleft(batch)

    def _dispatch(self, ready: list[_Batch]) -> bool:
        """Send ready batches, one request per leader node; False if nothing could go out."""
        """Group ready batches by leader and send one request per node."""
        try:
            self._ensure_producer_id()
        except ShoalError as exc:
            for batch in ready:
                self._retry_or_fail(batch, exc)
            return True
        progress = False
        by_node: dict[int, tuple[str, list[_Batch]]] = {}
        for batch in ready:
            try:
                node_id, address, _ = self._conn.leader(batch.tp)
            except ShoalError as exc:
                self._retry_or_fail(batch, exc)
                progress = True
                continue
            by_node.setdefault(node_id, (address, []))[1].append(batch)
        for node_id, (address, batches) in by_node.items():
            with self._lock:
                busy = self._in_flight_per_node.get(node_id, 0) >= self._max_in_flight
            if busy:
                self._put_back(batches)
                continue
            chosen: list[_Batch] = []
            total = 0
            with self._lock:
                for batch in batches:
                    self._encode(batch)
                    size = len(batch.encoded or b"")
                    if chosen and total + size > self._max_request_size:
                        break
                    chosen.append(batch)
                    total += size
                self._in_flight_per_node[node_id] = self._in_flight_per_node.get(node_id, 0) + 1
            self._put_back(batches[len(chosen):])
            progress = True
            self._pool.submit(self._send_request, node_id, address, chosen)
        return progress

    def _encode(self, batch: _Batch) -> None:
        """Encode a batch once; its bytes (and sequence) never change afterwards. Holds the lock."""
        if batch.encoded is not None:
            return
        if self._idempotent:
            seq = self._sequences.get(batch.tp)
            if seq is None:
                seq = _PartitionSequence(self._producer_id, self._producer_epoch)
                self._sequences[batch.tp] = seq
            batch.producer_id, batch.producer_epoch = seq.producer_id, seq.producer_epoch
            batch.base_sequence = seq.next_sequence
        batch.encoded = batch_codec.build_batch(
            batch.records,
            compression=self._compression,
            producer_id=batch.producer_id,
            producer_epoch=batch.producer_epoch,
            base_sequence=batch.base_sequence,
        )

    def _send_request(self, node_id: int, address: str, batches: list[_Batch]) -> None:
        request = shoal_pb2.ProduceRequest(
            acks=self._acks,
            timeout_ms=self._cfg["request.timeout.ms"],
            partitions=[
                shoal_pb2.PartitionRecords(topic=b.tp.topic, partition=b.tp.partition, records=b.encoded)
                for b in batches
            ],
        )
        started = time.monotonic()
        for batch in batches:
            batch.attempts += 1
        try:
            try:
                # Leave the broker its timeout_ms plus a margin to answer.
                response = self._conn.call(address, "Produce", request, self._cfg["request.timeout.ms"] + 5000)
            except ShoalError as exc:
                self._record_latency(started)
                if exc.code in LEADER_MOVED_CODES or exc.retriable:
                    self._conn.invalidate()
                for batch in batches:
                    self._retry_or_fail(batch, exc)
                return
            self._record_latency(started)
            results = {(r.topic, r.partition): r for r in response.results}
            for batch in batches:
                result = results.get((batch.tp.topic, batch.tp.partition))
                if result is None:
                    self._retry_or_fail(batch, UnknownServerError(f"no result for {batch.tp} in the produce response"))
                elif result.error_code == 0 or result.error_code == _DUPLICATE_SEQUENCE_NUMBER:
                    self._complete(batch, result.base_offset if self._acks != 0 else -1, result.log_append_time_ms)
                else:
                    exc = error_for_code(result.error_code, result.error_message or f"produce to {batch.tp} failed")
                    if result.error_code in LEADER_MOVED_CODES:
                        if result.HasField("current_leader") and result.current_leader.leader_id >= 0:
                            self._conn.note_leader(
                                batch.tp, result.current_leader.leader_id, result.current_leader.leader_epoch
                            )
                        else:
                            self._conn.invalidate(batch.tp.topic)
                    self._retry_or_fail(batch, exc)
        finally:
            with self._lock:
                self._in_flight_per_node[node_id] -= 1
                self._lock.notify_all()

    def _record_latency(self, started: float) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000.0
        with self._metrics_lock:
            self._requests += 1
            self._latency_total_ms += elapsed_ms
            self._latency_max_ms = max(self._latency_max_ms, elapsed_ms)

    def _retry_or_fail(self, batch: _Batch, exc: ShoalError) -> None:
        now = now_ms()
        retriable = exc.retriable and batch.attempts <= self._cfg["retries"] and now < batch.deadline_ms
        if not retriable:
            if not exc.retriable:
                self._fail(batch, exc)
            elif now >= batch.deadline_ms:
                self._fail(
                    batch,
                    KafkaTimeoutError(
                        f"delivery.timeout.ms ({self._cfg['delivery.timeout.ms']} ms) passed for {batch.tp}; "
                        f"last error: {exc}"
                    ),
                )
            else:
                self._fail(batch, exc)
            return
        backoff = self._backoff_by_tp.setdefault(
            batch.tp, Backoff(self._cfg["retry.backoff.ms"], self._cfg["retry.backoff.max.ms"])
        )
        batch.retry_at_ms = now + int(backoff.next_ms())
        with self._metrics_lock:
            self._retries += len(batch.records)
        with self._lock:
            self._in_flight_tps.discard(batch.tp)
            # Back at the head of its partition queue: order is kept.
            self._queues.setdefault(batch.tp, deque()).appendleft(batch)
            self._lock.notify_all()

    def _complete(self, batch: _Batch, base_offset: int, log_append_time_ms: int) -> None:
        with self._lock:
            if self._idempotent and batch.base_sequence >= 0:
                seq = self._sequences.get(batch.tp)
                if seq is not None and seq.producer_id == batch.producer_id:
                    seq.next_sequence = (batch.base_sequence + len(batch.records)) % (2**31)
            self._in_flight_tps.discard(batch.tp)
            self._pending_records -= len(batch.records)
            self._buffered_bytes -= batch.size_bytes - _BATCH_OVERHEAD
            self._backoff_by_tp.pop(batch.tp, None)
            self._lock.notify_all()
        with self._metrics_lock:
            self._records_sent += len(batch.records)
            self._batches_sent += 1
            self._bytes_sent += len(batch.encoded or b"")
        batch.future.set_result((base_offset, log_append_time_ms))

    def _fail(self, batch: _Batch, exc: ShoalError) -> None:
        new_id_needed = False
        with self._lock:
            if self._idempotent and batch.encoded is not None:
                # The broker may or may not hold this batch: never reuse its
                # sequence numbers. The partition starts over under a new id.
                self._sequences.pop(batch.tp, None)
                new_id_needed = True
            self._in_flight_tps.discard(batch.tp)
            self._pending_records -= len(batch.records)
            self._buffered_bytes -= batch.size_bytes - _BATCH_OVERHEAD
            self._lock.notify_all()
        if new_id_needed:
            try:
                self._ensure_producer_id(new=True)
            except ShoalError:
                # Unreachable cluster: force a new id on the next dispatch.
                self._producer_id = -1
        with self._metrics_lock:
            self._record_errors += len(batch.records)
        if not batch.future.done():
            batch.future.set_exception(exc)
