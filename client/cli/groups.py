"""``shoal groups ...`` and ``shoal share-groups ...``: group administration.

``share-groups describe G --state`` draws each share partition's in-flight
window as the KIP-932 talk does: one cell per offset (or one per run of equal
offsets when the window is wide), coloured by state — available, acquired,
acknowledged, archived — with the delivery count in the cell.
"""

from __future__ import annotations

import datetime as dt
import re

import click
from rich.table import Table
from rich.text import Text

from client.admin import Admin
from client.cli._common import CliContext, handle_errors, parse_pairs, pass_ctx
from client.errors import ShoalError
from client.types import OffsetSpec, RecordState, SharePartitionState, TopicPartition

STATE_STYLE = {
    RecordState.AVAILABLE: ("white", "grey23", "available"),
    RecordState.ACQUIRED: ("black", "yellow", "acquired"),
    RecordState.ACKNOWLEDGED: ("black", "green", "acknowledged"),
    RecordState.ARCHIVED: ("white", "red", "archived"),
}
#: Windows wider than this are drawn one cell per run instead of per offset.
MAX_CELLS_PER_OFFSET = 64


@click.group("groups")
def groups() -> None:
    """List groups of every type; read and change group configs."""


@groups.command("list")
@click.option("--type", "types", multiple=True, type=click.Choice(["share", "consumer"]), help="Only groups of this type.")
@click.option("--state", "states", multiple=True, help="Only groups in this state (Empty, Stable, Dead, ...).")
@pass_ctx
@handle_errors
def groups_list(ctx: CliContext, types: tuple[str, ...], states: tuple[str, ...]) -> None:
    """List groups (merged from every broker)."""
    with Admin(ctx.client_config()) as admin:
        listing = admin.list_groups(types=list(types) or None, states=list(states) or None)
    if ctx.json:
        ctx.emit_json([g.to_dict() for g in listing])
        return
    table = Table()
    for column in ("group", "type", "state", "coordinator"):
        table.add_column(column)
    for g in listing:
        table.add_row(g.group_id, g.type, g.state, str(g.coordinator_id))
    ctx.console.print(table)


@groups.command("describe")
@click.argument("group")
@pass_ctx
@handle_errors
def groups_describe(ctx: CliContext, group: str) -> None:
    """Describe consumer group GROUP: members, assignment and committed offsets."""
    from client.consumer import Consumer

    with Admin(ctx.client_config()) as admin:
        description = admin.describe_consumer_groups([group])[group].result()
    assigned = sorted({tp for m in description.members for tp in m.assignment})
    committed: dict[TopicPartition, int | None] = {}
    if assigned:
        with Consumer(ctx.client_config(**{"group.id": group, "enable.auto.commit": False})) as consumer:
            committed = consumer.committed(assigned)
    if ctx.json:
        data = description.to_dict()
        data["committed"] = [{"topic": tp.topic, "partition": tp.partition, "offset": off} for tp, off in committed.items()]
        ctx.emit_json(data)
        return
    ctx.console.print(f"group {group}: [bold]{description.state}[/], epoch {description.group_epoch}, coordinator {description.coordinator_id}")
    table = Table()
    for column in ("member", "client", "host", "epoch", "assignment"):
        table.add_column(column)
    for m in description.members:
        table.add_row(m.member_id, m.client_id, m.host, str(m.member_epoch), ", ".join(str(tp) for tp in m.assignment) or "[dim](idle)[/]")
    ctx.console.print(table)


@groups.command("config")
@click.argument("group")
@click.option("--set", "sets", multiple=True, metavar="K=V", help="Group config to set, repeatable (share.auto.offset.reset=earliest).")
@click.option("--delete", "deletes", multiple=True, metavar="K", help="Group config to reset to its default, repeatable.")
@pass_ctx
@handle_errors
def groups_config(ctx: CliContext, group: str, sets: tuple[str, ...], deletes: tuple[str, ...]) -> None:
    """Show GROUP's configs, after applying --set/--delete if given."""
    changes = parse_pairs(sets, "--set")
    with Admin(ctx.client_config()) as admin:
        if changes or deletes:
            admin.alter_group_configs(group, set=changes, delete=list(deletes))
        entries = admin.describe_group_configs([group])[group].result()
    if ctx.json:
        ctx.emit_json({"group": group, "configs": [e.to_dict() for e in entries]})
        return
    table = Table(title=f"group {group}", title_justify="left")
    table.add_column("config")
    table.add_column("value")
    table.add_column("source")
    for e in entries:
        table.add_row(e.name, e.value, "default" if e.is_default else "[bold]group[/]")
    ctx.console.print(table)


@groups.command("delete")
@click.argument("group_ids", nargs=-1, required=True)
@pass_ctx
@handle_errors
def groups_delete(ctx: CliContext, group_ids: tuple[str, ...]) -> None:
    """Delete groups (consumer or share); a group with members is refused."""
    _delete_groups(ctx, group_ids)


def _delete_groups(ctx: CliContext, group_ids: tuple[str, ...]) -> None:
    with Admin(ctx.client_config()) as admin:
        futures = admin.delete_groups(list(group_ids))
    failure: ShoalError | None = None
    results = {}
    for group_id, future in futures.items():
        try:
            future.result()
            results[group_id] = None
            if not ctx.json:
                ctx.console.print(f"Deleted group {group_id}.")
        except ShoalError as exc:
            results[group_id] = exc.to_dict()
            failure = failure or exc
    if ctx.json:
        ctx.emit_json(results)
        if failure:
            raise SystemExit(1)
    elif failure:
        raise failure


# ---------------------------------------------------------------- share groups


@click.group("share-groups")
def share_groups() -> None:
    """Describe, reset and delete share groups (kafka-share-groups.sh)."""


def render_window(state: SharePartitionState, width: int = MAX_CELLS_PER_OFFSET) -> Text:
    """The in-flight window as coloured cells; the delivery count is written in each cell."""
    text = Text()
    span = sum(r.last_offset - r.first_offset + 1 for r in state.runs)
    per_offset = span <= width
    for run in state.runs:
        fg, bg, _ = STATE_STYLE.get(run.state, ("white", "magenta", "?"))
        style = f"{fg} on {bg}"
        if per_offset:
            for _offset in range(run.first_offset, run.last_offset + 1):
                text.append(f"{run.delivery_count:^3}", style=style)
                text.append(" ")
        else:
            label = f" {run.first_offset}-{run.last_offset} ×{run.delivery_count} "
            if run.first_offset == run.last_offset:
                label = f" {run.first_offset} ×{run.delivery_count} "
            text.append(label, style=style)
            text.append(" ")
    if not state.runs:
        text.append("(empty window)", style="dim")
    return text


def _legend() -> Text:
    legend = Text("legend: ")
    for state in (RecordState.AVAILABLE, RecordState.ACQUIRED, RecordState.ACKNOWLEDGED, RecordState.ARCHIVED):
        fg, bg, name = STATE_STYLE[state]
        legend.append(f" {name} ", style=f"{fg} on {bg}")
        legend.append(" ")
    legend.append(" (number in a cell: delivery count)", style="dim")
    return legend


@share_groups.command("describe")
@click.argument("group")
@click.option("--members", "view", flag_value="members", help="Members and their assignments.")
@click.option("--offsets", "view", flag_value="offsets", default=True, help="Start offset and lag per partition (default).")
@click.option("--state", "view", flag_value="state", help="Group state and each share partition's in-flight window.")
@pass_ctx
@handle_errors
def share_groups_describe(ctx: CliContext, group: str, view: str) -> None:
    """Describe share group GROUP."""
    with Admin(ctx.client_config()) as admin:
        description = admin.describe_share_groups([group])[group].result()
        if view == "members":
            if ctx.json:
                ctx.emit_json(description.to_dict())
                return
            table = Table(title=f"share group {group}: {description.state}", title_justify="left")
            for column in ("member", "client", "host", "epoch", "#partitions", "assignment"):
                table.add_column(column)
            for m in description.members:
                table.add_row(m.member_id, m.client_id, m.host, str(m.member_epoch), str(len(m.assignment)), ", ".join(str(tp) for tp in m.assignment))
            ctx.console.print(table)
        elif view == "offsets":
            offsets = admin.list_share_group_offsets(group)
            if ctx.json:
                ctx.emit_json({"group": group, "offsets": [
                    {"topic": tp.topic, "partition": tp.partition, **info.to_dict()} for tp, info in offsets.items()
                ]})
                return
            table = Table(title=f"share group {group}: {description.state}", title_justify="left")
            for column in ("topic", "partition", "start offset", "leader epoch", "lag"):
                table.add_column(column, justify="left" if column == "topic" else "right")
            for tp, info in offsets.items():
                table.add_row(tp.topic, str(tp.partition), str(info.start_offset),
                              "-" if info.leader_epoch is None else str(info.leader_epoch), "-" if info.lag is None else str(info.lag))
            ctx.console.print(table)
        else:
            states = admin.describe_share_partitions(group)
            if ctx.json:
                ctx.emit_json({"group": group, "state": description.state, "group_epoch": description.group_epoch,
                               "coordinator_id": description.coordinator_id, "members": len(description.members),
                               "partitions": [s.to_dict() for s in states]})
                return
            ctx.console.print(
                f"share group [bold]{group}[/]: {description.state}, {len(description.members)} member(s), "
                f"group epoch {description.group_epoch}, coordinator {description.coordinator_id}"
            )
            for s in states:
                ctx.console.print(
                    Text.assemble(
                        (f"{s.topic}-{s.partition}", "bold"),
                        f"  leader {s.leader_id}  start {s.start_offset}  end {s.end_offset}  hw {s.high_watermark}  lag {s.lag}  ",
                    )
                )
                ctx.console.print(Text("  ") + render_window(s))
            ctx.console.print(_legend())


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration_ms(text: str) -> int:
    """ISO-8601 duration (PnDTnHnMn.nS), as kafka-consumer-groups --by-duration takes."""
    match = _DURATION.match(text.strip().upper())
    if not match or text.strip().upper() in ("P", "PT"):
        raise click.BadParameter(f"{text!r} is not an ISO-8601 duration such as PT1H or P1DT30M", param_hint="--by-duration")
    days, hours, minutes, seconds = match.groups()
    total = int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    return int(total * 1000)


def parse_datetime_ms(text: str) -> int:
    """'YYYY-MM-DDThh:mm:ss.sss' (local time unless an offset is given), as Kafka's tools take."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a datetime such as 2025-12-01T09:30:00.000", param_hint="--to-datetime") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


@share_groups.command("reset-offsets")
@click.argument("group")
@click.option("--to-earliest", "scenario", flag_value="earliest", help="Reset to the log start offset.")
@click.option("--to-latest", "scenario", flag_value="latest", help="Reset to the high watermark.")
@click.option("--to-datetime", default=None, metavar="T", help="Reset to the first record at or after T.")
@click.option("--by-duration", default=None, metavar="D", help="Reset to the first record within duration D (ISO-8601, PT1H).")
@click.option("--topic", "topics", multiple=True, metavar="T[:P,P]", help="Topic (optionally partitions) to reset, repeatable.")
@click.option("--all-topics", is_flag=True, help="Every topic the group has share partitions for.")
@click.option("--dry-run", "mode", flag_value="dry-run", help="Show the new offsets only.")
@click.option("--execute", "mode", flag_value="execute", help="Apply the new offsets (the group must be empty).")
@pass_ctx
@handle_errors
def share_groups_reset(ctx: CliContext, group: str, scenario: str | None, to_datetime: str | None, by_duration: str | None,
                       topics: tuple[str, ...], all_topics: bool, mode: str | None) -> None:
    """Reset share group GROUP's start offsets."""
    scenarios = [s for s in (scenario, to_datetime, by_duration) if s]
    if len(scenarios) != 1:
        raise click.UsageError("give exactly one of --to-earliest, --to-latest, --to-datetime, --by-duration")
    if bool(topics) == all_topics:
        raise click.UsageError("give either --topic or --all-topics")
    if mode is None:
        raise click.UsageError("give --dry-run or --execute")
    if to_datetime:
        spec = parse_datetime_ms(to_datetime)
    elif by_duration:
        spec = max(0, int(dt.datetime.now().timestamp() * 1000) - parse_duration_ms(by_duration))
    else:
        spec = OffsetSpec.EARLIEST if scenario == "earliest" else OffsetSpec.LATEST
    with Admin(ctx.client_config()) as admin:
        current = admin.list_share_group_offsets(group)
        tps: list[TopicPartition] = []
        if all_topics:
            tps = sorted(current)
            if not tps:
                raise click.UsageError(f"share group {group} has no share partitions yet; name topics with --topic")
        else:
            for item in topics:
                name, _, parts = item.partition(":")
                if parts:
                    try:
                        tps += [TopicPartition(name, int(p)) for p in parts.split(",")]
                    except ValueError:
                        raise click.BadParameter(f"{item!r}: partitions must be integers", param_hint="--topic") from None
                else:
                    description = admin.describe_topics([name])[name].result()
                    tps += [TopicPartition(name, p.partition) for p in description.partitions]
        looked_up = admin.list_offsets({tp: spec for tp in tps})
        latest = None
        targets: dict[TopicPartition, int] = {}
        for tp, future in looked_up.items():
            offset = future.result().offset
            if offset < 0:
                # No record that late: the reset lands at the end, as Kafka's tool does.
                latest = latest or admin.list_offsets({t: OffsetSpec.LATEST for t in tps})
                offset = latest[tp].result().offset
            targets[tp] = offset
        if mode == "execute":
            admin.alter_share_group_offsets(group, targets)
    rows = [
        {"topic": tp.topic, "partition": tp.partition,
         "current_start_offset": current[tp].start_offset if tp in current else None, "new_start_offset": off}
        for tp, off in sorted(targets.items())
    ]
    if ctx.json:
        ctx.emit_json({"group": group, "executed": mode == "execute", "offsets": rows})
        return
    table = Table(title=f"share group {group}: {'reset' if mode == 'execute' else 'dry run (nothing changed)'}", title_justify="left")
    for column in ("topic", "partition", "current start offset", "new start offset"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["topic"], str(row["partition"]),
                      "-" if row["current_start_offset"] is None else str(row["current_start_offset"]), str(row["new_start_offset"]))
    ctx.console.print(table)


@share_groups.command("delete")
@click.argument("group_ids", nargs=-1, required=True)
@pass_ctx
@handle_errors
def share_groups_delete(ctx: CliContext, group_ids: tuple[str, ...]) -> None:
    """Delete share groups (refused while they have members)."""
    with Admin(ctx.client_config()) as admin:
        for group_id in group_ids:
            admin.describe_share_groups([group_id])[group_id].result()  # GroupIdNotFoundError if not a share group
    _delete_groups(ctx, group_ids)
