"""Kafka's default partitioner: murmur2 for keyed records, sticky for keyless ones.

* A record with a key goes to ``(murmur2(key) & 0x7fffffff) % partitions``,
  bit-for-bit what Java's ``Utils.murmur2``/``Utils.toPositive`` compute, so a
  key lands on the same partition whether a Java or a shoal producer sent it.
* A record without a key sticks to one partition until about ``batch.size``
  bytes went there, then moves to another one at random (KIP-794's uniform
  sticky partitioner). Records then fill whole batches instead of spraying one
  small batch per partition, which is what makes batching pay.
"""

from __future__ import annotations

import random
import threading

_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Java-compatible 32-bit murmur2 (seed 0x9747b28c) as a signed int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK32
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    tail = length % 4
    base = length & ~3
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a serialized key."""
    if num_partitions <= 0:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class DefaultPartitioner:
    """Keyed: murmur2. Keyless: sticky to one partition per ``batch_size`` bytes."""

    def __init__(self, batch_size: int, *, rng: random.Random | None = None) -> None:
        self._batch_size = batch_size
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # topic -> [sticky partition, bytes produced to it since it was chosen]
        self._sticky: dict[str, list[int]] = {}

    def partition(self, topic: str, key: bytes | None, num_partitions: int, available: list[int] | None = None) -> int:
        """Choose a partition. ``available`` lists partitions with a live leader, if known."""
        if key is not None:
            return partition_for_key(key, num_partitions)
        with self._lock:
            state = self._sticky.get(topic)
            if state is None or state[0] >= num_partitions:
                state = [self._pick(num_partitions, available, exclude=None), 0]
                self._sticky[topic] = state
            return state[0]

    def on_append(self, topic: str, partition: int, size: int, num_partitions: int, available: list[int] | None = None) -> None:
        """Count bytes sent to the sticky partition; switch after ``batch.size`` of them."""
        with self._lock:
            state = self._sticky.get(topic)
            if state is None or state[0] != partition:
                return
            state[1] += size
            if state[1] >= self._batch_size:
                state[0] = self._pick(num_partitions, available, exclude=partition)
                state[1] = 0

    def _pick(self, num_partitions: int, available: list[int] | None, *, exclude: int | None) -> int:
        candidates = [p for p in available if p < num_partitions] if available else []
        if not candidates:
            candidates = list(range(num_partitions))
        if exclude is not None and len(candidates) > 1:
            candidates = [p for p in candidates if p != exclude]
        return self._rng.choice(candidates)
