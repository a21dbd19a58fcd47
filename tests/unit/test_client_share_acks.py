"""ShareConsumer bookkeeping without a cluster: acknowledgement modes, acquired ranges, bad records.

The records are real record batches built with proto.batch; the ShareConsumer
is a real instance whose fetch-response handling is fed a ShareFetch
partition response as the node would send it.
"""

from __future__ import annotations

import pytest

from client.errors import CorruptRecordError, IllegalStateError, RecordDeserializationError
from client.share_consumer import AcknowledgementBook, ShareConsumer
from client.types import AcknowledgeType, TopicPartition
from proto import batch as batch_codec
from proto import shoal_pb2

TP = TopicPartition("jobs", 0)
ACCEPT, RELEASE, REJECT, RENEW, GAP = (AcknowledgeType.ACCEPT, AcknowledgeType.RELEASE, AcknowledgeType.REJECT,
                                       AcknowledgeType.RENEW, AcknowledgeType.GAP)


def test_implicit_mode_accepts_the_previous_poll() -> None:
    book = AcknowledgementBook(explicit=False)
    for offset in range(3):
        book.on_delivered(1, TP, offset)
    with pytest.raises(IllegalStateError, match="explicit"):
        book.acknowledge(TP, 0, REJECT)
    book.check_can_poll()  # implicit mode never blocks a poll
    assert book.finalize() == []
    assert book.take_pending() == {1: {TP: {0: ACCEPT, 1: ACCEPT, 2: ACCEPT}}}
    assert not book.delivered and not book.has_pending()


def test_explicit_mode_requires_every_record_acknowledged() -> None:
    book = AcknowledgementBook(explicit=True)
    for offset in (10, 11, 12):
        book.on_delivered(2, TP, offset)
    book.acknowledge(TP, 10, ACCEPT)
    book.acknowledge(TP, 11, REJECT)
    with pytest.raises(IllegalStateError, match="offset 12"):
        book.check_can_poll()
    # What is acknowledged can be committed already; the rest stays delivered.
    book.finalize()
    assert book.take_pending() == {2: {TP: {10: ACCEPT, 11: REJECT}}}
    assert book.unacknowledged() == [(TP, 12)]
    book.acknowledge(TP, 12, RELEASE)
    book.check_can_poll()
    book.finalize()
    assert book.take_pending() == {2: {TP: {12: RELEASE}}}


def test_explicit_mode_refuses_unknown_records_and_gap() -> None:
    book = AcknowledgementBook(explicit=True)
    book.on_delivered(1, TP, 5)
    with pytest.raises(IllegalStateError, match="not awaiting"):
        book.acknowledge(TP, 6, ACCEPT)
    with pytest.raises(ValueError):
        book.acknowledge(TP, 5, GAP)
    book.acknowledge(TP, 5, ACCEPT)
    book.acknowledge(TP, 5, RELEASE)  # the last decision before sending wins, as in Kafka
    book.finalize()
    assert book.take_pending() == {1: {TP: {5: RELEASE}}}
    with pytest.raises(IllegalStateError):
        book.acknowledge(TP, 5, ACCEPT)  # already sent: no longer awaiting acknowledgement


def test_renew_is_sent_and_reported_for_redelivery() -> None:
    book = AcknowledgementBook(explicit=True)
    book.on_delivered(3, TP, 7)
    book.on_delivered(3, TP, 8)
    book.acknowledge(TP, 7, RENEW)
    book.acknowledge(TP, 8, ACCEPT)
    assert book.finalize() == [(3, TP, 7)]
    assert book.take_pending() == {3: {TP: {7: RENEW, 8: ACCEPT}}}


def test_acknowledgements_are_keyed_by_the_acquiring_node() -> None:
    book = AcknowledgementBook(explicit=False)
    other = TopicPartition("jobs", 1)
    book.on_delivered(1, TP, 0)
    book.on_delivered(2, other, 0)
    book.add_automatic(2, other, 1, GAP)
    book.finalize()
    assert book.take_pending(2) == {2: {other: {0: ACCEPT, 1: GAP}}}
    assert book.take_pending() == {1: {TP: {0: ACCEPT}}}


def test_to_batches_merges_runs_of_one_type() -> None:
    acks = {0: ACCEPT, 1: ACCEPT, 2: ACCEPT, 3: REJECT, 5: ACCEPT, 6: GAP, 7: GAP}
    assert AcknowledgementBook.to_batches(acks) == [(0, 2, [1]), (3, 3, [3]), (5, 5, [1]), (6, 7, [0])]


# ---------------------------------------------------------------- acquired ranges


def _batch(base_offset: int, values: list[bytes]) -> bytes:
    built = batch_codec.build_batch([(None, v, [], 1_700_000_000_000 + i) for i, v in enumerate(values)])
    return batch_codec.stamp(bytearray(built), base_offset, 0)


def _response(records: bytes, ranges: list[tuple[int, int, int]]) -> shoal_pb2.ShareFetchPartitionData:
    return shoal_pb2.ShareFetchPartitionData(
        topic=TP.topic, partition=TP.partition, records=records,
        acquired_records=[shoal_pb2.AcquiredRecords(first_offset=f, last_offset=l, delivery_count=c) for f, l, c in ranges],
    )


@pytest.fixture
def consumer():
    instance = ShareConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "share.acknowledgement.mode": "explicit",
                              "value.deserializer": lambda b: b.decode("ascii")})
    yield instance
    instance.close()


def test_only_acquired_offsets_are_returned_with_their_delivery_count(consumer: ShareConsumer) -> None:
    records = _batch(0, [b"a", b"b", b"c", b"d", b"e"])
    items = consumer._acquired_records(1, TP, _response(records, [(1, 2, 1), (4, 4, 3)]))
    got = [(r.offset, r.value, r.delivery_count) for _, r in items]
    assert got == [(1, "b", 1), (2, "c", 1), (4, "e", 3)]
    assert not consumer._book.has_pending()


def test_acquired_offsets_without_records_become_gap(consumer: ShareConsumer) -> None:
    # Offsets 3-4 hold no record (a compaction hole or control records).
    records = _batch(0, [b"a", b"b", b"c"]) + _batch(5, [b"f"])
    items = consumer._acquired_records(1, TP, _response(records, [(0, 5, 1)]))
    assert [r.offset for _, r in items] == [0, 1, 2, 5]
    assert consumer._book.take_pending() == {1: {TP: {3: GAP, 4: GAP}}}


def test_corrupt_batch_is_rejected_and_raised_after_good_records(consumer: ShareConsumer) -> None:
    good = _batch(0, [b"a", b"b"])
    bad = bytearray(_batch(2, [b"c", b"d"]))
    bad[-1] ^= 0xFF  # flip a bit in the last record: the CRC no longer matches
    items = consumer._acquired_records(1, TP, _response(good + bytes(bad), [(0, 3, 1)]))
    assert [r.offset for _, r in items[:2]] == [0, 1]
    assert isinstance(items[2], CorruptRecordError)
    assert consumer._book.take_pending() == {1: {TP: {2: REJECT, 3: REJECT}}}
    consumer._buffer.extend(items)
    assert [r.offset for r in consumer._drain_buffer()] == [0, 1]
    with pytest.raises(CorruptRecordError, match="CRC"):
        consumer._drain_buffer()


def test_deserialization_failure_releases_the_record_and_the_rest(consumer: ShareConsumer) -> None:
    records = _batch(0, [b"ok", b"\xff\xfe", b"later"])
    consumer._buffer.extend(consumer._acquired_records(1, TP, _response(records, [(0, 2, 2)])))
    first = consumer._drain_buffer()
    assert [r.value for r in first] == ["ok"]
    with pytest.raises(RecordDeserializationError) as info:
        consumer._drain_buffer()
    assert (info.value.topic, info.value.partition, info.value.offset) == ("jobs", 0, 1)
    assert "released" in info.value.message
    # Records after the bad one were released straight away; the bad one is
    # released on the next poll unless the application decides otherwise.
    assert consumer._book.take_pending() == {1: {TP: {2: RELEASE}}}
    consumer.acknowledge(first[0])
    consumer.acknowledge_offset("jobs", 0, 1, REJECT)
    consumer._book.check_can_poll()
    consumer._book.finalize()
    assert consumer._book.take_pending() == {1: {TP: {0: ACCEPT, 1: REJECT}}}


def test_poll_limit_buffers_the_rest(consumer: ShareConsumer) -> None:
    consumer._cfg._values["max.poll.records"] = 2
    records = _batch(0, [b"a", b"b", b"c"])
    consumer._buffer.extend(consumer._acquired_records(1, TP, _response(records, [(0, 2, 1)])))
    returned = consumer._drain_buffer()
    assert [r.offset for r in returned] == [0, 1]
    assert consumer._book.unacknowledged() == [(TP, 0), (TP, 1)]
    for record in returned:
        consumer.acknowledge(record)
    consumer._prepare_acknowledgements()
    assert [r.offset for r in consumer._drain_buffer()] == [2]
    assert consumer._book.take_pending() == {1: {TP: {0: ACCEPT, 1: ACCEPT}}}


def test_renewed_record_is_returned_again(consumer: ShareConsumer) -> None:
    records = _batch(0, [b"a", b"b"])
    consumer._buffer.extend(consumer._acquired_records(1, TP, _response(records, [(0, 1, 1)])))
    first, second = consumer._drain_buffer()
    consumer.acknowledge(first, RENEW)
    consumer.acknowledge(second)
    consumer._prepare_acknowledgements()
    again = consumer._drain_buffer()
    assert [r.offset for r in again] == [0]
    assert consumer._book.take_pending() == {1: {TP: {0: RENEW, 1: ACCEPT}}}


def test_record_limit_budget_is_strict_across_nodes_and_rotates() -> None:
    from client import ShareConsumer

    consumer = ShareConsumer({
        "bootstrap.servers": "127.0.0.1:1", "group.id": "g",
        "share.acquire.mode": "record_limit", "max.poll.records": 5,
    })
    try:
        seen_remainder = set()
        for _ in range(3):
            budgets = consumer._record_budgets([1, 2, 3])
            assert sum(budgets.values()) == 5  # never more than max.poll.records per poll
            seen_remainder.update(node for node, n in budgets.items() if n == 2)
        assert seen_remainder == {1, 2, 3}  # the remainder rotates, no node starves
        tiny = ShareConsumer({
            "bootstrap.servers": "127.0.0.1:1", "group.id": "g",
            "share.acquire.mode": "record_limit", "max.poll.records": 1,
        })
        assert sum(tiny._record_budgets([1, 2, 3]).values()) == 1
        tiny.close()
    finally:
        consumer.close()


def test_batch_optimized_budget_is_the_soft_limit_per_node() -> None:
    from client import ShareConsumer

    consumer = ShareConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "max.poll.records": 5})
    try:
        assert consumer._record_budgets([1, 2]) == {1: 5, 2: 5}
    finally:
        consumer.close()


def test_decoded_record_equals_the_dataclass_constructor() -> None:
    from client.types import ConsumerRecord

    args = ("jobs", 0, 7, 1_700_000_000_000, b"k", "v", [("h", b"1")], 2, 3, 1, "LogAppendTime")
    fast, slow = ConsumerRecord._decoded(*args), ConsumerRecord(*args)
    assert fast == slow and repr(fast) == repr(slow) and fast.to_dict() == slow.to_dict()
    with pytest.raises(Exception):
        fast.offset = 8  # still frozen


def test_acknowledge_with_a_plain_tuple_keeps_the_topic_partition_key() -> None:
    book = AcknowledgementBook(explicit=True)
    book.on_delivered(1, TP, 0)
    book.acknowledge((TP.topic, TP.partition), 0, ACCEPT)
    assert book.finalize() == []
    (tp,) = book.take_pending()[1]
    assert type(tp) is TopicPartition and tp == TP
    with pytest.raises(IllegalStateError, match="of jobs-0 is not awaiting"):
        book.acknowledge((TP.topic, TP.partition), 1, ACCEPT)
