"""Benchmark: partition-log append and read throughput, and the batch codec's per-batch cost.

Run from the repository root: ``python tests/bench/bench_log.py``.

Batches of ~1000 records of 100 B and 1 KiB values are built once, then
appended as a leader would (validate + CRC + producer checks + stamp + write +
index) with the default LogConfig (1 GiB segments, fsync every second of
appends), then read back sequentially in 1 MiB fetches below the log end
offset. Codec figures (build, decode) are per batch on one core. Timing uses
time.perf_counter; the process clock drives now_ms.

The open benchmark fills a log with 200,000 one-record batches from 1,000
idempotent producers over several segments, closes it, and times reopening it
three ways, interleaved: with the snapshot written on close (nothing to
replay), with only the snapshots written at segment rolls (what a crash
leaves: the active segment is replayed), and with every snapshot file removed
(the producer state rebuilt from every batch header). Segments wholly below
the recovery point and the snapshot's offset are opened from their index
files; the others are walked. The page cache is warm in all three.
"""

from __future__ import annotations

import statistics
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
OPEN_BATCHES = 200_000
OPEN_PRODUCERS = 1_000
OPEN_SEGMENT_BYTES = 4 * 1024 * 1024
OPEN_RUNS = 5


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


def bench_open() -> None:
    config = LogConfig(segment_bytes=OPEN_SEGMENT_BYTES, retention_ms=-1)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as name:
        directory = Path(name)
        log = PartitionLog(directory, config, now_ms())
        for index in range(OPEN_BATCHES):
            batch = build_batch(
                [(None, b"v" * 20, (), 1_700_000_000_000 + index)],
                producer_id=index % OPEN_PRODUCERS,
                producer_epoch=0,
                base_sequence=index // OPEN_PRODUCERS,
            )
            log.append_as_leader(batch, 1, now_ms())
        segments = log.segment_count
        size_mib = log.size_bytes / 2**20
        log.close()
        # One record per batch, so an offset counts batches.
        saved = {path: path.read_bytes() for path in sorted(directory.glob("*.snapshot"))}
        offsets = [int(path.name.split(".")[0]) for path in saved]
        cases = {
            "snapshot on close": (list(saved), OPEN_BATCHES - offsets[-1]),
            "roll snapshots only": (list(saved)[:-1], OPEN_BATCHES - offsets[-2]),
            "no snapshot (full rebuild)": ([], OPEN_BATCHES),
        }
        seconds: dict[str, list[float]] = {case: [] for case in cases}
        for _ in range(OPEN_RUNS):
            for case, (kept, _) in cases.items():
                for path in directory.glob("*.snapshot"):
                    path.unlink()
                for path in kept:
                    path.write_bytes(saved[path])
                started = time.perf_counter()
                reopened = PartitionLog(directory, config, now_ms())
                seconds[case].append(time.perf_counter() - started)
                assert len(reopened.producer_state) == OPEN_PRODUCERS
                reopened.close()
    print(
        f"open {OPEN_BATCHES:,} batches ({segments} segments, {size_mib:.0f} MiB, {OPEN_PRODUCERS:,} producers), "
        f"median [min-max] of {OPEN_RUNS}:"
    )
    for case, values in seconds.items():
        print(
            f"  {case:<27} {statistics.median(values):6.3f} s [{min(values):.3f}-{max(values):.3f}], "
            f"{cases[case][1]:,} batches replayed into the producer state"
        )


def main() -> None:
    print(f"python {sys.version.split()[0]}, {RECORDS_PER_BATCH} records per batch")
    for value_bytes in (100, 1024):
        bench_log(value_bytes, Compression.NONE)
    bench_log(100, Compression.ZSTD)
    for value_bytes in (100, 1024):
        for compression in (Compression.NONE, Compression.LZ4, Compression.ZSTD):
            bench_codec(value_bytes, compression)
    bench_open()


if __name__ == "__main__":
    main()
