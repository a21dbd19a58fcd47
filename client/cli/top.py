"""``shoal top``: a live terminal view of share groups and cluster health.

What a frame shows
* The cluster: id, active controller, Raft term and commit index, brokers,
  under-replicated and offline partitions (DescribeCluster).
* Per node: its address, whether it is fenced, how many partitions it leads
  (user topics and internal ones), how many replicas it hosts, and how many of
  the partitions it leads are under-replicated.
* Per share group (ListGroups, DescribeGroups) and share partition
  (DescribeSharePartitions, read from the partition leaders): the leader, the
  start and end offsets, the high watermark and lag (KIP-1226), the members
  assigned, and the in-flight window drawn as coloured cells — available
  (blue), acquired (yellow), acknowledged (green), archived (red); a cell
  covers several offsets when the window is wider than the bar, and shows the
  "most active" state among them (acquired > available > archived >
  acknowledged), so a single held record is never hidden.
* Rates of accept/release/reject per share partition, from the counter
  ``shoal_share_acknowledged_records_total`` on the nodes' /metrics endpoints
  given with ``--metrics`` (rate = counter delta / time between frames).
  Without ``--metrics``, the rate of records completing (the start offset plus
  the delivery-complete count, per second) is shown instead.

Keys: ``q`` quits (stdin is read in cbreak mode, so no Enter is needed).
``--once`` prints one frame without the live screen and exits (for scripts and
the README); it exits 1 when the cluster cannot be reached.
"""

from __future__ import annotations

import contextlib
import select
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client.admin import Admin
from client.errors import ShoalError
from client.types import RecordState

STATE_STYLES: dict[RecordState, tuple[str, str]] = {
    RecordState.AVAILABLE: ("blue", "available"),
    RecordState.ACQUIRED: ("yellow", "acquired"),
    RecordState.ACKNOWLEDGED: ("green", "acknowledged"),
    RecordState.ARCHIVED: ("red", "archived"),
}
#: Which state a cell that covers several offsets shows: the one that most
#: needs attention (a held record, then work still to do).
CELL_PRIORITY = (RecordState.ACQUIRED, RecordState.AVAILABLE, RecordState.ARCHIVED, RecordState.ACKNOWLEDGED)
CELL = "█"
WINDOW_WIDTH = 40
INTERNAL_PREFIX = "__"
ACK_TYPES = ("accept", "release", "reject")


# ---------------------------------------------------------------------- data


@dataclass
class PartitionRow:
    group: str
    topic: str
    partition: int
    leader: int
    start_offset: int
    end_offset: int
    high_watermark: int
    lag: int
    delivery_complete_count: int
    runs: list[tuple[int, int, RecordState]]
    members: int
    error: str | None = None


@dataclass
class Frame:
    taken_at: float
    cluster: Any = None
    groups: list[tuple[str, str, int]] = field(default_factory=list)  # (group, state, members)
    partitions: list[PartitionRow] = field(default_factory=list)
    acknowledged: dict[tuple[str, str, int, str], float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def collect_frame(admin: Admin, metrics_endpoints: list[str], group_filter: set[str], timeout_s: float) -> Frame:
    frame = Frame(taken_at=time.monotonic())
    try:
        frame.cluster = admin.describe_cluster(timeout=timeout_s)
    except ShoalError as exc:
        frame.errors.append(f"DescribeCluster: {exc.name}: {exc.message}")
        return frame
    try:
        listings = admin.list_groups(types=["share"], timeout=timeout_s)
    except ShoalError as exc:
        frame.errors.append(f"ListGroups: {exc.name}: {exc.message}")
        listings = []
    for listing in listings:
        if group_filter and listing.group_id not in group_filter:
            continue
        assigned: dict[tuple[str, int], int] = {}
        members = 0
        try:
            description = admin.describe_share_groups([listing.group_id], timeout=timeout_s)[listing.group_id].result()
            members = len(description.members)
            for member in description.members:
                for tp in member.assignment:
                    assigned[(tp.topic, tp.partition)] = assigned.get((tp.topic, tp.partition), 0) + 1
        except ShoalError as exc:
            frame.errors.append(f"DescribeGroups {listing.group_id}: {exc.name}: {exc.message}")
        frame.groups.append((listing.group_id, listing.state, members))
        try:
            states = admin.describe_share_partitions(listing.group_id, timeout=timeout_s)
        except ShoalError as exc:
            frame.errors.append(f"DescribeSharePartitions {listing.group_id}: {exc.name}: {exc.message}")
            continue
        for state in sorted(states, key=lambda s: (s.topic, s.partition)):
            frame.partitions.append(
                PartitionRow(
                    group=listing.group_id,
                    topic=state.topic,
                    partition=state.partition,
                    leader=state.leader_id,
                    start_offset=state.start_offset,
                    end_offset=state.end_offset,
                    high_watermark=state.high_watermark,
                    lag=state.lag,
                    delivery_complete_count=state.delivery_complete_count,
                    runs=[(r.first_offset, r.last_offset, r.state) for r in state.runs],
                    members=assigned.get((state.topic, state.partition), 0),
                )
            )
    for endpoint in metrics_endpoints:
        try:
            for key, count in scrape_acknowledged(endpoint, timeout_s).items():
                frame.acknowledged[key] = frame.acknowledged.get(key, 0.0) + count
        except OSError as exc:
            frame.errors.append(f"metrics {endpoint}: {exc}")
    return frame


def scrape_acknowledged(endpoint: str, timeout_s: float) -> dict[tuple[str, str, int, str], float]:
    """shoal_share_acknowledged_records_total by (group, topic, partition, type) from one node."""
    from prometheus_client.parser import text_string_to_metric_families

    url = endpoint if "://" in endpoint else f"http://{endpoint}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8", "replace")
    result: dict[tuple[str, str, int, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "shoal_share_acknowledged_records":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "shoal_share_acknowledged_records_total" or "partition" not in labels:
                continue  # a node that counts per node only cannot be split by partition
            key = (labels.get("group", ""), labels.get("topic", ""), int(labels["partition"]), labels.get("type", ""))
            result[key] = result.get(key, 0.0) + sample.value
    return result


# ---------------------------------------------------------------------- drawing


def window_cells(row: PartitionRow, width: int = WINDOW_WIDTH) -> Text:
    """The in-flight window [start, end) as ``width`` coloured cells (fewer when narrower)."""
    span = row.end_offset - row.start_offset
    if span <= 0 or not row.runs:
        return Text("(empty)", style="dim")
    cells = min(width, span)
    per_cell = span / cells
    text = Text()
    runs = sorted(row.runs)
    index = 0
    for cell in range(cells):
        low = row.start_offset + int(cell * per_cell)
        high = max(low, row.start_offset + int((cell + 1) * per_cell) - 1)
        seen: set[RecordState] = set()
        while index < len(runs) and runs[index][1] < low:
            index += 1
        probe = index
        while probe < len(runs) and runs[probe][0] <= high:
            seen.add(runs[probe][2])
            probe += 1
        # Offsets the runs do not cover inside the window are delivery-complete
        # history that the leader no longer tracks per run.
        state = next((s for s in CELL_PRIORITY if s in seen), RecordState.ACKNOWLEDGED)
        text.append(CELL, style=STATE_STYLES[state][0])
    return text


def legend() -> Text:
    text = Text("window: ")
    for state in (RecordState.AVAILABLE, RecordState.ACQUIRED, RecordState.ACKNOWLEDGED, RecordState.ARCHIVED):
        style, name = STATE_STYLES[state]
        text.append(CELL, style=style)
        text.append(f" {name}  ")
    return text


def render(frame: Frame, previous: Frame | None, bootstrap: str, have_metrics: bool) -> Group:
    parts: list[Any] = []
    header = Text(f"shoal top — {bootstrap} — {time.strftime('%H:%M:%S')}   (q quits)", style="bold")
    parts.append(header)
    cluster = frame.cluster
    if cluster is not None:
        controller = f"node {cluster.controller_id}" if cluster.controller_id >= 0 else "NONE"
        health = Text(
            f"cluster {cluster.cluster_id}  controller {controller}  raft term {cluster.raft_term} "
            f"commit {cluster.raft_commit_index}  brokers {sum(1 for b in cluster.brokers if not b.fenced)}/{len(cluster.brokers)} unfenced  "
        )
        health.append(
            f"under-replicated {cluster.under_replicated_partitions}",
            style="bold red" if cluster.under_replicated_partitions else "green",
        )
        health.append("  ")
        health.append(f"offline {cluster.offline_partitions}", style="bold red" if cluster.offline_partitions else "green")
        parts.append(health)
        parts.append(nodes_table(cluster))
    parts.append(share_table(frame, previous, have_metrics))
    parts.append(legend())
    for error in frame.errors:
        parts.append(Text(f"error: {error}", style="red"))
    return Group(*parts)


def nodes_table(cluster: Any) -> Table:
    table = Table(title="nodes", title_justify="left", expand=False)
    for column in ("node", "address", "state", "leads", "leads (internal)", "replicas", "under-replicated led"):
        table.add_column(column, justify="right" if column not in ("address", "state") else "left")
    for broker in cluster.brokers:
        led = [p for p in cluster.partitions if p.leader == broker.node_id]
        user_led = sum(1 for p in led if not p.topic.startswith(INTERNAL_PREFIX))
        hosted = sum(1 for p in cluster.partitions if broker.node_id in p.replicas)
        under = sum(1 for p in led if len(p.isr) < len(p.replicas))
        role = "controller" if broker.node_id == cluster.controller_id else ""
        state = Text("fenced", style="bold red") if broker.fenced else Text(f"alive {role}".strip(), style="green")
        table.add_row(
            str(broker.node_id),
            broker.address,
            state,
            str(user_led),
            str(len(led) - user_led),
            str(hosted),
            Text(str(under), style="bold red" if under else ""),
        )
    return table


def share_table(frame: Frame, previous: Frame | None, have_metrics: bool) -> Table:
    members_by_group = {group: (state, members) for group, state, members in frame.groups}
    title = "share groups: " + (
        ", ".join(f"{g} ({s}, {m} members)" for g, (s, m) in sorted(members_by_group.items())) or "none"
    )
    table = Table(title=title, title_justify="left", expand=False)
    columns = ["group", "partition", "leader", "start", "end", "hw", "lag", "members", "in-flight window"]
    columns += ["accept/s", "release/s", "reject/s"] if have_metrics else ["done/s"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("group", "partition", "in-flight window") else "right")
    elapsed = frame.taken_at - previous.taken_at if previous is not None else 0.0
    old_rows = {(r.group, r.topic, r.partition): r for r in previous.partitions} if previous is not None else {}
    for row in frame.partitions:
        cells: list[Any] = [
            row.group,
            f"{row.topic}-{row.partition}",
            str(row.leader),
            str(row.start_offset),
            str(row.end_offset),
            str(row.high_watermark),
            Text(str(row.lag), style="yellow" if row.lag else "green"),
            str(row.members),
            window_cells(row),
        ]
        if have_metrics:
            for ack_type in ACK_TYPES:
                key = (row.group, row.topic, row.partition, ack_type)
                cells.append(_rate(frame.acknowledged.get(key), previous.acknowledged.get(key) if previous else None, elapsed))
        else:
            old = old_rows.get((row.group, row.topic, row.partition))
            now_done = row.start_offset + row.delivery_complete_count
            old_done = old.start_offset + old.delivery_complete_count if old is not None else None
            cells.append(_rate(float(now_done), None if old_done is None else float(old_done), elapsed))
        table.add_row(*cells)
    return table


def _rate(now: float | None, before: float | None, elapsed_s: float) -> str:
    if now is None or before is None or elapsed_s <= 0:
        return "-"
    # A counter that went down restarted (a node restart or leadership move).
    delta = now - before if now >= before else now
    return f"{delta / elapsed_s:.1f}"


# ---------------------------------------------------------------------- keys


@contextlib.contextmanager
def cbreak_stdin() -> Iterator[bool]:
    """Put a terminal stdin into cbreak mode (keys without Enter); yields whether keys can be read."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_quit(deadline: float, keys: bool) -> bool:
    """Wait until ``deadline`` (monotonic); True as soon as ``q`` is pressed."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if not keys:
            time.sleep(remaining)
            return False
        ready, _, _ = select.select([sys.stdin], [], [], remaining)
        if ready:
            key = sys.stdin.read(1)
            if key in ("q", "Q", "\x03", ""):
                return True


# ---------------------------------------------------------------------- command


@click.command("top")
@click.option("--bootstrap-server", "-b", "bootstrap", default=None, help="host:port[,...] of any nodes (default: the shoal global option).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--group", "groups", multiple=True, help="Only these share groups (repeatable).")
@click.option("--metrics", "metrics_endpoints", multiple=True, metavar="HOST:PORT",
              help="A node's metrics endpoint, for accept/release/reject rates (repeatable).")
@click.pass_context
def top(ctx: click.Context, bootstrap: str | None, interval: float, once: bool, groups: tuple[str, ...], metrics_endpoints: tuple[str, ...]) -> None:
    """Live view of share groups (in-flight windows, lag, rates) and node health."""
    # The shoal group passes its CliContext as obj (global --bootstrap-server).
    bootstrap = bootstrap or getattr(ctx.obj, "bootstrap", None) or "127.0.0.1:19092"
    timeout_s = max(1.0, min(5.0, interval * 2))
    admin = Admin({"bootstrap.servers": bootstrap, "client.id": "shoal-top"})
    endpoints = [e for value in metrics_endpoints for e in value.split(",") if e]
    try:
        if once:
            frame = collect_frame(admin, endpoints, set(groups), timeout_s)
            # Not a terminal (a script, a pipe): wide enough that no column is cut.
            console = Console(highlight=False) if sys.stdout.isatty() else Console(highlight=False, width=160)
            console.print(render(frame, None, bootstrap, bool(endpoints)))
            if frame.cluster is None:
                ctx.exit(1)
            return
        console = Console(highlight=False)
        previous: Frame | None = None
        with cbreak_stdin() as keys, Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                next_at = time.monotonic() + interval
                frame = collect_frame(admin, endpoints, set(groups), timeout_s)
                live.update(render(frame, previous, bootstrap, bool(endpoints)), refresh=True)
                previous = frame
                if wait_for_quit(next_at, keys):
                    return
    finally:
        admin.close()
