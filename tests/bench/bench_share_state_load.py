"""Benchmark: how long loading a share state partition takes (decode + replay).

Run from the repository root:

    .venv/bin/python tests/bench/bench_share_state_load.py

Two logs are built in memory with the coordinator's own operations (write,
append, replay), encoded, and then loaded into a fresh shard, as a new leader
of the state partition does on fail-over:

(a) 100,000 update records for one key: a share-partition leader with a
    sliding window that acquires ten new records (AVAILABLE, delivery count 1)
    and acknowledges ten older ones per write (every fifth time three of them
    are rejected instead), moving its start offset along;
    snapshots are disabled so that every record is an update.
(b) 1,000 keys, each with a snapshot of 50 batches followed by 99 updates.

Figures are printed, not asserted: timing belongs to benchmarks, not tests.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coordinator.share_state import (  # noqa: E402
    ACKNOWLEDGED,
    ARCHIVED,
    AVAILABLE,
    PersistedBatch,
    ShareCoordinatorShard,
    ShareKey,
    ShareStateSettings,
    decode_record,
    encode_record,
)

#: Offsets acquired and acknowledged per write.
BATCH_RECORDS = 10
#: Writes between acquiring a batch and acknowledging it (the in-flight window).
WINDOW_WRITES = 50


def _sliding_window_writes(shard: ShareCoordinatorShard, key: ShareKey, writes: int, log: list[bytes]) -> None:
    """Append ``writes`` leader writes for ``key`` to ``log``, replaying each."""
    for index in range(writes):
        acquired_first = index * BATCH_RECORDS
        batches = [PersistedBatch(acquired_first, acquired_first + BATCH_RECORDS - 1, AVAILABLE, 1)]
        start_offset = -1
        if index >= WINDOW_WRITES:
            acked_first = (index - WINDOW_WRITES) * BATCH_RECORDS
            if index % 5:
                batches.append(
                    PersistedBatch(acked_first, acked_first + BATCH_RECORDS - 1, ACKNOWLEDGED, 1)
                )
            else:
                # Every fifth batch: three records rejected, so runs split.
                batches.append(PersistedBatch(acked_first, acked_first + 6, ACKNOWLEDGED, 1))
                batches.append(PersistedBatch(acked_first + 7, acked_first + 9, ARCHIVED, 1))
            # Acknowledging in order lets the leader advance its start offset
            # over the acknowledged prefix, except for a trailing gap.
            start_offset = max(0, acked_first - BATCH_RECORDS * 20)
        for record in shard.write(key, 0, 0, start_offset, index, batches):
            log.append(encode_record(record))
            shard.replay(record, len(log) - 1)


def _load(log: list[bytes]) -> tuple[float, ShareCoordinatorShard]:
    shard = ShareCoordinatorShard()
    began = time.perf_counter()
    for log_offset, data in enumerate(log):
        shard.replay(decode_record(data), log_offset)
    return time.perf_counter() - began, shard


def bench_one_key(updates: int = 100_000) -> None:
    key = ShareKey("orders-workers", "orders", 3)
    writer = ShareCoordinatorShard(ShareStateSettings(snapshot_update_records_per_snapshot=1_000_000))
    log: list[bytes] = []
    # The first write is a snapshot; every later one is an update.
    _sliding_window_writes(writer, key, updates + 1, log)
    seconds, loaded = _load(log)
    assert loaded.read(key, -1) == writer.read(key, -1)
    size_mib = sum(len(data) for data in log) / 2**20
    print(
        f"(a) 1 key, {len(log) - 1:,} updates + 1 snapshot ({size_mib:.1f} MiB): "
        f"decode+replay {seconds:.3f} s ({seconds / len(log) * 1e6:.2f} us/record), "
        f"{loaded.read_summary(key).batch_count} batches at the end"
    )


def bench_many_keys(keys: int = 1_000, updates_per_key: int = 99, snapshot_batches: int = 50) -> None:
    writer = ShareCoordinatorShard(ShareStateSettings(snapshot_update_records_per_snapshot=1_000))
    log: list[bytes] = []

    def append(records: list) -> None:
        for record in records:
            log.append(encode_record(record))
            writer.replay(record, len(log) - 1)

    all_keys = [ShareKey(f"group-{index % 37}", f"topic-{index // 37}", index % 7) for index in range(keys)]
    # A snapshot with alternating acknowledged and available runs per key.
    for key in all_keys:
        batches = [
            PersistedBatch(
                index * BATCH_RECORDS,
                index * BATCH_RECORDS + BATCH_RECORDS - 1,
                ACKNOWLEDGED if index % 2 else AVAILABLE,
                1 + index % 3,
            )
            for index in range(snapshot_batches)
        ]
        append(writer.write(key, 0, 0, 0, 0, batches))
    # Updates interleaved across keys, as the log would hold them.
    for round_index in range(updates_per_key):
        for key in all_keys:
            first = (snapshot_batches + round_index) * BATCH_RECORDS
            append(writer.write(key, 0, 0, -1, round_index, [PersistedBatch(first, first + 9, AVAILABLE, 1)]))
    seconds, loaded = _load(log)
    assert sorted(loaded.keys(), key=repr) == sorted(all_keys, key=repr)
    assert all(loaded.read(key, -1) == writer.read(key, -1) for key in all_keys)
    size_mib = sum(len(data) for data in log) / 2**20
    print(
        f"(b) {keys:,} keys x (1 snapshot of {snapshot_batches} batches + {updates_per_key} updates) "
        f"= {len(log):,} records ({size_mib:.1f} MiB): decode+replay {seconds:.3f} s "
        f"({seconds / len(log) * 1e6:.2f} us/record)"
    )


def main() -> None:
    bench_one_key()
    bench_many_keys()


if __name__ == "__main__":
    main()
