"""The live demo of the KIP-932 talk, against a running shoal cluster.

    python deploy/demo.py --bootstrap 127.0.0.1:19092

1. Create a topic with **two** partitions and start a producer.
2. Start **three share consumers** in one share group: all three receive
   records, so two of them read the same partition — more consumers than
   partitions, which a consumer group cannot do.
3. Start **three classic consumers** in one consumer group: each partition
   goes to exactly one member, so one consumer stays idle.

The screen shows, for each consumer, how many records it received from each
partition, refreshed live with rich.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client import Admin, Consumer, NewTopic, Producer, ShareConsumer  # noqa: E402
from client.errors import ShoalError  # noqa: E402


class Tally:
    """Records received per consumer and partition, shared between threads."""

    def __init__(self, names: list[str]) -> None:
        self.lock = threading.Lock()
        self.counts = {name: Counter() for name in names}
        self.errors: dict[str, str] = {}

    def add(self, name: str, partition: int) -> None:
        with self.lock:
            self.counts[name][partition] += 1

    def table(self, title: str, partitions: int) -> Table:
        table = Table(title=title, title_justify="left", expand=True)
        table.add_column("consumer")
        for p in range(partitions):
            table.add_column(f"partition {p}", justify="right")
        table.add_column("status")
        with self.lock:
            for name, counts in self.counts.items():
                total = sum(counts.values())
                status = "[red]" + self.errors[name] + "[/]" if name in self.errors else (
                    "[green]reading[/]" if total else "[yellow]idle[/]")
                table.add_row(name, *(str(counts.get(p, 0)) for p in range(partitions)), status)
        return table


def produce_forever(bootstrap: str, topic: str, stop: threading.Event, sent: list[int]) -> None:
    with Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 256}) as producer:
        i = 0
        while not stop.is_set():
            # Keyed records land on both partitions (murmur2 of the key).
            producer.send(topic, f"order-{i}", key=f"customer-{i % 17}")
            i += 1
            sent[0] = i
            time.sleep(0.01)


def share_member(bootstrap: str, group: str, topic: str, name: str, tally: Tally, stop: threading.Event) -> None:
    try:
        with ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                            "max.poll.records": 5, "share.acquire.mode": "record_limit"}) as consumer:
            consumer.subscribe([topic])
            while not stop.is_set():
                for record in consumer.poll(0.2):
                    tally.add(name, record.partition)
                    time.sleep(0.02)  # "processing": slow workers are why queues exist
    except ShoalError as exc:
        tally.errors[name] = exc.name


def classic_member(bootstrap: str, group: str, topic: str, name: str, tally: Tally, stop: threading.Event) -> None:
    try:
        with Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                       "auto.offset.reset": "latest"}) as consumer:
            consumer.subscribe([topic])
            while not stop.is_set():
                for record in consumer.poll(0.2):
                    tally.add(name, record.partition)
    except ShoalError as exc:
        tally.errors[name] = exc.name


def run_phase(console: Console, title: str, tally: Tally, threads: list[threading.Thread], seconds: float,
              partitions: int, sent: list[int], stagger_s: float) -> None:
    with Live(console=console, refresh_per_second=4) as live:
        started = time.monotonic()
        for thread in threads:
            thread.start()
            deadline = time.monotonic() + stagger_s
            while time.monotonic() < deadline:
                live.update(Group(tally.table(title, partitions), f"produced: {sent[0]}"))
                time.sleep(0.25)
        while time.monotonic() - started < seconds:
            live.update(Group(tally.table(title, partitions), f"produced: {sent[0]}"))
            time.sleep(0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="host:port of any node")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long each phase runs")
    args = parser.parse_args()
    console = Console()
    suffix = uuid.uuid4().hex[:6]
    topic, share_group, classic_group = f"demo-orders-{suffix}", f"demo-workers-{suffix}", f"demo-classic-{suffix}"

    try:
        with Admin({"bootstrap.servers": args.bootstrap, "request.timeout.ms": 10000}) as admin:
            admin.create_topics([NewTopic(topic, 2)])[topic].result()
            # A new share group starts at the latest offset; this demo starts
            # its members before producing, so the default is what we want.
    except ShoalError as exc:
        console.print(f"[red]cannot set up the demo[/]: {exc}")
        return 1
    console.print(Panel(f"topic [bold]{topic}[/] with [bold]2[/] partitions; a producer sends keyed orders",
                        title="queues for Kafka: the demo"))

    stop_producer = threading.Event()
    sent = [0]
    producer = threading.Thread(target=produce_forever, args=(args.bootstrap, topic, stop_producer, sent), daemon=True)
    producer.start()

    names = [f"share consumer {i}" for i in (1, 2, 3)]
    tally = Tally(names)
    stop = threading.Event()
    threads = [threading.Thread(target=share_member, args=(args.bootstrap, share_group, topic, n, tally, stop), daemon=True)
               for n in names]
    run_phase(console, f"share group {share_group}: 3 consumers, 2 partitions", tally, threads, args.seconds, 2, sent, 1.0)
    stop.set()
    for thread in threads:
        thread.join(10)
    console.print()
    readers = [n for n, c in tally.counts.items() if sum(c.values())]
    console.print(f"[bold green]{len(readers)} of 3 share consumers received records[/] — "
                  "partitions are shared, so consumers can outnumber partitions.\n")

    names = [f"classic consumer {i}" for i in (1, 2, 3)]
    tally = Tally(names)
    stop = threading.Event()
    threads = [threading.Thread(target=classic_member, args=(args.bootstrap, classic_group, topic, n, tally, stop), daemon=True)
               for n in names]
    run_phase(console, f"consumer group {classic_group}: 3 consumers, 2 partitions", tally, threads, args.seconds, 2, sent, 2.0)
    stop.set()
    for thread in threads:
        thread.join(10)
    console.print()
    idle = [n for n, c in tally.counts.items() if not sum(c.values())]
    console.print(f"[bold yellow]{len(idle)} classic consumer(s) idle[/] ({', '.join(idle) or 'none'}) — "
                  "in a consumer group each partition has exactly one reader.")
    stop_producer.set()
    producer.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
