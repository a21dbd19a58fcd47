"""``shoal produce``, ``shoal consume`` and ``shoal share-consume``: the console tools."""

from __future__ import annotations

import sys
import time

import click
from rich.progress import Progress, SpinnerColumn, TextColumn

from client.cli._common import CliContext, display, handle_errors, pass_ctx
from client.consumer import Consumer
from client.errors import RecordDeserializationError, ShoalError
from client.producer import Producer, RecordFuture
from client.share_consumer import ShareConsumer
from client.types import AcknowledgeType, ConsumerRecord, RecordMetadata, TopicPartition


@click.command("produce")
@click.argument("topic")
@click.option("--key-separator", default=None, help="Split each line into key and value at the first SEP.")
@click.option("--acks", type=click.Choice(["0", "1", "all", "-1"]), default="all", show_default=True)
@click.option("--partition", type=click.IntRange(min=0), default=None, help="Send every record to this partition.")
@click.option("--compression", type=click.Choice(["none", "zstd", "lz4"]), default="none", show_default=True)
@click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True)
@pass_ctx
@handle_errors
def produce(ctx: CliContext, topic: str, key_separator: str | None, acks: str, partition: int | None, compression: str, linger_ms: int) -> None:
    """Send the lines of stdin to TOPIC, one record per line."""
    ctx.require_topic(topic)
    config = ctx.client_config(
        acks=acks,
        **{"compression.type": compression, "linger.ms": linger_ms, "max.block.ms": 15000},
    )
    if acks != "all" and acks != "-1":
        config["enable.idempotence"] = False
    futures: list[RecordFuture] = []
    show_progress = sys.stderr.isatty() and not ctx.json
    with Producer(config) as producer, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=ctx.err_console, disable=not show_progress, transient=True
    ) as progress:
        task = progress.add_task("sending", total=None)
        for number, line in enumerate(sys.stdin, start=1):
            line = line.rstrip("\n")
            key: str | None = None
            if key_separator is not None:
                key, sep, value = line.partition(key_separator)
                if not sep:
                    raise click.UsageError(f"line {number} has no key separator {key_separator!r}: {line[:60]!r}")
            else:
                value = line
            futures.append(producer.send(topic, value, key=key, partition=partition))
            if number % 1000 == 0:
                progress.update(task, description=f"sent {number} records")
        producer.flush()
    per_partition: dict[int, int] = {}
    failure: ShoalError | None = None
    failed = 0
    for future in futures:
        exc = future.exception()
        if exc is not None:
            failed += 1
            failure = failure or (exc if isinstance(exc, ShoalError) else None)
            continue
        metadata = future.result()
        per_partition[metadata.partition] = per_partition.get(metadata.partition, 0) + 1
    if ctx.json:
        ctx.emit_json({"topic": topic, "records": len(futures) - failed, "failed": failed, "partitions": per_partition})
    else:
        spread = ", ".join(f"p{p}: {n}" for p, n in sorted(per_partition.items()))
        ctx.err_console.print(f"Sent {len(futures) - failed} record(s) to {topic}" + (f" ({spread})" if spread else "") + ".")
    if failure is not None:
        raise failure


def _print_record(ctx: CliContext, record: ConsumerRecord, show_meta: bool) -> None:
    if ctx.json:
        ctx.emit_json(record.to_dict())
    elif show_meta:
        extra = f" delivery={record.delivery_count}" if record.delivery_count is not None else ""
        click.echo(f"{record.topic}-{record.partition}@{record.offset}{extra}\t{display(record.key)}\t{display(record.value)}")
    else:
        click.echo(display(record.value))


@click.command("consume")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest offset (default: only new records).")
@click.option("--partition", type=click.IntRange(min=0), default=None, help="Read only this partition.")
@click.option("--max-records", type=click.IntRange(min=1), default=None, help="Exit after this many records.")
@click.option("--group", default=None, help="Join this consumer group (commits offsets).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Exit after this many seconds without records.")
@click.option("--print-metadata", is_flag=True, help="Print partition, offset and key with each value.")
@pass_ctx
@handle_errors
def consume(ctx: CliContext, topic: str, from_beginning: bool, partition: int | None, max_records: int | None, group: str | None, timeout: float | None, print_metadata: bool) -> None:
    """Print records of TOPIC (values, one per line; JSON objects with --output json)."""
    if group and partition is not None:
        raise click.UsageError("--partition reads a partition directly and cannot be combined with --group")
    config = ctx.client_config(**{"auto.offset.reset": "earliest" if from_beginning else "latest"})
    if group:
        config["group.id"] = group
    received = 0
    with Consumer(config) as consumer:
        if group:
            ctx.require_topic(topic)
            consumer.subscribe([topic])
        else:
            partitions = [partition] if partition is not None else consumer.partitions_for(topic)
            consumer.assign([TopicPartition(topic, p) for p in partitions])
            if from_beginning:
                consumer.seek_to_beginning()
            else:
                consumer.seek_to_end()
        idle_since = time.monotonic()
        try:
            while max_records is None or received < max_records:
                records = consumer.poll(0.5)
                for record in records[: None if max_records is None else max_records - received]:
                    _print_record(ctx, record, print_metadata)
                    received += 1
                if records:
                    idle_since = time.monotonic()
                elif timeout is not None and time.monotonic() - idle_since >= timeout:
                    break
            if group:
                consumer.commit_sync()
        except KeyboardInterrupt:
            pass
    if not ctx.json:
        ctx.err_console.print(f"Processed {received} record(s).")


_ACKS = {"accept": AcknowledgeType.ACCEPT, "release": AcknowledgeType.RELEASE, "reject": AcknowledgeType.REJECT}


@click.command("share-consume")
@click.argument("topic")
@click.option("--group", required=True, help="The share group to join.")
@click.option("--ack", "ack", type=click.Choice(sorted(_ACKS)), default="accept", show_default=True, help="How to acknowledge each record.")
@click.option("--max-records", type=click.IntRange(min=1), default=None, help="Exit after this many records.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Exit after this many seconds without records.")
@click.option("--print-metadata", is_flag=True, help="Print partition, offset, delivery count and key with each value.")
@pass_ctx
@handle_errors
def share_consume(ctx: CliContext, topic: str, group: str, ack: str, max_records: int | None, timeout: float | None, print_metadata: bool) -> None:
    """Consume TOPIC as a member of share group GROUP, acknowledging every record."""
    ctx.require_topic(topic)
    config = ctx.client_config(**{"group.id": group, "share.acknowledgement.mode": "explicit"})
    if max_records is not None:
        config["max.poll.records"] = max_records
        config["share.acquire.mode"] = "record_limit"
    ack_type = _ACKS[ack]
    received = 0
    failures: list[ShoalError] = []
    with ShareConsumer(config) as consumer:
        consumer.subscribe([topic])
        idle_since = time.monotonic()
        try:
            while max_records is None or received < max_records:
                try:
                    records = consumer.poll(0.5)
                except RecordDeserializationError as exc:
                    consumer.acknowledge_offset(exc.topic, exc.partition, exc.offset, AcknowledgeType.REJECT)
                    continue
                for record in records:
                    if max_records is not None and received >= max_records:
                        # Not ours to process: give it back for another member.
                        consumer.acknowledge(record, AcknowledgeType.RELEASE)
                        continue
                    _print_record(ctx, record, print_metadata)
                    consumer.acknowledge(record, ack_type)
                    received += 1
                if records:
                    for tp, error in consumer.commit_sync().items():
                        if error is not None and isinstance(error, ShoalError):
                            failures.append(error)
                            ctx.err_console.print(f"[yellow]acknowledgement for {tp} failed[/]: {error}")
                    idle_since = time.monotonic()
                elif timeout is not None and time.monotonic() - idle_since >= timeout:
                    break
        except KeyboardInterrupt:
            pass
    if not ctx.json:
        ctx.err_console.print(f"Processed {received} record(s) ({ack}).")
    if failures:
        raise failures[0]
