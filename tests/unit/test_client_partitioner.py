"""Kafka's default partitioner: Java-compatible murmur2 and sticky keyless partitioning."""

from __future__ import annotations

import random

import pytest

from client.partitioner import DefaultPartitioner, murmur2, partition_for_key

# Test vectors from Kafka's UtilsTest.testMurmur2.
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS)
def test_murmur2_matches_java(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_for_key_is_positive_modulo() -> None:
    for data, hashed in KAFKA_VECTORS:
        for n in (1, 2, 3, 7, 12):
            assert partition_for_key(data, n) == (hashed & 0x7FFFFFFF) % n


def test_partition_for_key_refuses_zero_partitions() -> None:
    with pytest.raises(ValueError):
        partition_for_key(b"k", 0)


def test_keyed_records_ignore_stickiness() -> None:
    partitioner = DefaultPartitioner(batch_size=100, rng=random.Random(1))
    assert {partitioner.partition("t", b"abc", 12) for _ in range(50)} == {partition_for_key(b"abc", 12)}


def test_keyless_records_stick_until_batch_size_then_move() -> None:
    partitioner = DefaultPartitioner(batch_size=1000, rng=random.Random(7))
    first = partitioner.partition("t", None, 6)
    for _ in range(9):  # 900 bytes: still below batch.size
        assert partitioner.partition("t", None, 6) == first
        partitioner.on_append("t", first, 100, 6)
    partitioner.on_append("t", first, 100, 6)  # reaches 1000 bytes: switch
    second = partitioner.partition("t", None, 6)
    assert second != first
    # And it sticks to the new one.
    assert all(partitioner.partition("t", None, 6) == second for _ in range(20))


def test_keyless_records_spread_over_time() -> None:
    partitioner = DefaultPartitioner(batch_size=10, rng=random.Random(3))
    seen = set()
    for _ in range(200):
        p = partitioner.partition("t", None, 4)
        seen.add(p)
        partitioner.on_append("t", p, 10, 4)
    assert seen == {0, 1, 2, 3}


def test_sticky_partition_prefers_available_partitions() -> None:
    partitioner = DefaultPartitioner(batch_size=10, rng=random.Random(5))
    for _ in range(50):
        p = partitioner.partition("t", None, 4, available=[1, 3])
        assert p in (1, 3)
        partitioner.on_append("t", p, 10, 4, available=[1, 3])


def test_topics_are_independent() -> None:
    partitioner = DefaultPartitioner(batch_size=10, rng=random.Random(11))
    a = partitioner.partition("a", None, 100)
    partitioner.on_append("b", a, 1000, 100)  # bytes to another topic do not move a's partition
    assert partitioner.partition("a", None, 100) == a
