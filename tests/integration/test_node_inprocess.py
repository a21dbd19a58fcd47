"""A node and its gRPC servicers in this process: grpc.aio client against grpc.aio server.

The multi-process suites run real ``python -m node`` processes; this one runs a
single-voter node inside the test's own event loop so that the servicers, the
replica manager and the log are exercised without a process boundary (and a
failure shows its traceback here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from node.broker import Node
from node.config import parse_args
from proto import shoal_pb2, shoal_pb2_grpc
from tests.harness import decode_values, free_port, make_batch


def test_produce_fetch_and_typed_errors_in_process(tmp_path: Path) -> None:
    grpc_port, raft_port = free_port(), free_port()
    config = parse_args([
        "--node-id", "1", "--listen", f"127.0.0.1:{grpc_port}", "--data-dir", str(tmp_path / "node-1"),
        "--controller-quorum", f"1@127.0.0.1:{raft_port}",
    ])

    async def scenario() -> None:
        node = Node(config)
        await node.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = shoal_pb2_grpc.BrokerStub(channel)
                created = await _until(lambda: stub.CreateTopics(shoal_pb2.CreateTopicsRequest(
                    topics=[shoal_pb2.NewTopic(name="inproc", num_partitions=1, replication_factor=1)])),
                    lambda r: r.results[0].error_code in (shoal_pb2.NONE, shoal_pb2.TOPIC_ALREADY_EXISTS))
                assert created.results[0].error_code == shoal_pb2.NONE

                async def produce(batch: bytes) -> shoal_pb2.ProducePartitionResult:
                    response = await stub.Produce(shoal_pb2.ProduceRequest(acks=-1, timeout_ms=5000, partitions=[
                        shoal_pb2.PartitionRecords(topic="inproc", partition=0, records=batch)]))
                    return response.results[0]

                first = await _until(lambda: produce(make_batch([b"a", b"b"])),
                                     lambda r: r.error_code == shoal_pb2.NONE)
                assert first.base_offset == 0
                fetched = await stub.Fetch(shoal_pb2.FetchRequest(max_wait_ms=100, max_bytes=1 << 20, partitions=[
                    shoal_pb2.FetchPartition(topic="inproc", partition=0, fetch_offset=0,
                                             partition_max_bytes=1 << 20, current_leader_epoch=-1)]))
                assert decode_values(fetched.partitions[0].records) == [(0, b"a"), (1, b"b")]

                corrupt = bytearray(make_batch([b"c"]))
                corrupt[-1] ^= 0xFF  # a flipped byte after the CRC field
                refused = await produce(bytes(corrupt))
                assert refused.error_code == shoal_pb2.CORRUPT_MESSAGE
                unknown = await stub.Produce(shoal_pb2.ProduceRequest(acks=1, partitions=[
                    shoal_pb2.PartitionRecords(topic="no-such-topic", partition=0, records=make_batch([b"x"]))]))
                assert unknown.results[0].error_code == shoal_pb2.UNKNOWN_TOPIC_OR_PARTITION
                # The refused batch left nothing behind.
                offsets = await stub.ListOffsets(shoal_pb2.ListOffsetsRequest(partitions=[
                    shoal_pb2.ListOffsetsPartition(topic="inproc", partition=0, timestamp=-1)]))
                assert offsets.results[0].offset == 2
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


async def _until(call, done, timeout_s: float = 20.0):
    """Retry ``call`` until ``done(result)``: a fresh quorum elects itself and places the topic."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            result = await call()
            if done(result) or loop.time() >= deadline:
                return result
        except grpc.aio.AioRpcError:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(0.05)
