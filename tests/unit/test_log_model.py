"""Model test: PartitionLog against a list of batches.

Hypothesis drives appends (leader and follower, with offset holes), reads with
random bounds, truncation, rolls, retention by size, DeleteRecords, clean
reopens and crash reopens (no close, no flush), and checks after every step
that the log serves exactly the model's batches, that the log start offset
never moves back, and that reads return whole batches.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.log import LogConfig, OffsetOutOfRangeError, PartitionLog
from proto.batch import build_batch, iter_batches, stamp


@dataclass
class ModelBatch:
    base_offset: int
    last_offset: int
    size_bytes: int


class PartitionLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._real_fsync = os.fsync
        os.fsync = lambda fd: None  # durability is not what this model checks
        self.directory = Path(tempfile.mkdtemp(prefix="shoal-log-model-"))
        self.config = LogConfig(segment_bytes=700, index_interval_bytes=150, retention_bytes=1500, retention_ms=-1)
        self.log = PartitionLog(self.directory, self.config, 0)
        self.batches: list[ModelBatch] = []
        self.log_start_offset = 0
        self.log_end_offset = 0
        self.epoch = 0

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        os.fsync = self._real_fsync

    def _visible(self) -> list[ModelBatch]:
        return [batch for batch in self.batches if batch.last_offset >= self.log_start_offset]

    @rule(count=st.integers(1, 6), value_bytes=st.integers(0, 80))
    def append_as_leader(self, count, value_bytes):
        data = build_batch([(None, b"v" * value_bytes, (), 1000)] * count)
        info = self.log.append_as_leader(data, self.epoch, 0)
        assert info.first_offset == self.log_end_offset and info.record_count == count
        self.batches.append(ModelBatch(info.first_offset, info.last_offset, len(data)))
        self.log_end_offset = info.last_offset + 1

    @rule(count=st.integers(1, 4), gap=st.integers(0, 5))
    def append_as_follower(self, count, gap):
        base_offset = self.log_end_offset + gap
        data = stamp(build_batch([(b"k", b"x" * 10, (), 1000)] * count), base_offset, self.epoch)
        self.log.append_as_follower(data, 0)
        self.batches.append(ModelBatch(base_offset, base_offset + count - 1, len(data)))
        self.log_end_offset = base_offset + count

    @rule(data=st.data())
    def read(self, data):
        start = data.draw(st.integers(max(0, self.log_start_offset - 2), self.log_end_offset + 2))
        max_bytes = data.draw(st.integers(0, 1200))
        max_offset = data.draw(st.integers(0, self.log_end_offset + 3))
        if not self.log_start_offset <= start <= self.log_end_offset:
            try:
                self.log.read(start, max_bytes, max_offset)
            except OffsetOutOfRangeError:
                return
            raise AssertionError(f"read at {start} outside [{self.log_start_offset}, {self.log_end_offset}]")
        got = [
            (header.base_offset, header.last_offset)
            for _, header in iter_batches(self.log.read(start, max_bytes, max_offset))
        ]
        expected = []
        total = 0
        for batch in self.batches:
            if batch.last_offset < start:
                continue
            if batch.last_offset >= max_offset:
                break
            if expected and total + batch.size_bytes > max_bytes:
                break
            expected.append((batch.base_offset, batch.last_offset))
            total += batch.size_bytes
            if total >= max_bytes:
                break
        assert got == expected, (start, max_bytes, max_offset)

    @rule(data=st.data())
    def truncate_to(self, data):
        offset = data.draw(st.integers(0, self.log_end_offset + 1))
        self.log.truncate_to(offset)
        if offset >= self.log_end_offset:
            return
        if offset <= self.log_start_offset:
            self.batches = []
            self.log_start_offset = self.log_end_offset = offset
        else:
            self.batches = [batch for batch in self.batches if batch.last_offset < offset]
            kept_end = self.batches[-1].last_offset + 1 if self.batches else 0
            # With the last batches gone, the end is that of the last kept
            # batch or, after an offset hole, the base of the segment it ended in.
            assert kept_end <= self.log.log_end_offset <= offset
            self.log_end_offset = self.log.log_end_offset
            self.log_start_offset = min(self.log_start_offset, self.log_end_offset)
        self.epoch += 1

    @rule()
    def roll(self):
        self.log.roll(0)

    @rule()
    def enforce_retention(self):
        self.log.enforce_retention(0)
        new_start = self.log.log_start_offset
        assert new_start >= self.log_start_offset
        if new_start != self.log_start_offset:
            assert new_start == self.log.segment_base_offsets[0]
            self.batches = [batch for batch in self.batches if batch.base_offset >= new_start]
            self.log_start_offset = new_start

    @rule(data=st.data())
    def delete_records_before(self, data):
        offset = data.draw(st.integers(0, self.log_end_offset))
        self.log.delete_records_before(offset)
        self.log_start_offset = max(self.log_start_offset, offset)
        self.batches = [batch for batch in self.batches if batch.last_offset >= self.log_start_offset]

    @rule()
    def reopen(self):
        self.log.close()
        self.log = PartitionLog(self.directory, self.config, 0)

    @precondition(lambda self: self.batches)
    @rule()
    def crash_and_reopen(self):
        # kill -9: the page cache keeps what was written, nothing was flushed
        # or closed; the new instance runs recovery.
        for segment in self.log._segments:
            segment.close()
        self.log = PartitionLog(self.directory, self.config, 0)

    @invariant()
    def matches_model(self):
        assert self.log.log_end_offset == self.log_end_offset
        assert self.log.log_start_offset == self.log_start_offset
        data = self.log.read(self.log_start_offset, 10**9, self.log_end_offset)
        got = [(header.base_offset, header.last_offset) for _, header in iter_batches(data)]
        assert got == [(batch.base_offset, batch.last_offset) for batch in self._visible()]
        assert self.log.size_bytes == sum(segment.size_bytes for segment in self.log._segments)


PartitionLogMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_partition_log_model = PartitionLogMachine.TestCase
