"""Benchmark: partition-log append and read throughput, and the batch codec's per-batch cost.

Run from the repository root: ``python tests/bench/bench_log.py``.

Batches of ~1000 records of 100 B and 1 KiB values are built once, then
appended as a leader would (validate + CRC + producer checks + stamp + write +
index) with the default LogConfig (1 GiB segments, fsync every second of
appends), then read back sequentially in 1 MiB fetches below the log end
offset. Codec figures (build, decode) are per batch on one core. Timing uses
time.perf_counter; the process clock drives now_ms.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.log import LogConfig, PartitionLog  # noqa: E402
from proto.batch import Compression, build_batch, decode_records, validate_batches  # noqa: E402

RECORDS_PER_BATCH = 1000
TARGET_BYTES = 256 * 1024 * 1024
FETCH_BYTES = 1024 * 1024


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def bench_log(value_bytes: int, compression: Compression) -> None:
    records = [(None, bytes([index % 251]) * value_bytes, (), 1_700_000_000_000 + index) for index in range(RECORDS_PER_BATCH)]
    batch = build_batch(records, compression=compression)
    batches = max(20, TARGET_BYTES // len(batch)) if compression == Compression.NONE else 400
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as directory:
        log = PartitionLog(Path(directory), LogConfig(max_message_bytes=4 * 1024 * 1024), now_ms())
        started = time.perf_counter()
        for _ in range(batches):
            log.append_as_leader(batch, 1, now_ms())
        log.flush()
        append_seconds = time.perf_counter() - started

        started = time.perf_counter()
        offset = 0
        read_bytes = 0
        end = log.log_end_offset
        while offset < end:
            data = log.read(offset, FETCH_BYTES, end)
            read_bytes += len(data)
            headers = validate_batches(data, 1 << 30, dense=False)  # what a consumer checks (CRC)
            offset = headers[-1].next_offset
        read_seconds = time.perf_counter() - started
        log.close()

    records_total = batches * RECORDS_PER_BATCH
    stored_bytes = batches * len(batch)
    print(
        f"{value_bytes:>5} B values, {compression.name:<4} batch {len(batch) / 1024:7.1f} KiB x {batches:4d}: "
        f"append {records_total / append_seconds / 1e6:6.2f} M records/s {stored_bytes / append_seconds / 1e6:7.0f} MB/s "
        f"({append_seconds / batches * 1e6:5.0f} us/batch) | "
        f"read+crc {records_total / read_seconds / 1e6:6.2f} M records/s {read_bytes / read_seconds / 1e6:7.0f} MB/s"
    )


def bench_codec(value_bytes: int, compression: Compression) -> None:
    records = [(None, b"x" * value_bytes, (), 1_700_000_000_000 + index) for index in range(RECORDS_PER_BATCH)]
    repeats = 50
    started = time.perf_counter()
    for _ in range(repeats):
        batch = build_batch(records, compression=compression)
    build_us = (time.perf_counter() - started) / repeats * 1e6
    started = time.perf_counter()
    for _ in range(repeats):
        decode_records(batch)
    decode_us = (time.perf_counter() - started) / repeats * 1e6
    print(
        f"codec {value_bytes:>5} B values, {compression.name:<4}: build {build_us:7.0f} us/batch "
        f"({RECORDS_PER_BATCH / build_us:5.2f} M records/s), decode {decode_us:7.0f} us/batch "
        f"({RECORDS_PER_BATCH / decode_us:5.2f} M records/s)"
    )


def main() -> None:
    print(f"python {sys.version.split()[0]}, {RECORDS_PER_BATCH} records per batch")
    for value_bytes in (100, 1024):
        bench_log(value_bytes, Compression.NONE)
    bench_log(100, Compression.ZSTD)
    for value_bytes in (100, 1024):
        for compression in (Compression.NONE, Compression.LZ4, Compression.ZSTD):
            bench_codec(value_bytes, compression)


if __name__ == "__main__":
    main()
