"""shoal's Python client: Producer, Consumer, ShareConsumer and Admin.

Kafka's concepts and config names, written the Python way::

    from client import Producer, ShareConsumer, AcknowledgeType

    with Producer({"bootstrap.servers": "127.0.0.1:19092"}) as producer:
        producer.send("jobs", b"resize photo 7").result()

    with ShareConsumer({"bootstrap.servers": "127.0.0.1:19092", "group.id": "workers"}) as consumer:
        consumer.subscribe(["jobs"])
        records = consumer.poll(1.0)

The client talks to nodes only over gRPC (``proto/shoal.proto``). Every error
is a :class:`client.errors.ShoalError` subclass named after a Kafka error code.
"""

from client.admin import Admin
from client.consumer import Consumer
from client.errors import (
    ConfigError,
    CorruptRecordError,
    IllegalStateError,
    KafkaTimeoutError,
    RecordDeserializationError,
    ShoalError,
    WakeupError,
)
from client.producer import Producer, RecordFuture
from client.share_consumer import ShareConsumer
from client.types import (
    AcknowledgeType,
    ConsumerRecord,
    NewTopic,
    OffsetSpec,
    RecordMetadata,
    RecordState,
    SharePartitionOffsetInfo,
    TopicPartition,
)

__all__ = [
    "AcknowledgeType",
    "Admin",
    "ConfigError",
    "Consumer",
    "ConsumerRecord",
    "CorruptRecordError",
    "IllegalStateError",
    "KafkaTimeoutError",
    "NewTopic",
    "OffsetSpec",
    "Producer",
    "RecordDeserializationError",
    "RecordFuture",
    "RecordMetadata",
    "RecordState",
    "ShareConsumer",
    "SharePartitionOffsetInfo",
    "ShoalError",
    "TopicPartition",
    "WakeupError",
]
