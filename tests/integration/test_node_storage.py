"""A node whose disk refuses writes: KAFKA_STORAGE_ERROR, and nothing stored is damaged.

The node runs with RLIMIT_FSIZE (tests/harness.py), so a partition log
segment cannot grow past the limit: the append fails with EFBIG as it would on
a full disk. Small files (raft journal, checkpoints, indexes) stay far below.
"""

from __future__ import annotations

import pytest

from proto import shoal_pb2
from tests.harness import Cluster, make_batch, produce, read_all, start_cluster

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("single-node")]

LIMIT_BYTES = 2 << 20


def test_full_disk_is_a_typed_error_and_keeps_stored_data(tmp_path) -> None:
    cluster = start_cluster(1, tmp_path, wait=False)
    try:
        cluster.kill(1)
        cluster.nodes[1].file_size_limit_bytes = LIMIT_BYTES
        cluster.start_node(1)
        cluster.wait_ready()
        cluster.create_topic("full", configs={"segment.bytes": str(64 << 20)})
        stub = cluster.broker(1)
        chunk = [bytes([i % 251]) * 1000 for i in range(200)]  # ~200 KB per batch
        accepted = 0
        error = None
        for _ in range(40):
            result = produce(stub, "full", 0, make_batch(chunk))
            if result.error_code != shoal_pb2.NONE:
                error = result
                break
            accepted += 1
        assert error is not None, "the segment grew past RLIMIT_FSIZE without an error"
        assert shoal_pb2.ErrorCode.Name(error.error_code) == "KAFKA_STORAGE_ERROR", error.error_message
        assert accepted >= 5
        # Everything acknowledged before the failure is intact and readable;
        # the failed append left no partial batch behind.
        values = [v for _, v in read_all(stub, "full", 0)]
        assert len(values) == accepted * len(chunk)
        # The node still serves other partitions and requests.
        cluster.create_topic("still-alive")
        assert produce(stub, "still-alive", 0, make_batch([b"ok"])).error_code == shoal_pb2.NONE
    finally:
        cluster.close()
