"""`metrics.port` on a client serves its metrics over HTTP in Prometheus form."""

from __future__ import annotations

import socket
import urllib.request

from client import Producer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_producer_serves_its_metrics_on_metrics_port() -> None:
    port = free_port()
    # No broker is needed to construct a producer; its counters start at zero.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "metrics.port": port})
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "shoal_producer_" in body
    finally:
        producer.close(timeout=1)
    # Closing the producer stops its exporter.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_record_future_reads_its_offset_from_the_shared_batch_future() -> None:
    from concurrent.futures import Future

    from client.producer import RecordFuture
    from client.types import TopicPartition

    batch: Future[tuple[int, int]] = Future()
    tp = TopicPartition("t", 0)
    futures = [RecordFuture(batch, tp, index, 1000 + index) for index in range(3)]
    seen: list[int] = []
    futures[2].add_done_callback(lambda f: seen.append(f.result().offset))
    assert not any(f.done() for f in futures)
    batch.set_result((40, -1))
    assert [f.result().offset for f in futures] == [40, 41, 42]
    assert futures[1].result().timestamp_ms == 1001
    assert seen == [42]
