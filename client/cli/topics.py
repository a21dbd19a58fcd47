"""``shoal topics create|list|describe|delete|alter``."""

from __future__ import annotations

import click
from rich.table import Table

from client.admin import Admin
from client.cli._common import CliContext, handle_errors, parse_pairs, pass_ctx
from client.errors import ShoalError
from client.types import NewTopic, TopicDescription


@click.group("topics")
def topics() -> None:
    """Create, list, describe, alter and delete topics."""


def _partition_table(description: TopicDescription) -> Table:
    table = Table(title=f"{description.name}  (id {description.topic_id})", title_justify="left")
    for column in ("partition", "leader", "epoch", "replicas", "isr", "log start", "high watermark"):
        table.add_column(column, justify="right" if column not in ("replicas", "isr") else "left")
    for p in description.partitions:
        leader = str(p.leader) if p.leader >= 0 else "[red]offline[/]"
        isr = ",".join(map(str, p.isr))
        if len(p.isr) < len(p.replicas):
            isr = f"[yellow]{isr}[/]"
        table.add_row(
            str(p.partition), leader, str(p.leader_epoch), ",".join(map(str, p.replicas)), isr,
            str(p.log_start_offset), str(p.high_watermark),
        )
    return table


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), default=None, help="Number of partitions (broker default if omitted).")
@click.option("--replication-factor", type=click.IntRange(min=1), default=None, help="Replicas per partition (broker default if omitted).")
@click.option("--config", "configs", multiple=True, metavar="K=V", help="Topic config, repeatable (retention.ms=...).")
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic already exists.")
@pass_ctx
@handle_errors
def create(ctx: CliContext, name: str, partitions: int | None, replication_factor: int | None, configs: tuple[str, ...], if_not_exists: bool) -> None:
    """Create topic NAME."""
    config = parse_pairs(configs, "--config")
    with Admin(ctx.client_config()) as admin:
        future = admin.create_topics([NewTopic(name, partitions or -1, replication_factor or -1, config)])[name]
        try:
            future.result()
            created = True
        except ShoalError as exc:
            if not (if_not_exists and exc.code == 36):
                raise
            created = False
    if ctx.json:
        ctx.emit_json({"topic": name, "created": created})
    else:
        ctx.console.print(f"Created topic {name}." if created else f"Topic {name} already exists.")


@topics.command("list")
@click.option("--internal", is_flag=True, help="Include internal topics (__consumer_offsets, __share_group_state).")
@pass_ctx
@handle_errors
def list_(ctx: CliContext, internal: bool) -> None:
    """List topics."""
    with Admin(ctx.client_config()) as admin:
        listing = admin.list_topics(include_internal=internal)
    if ctx.json:
        ctx.emit_json([{"name": t.name, "partitions": len(t.partitions), "internal": t.internal} for t in listing.values()])
        return
    table = Table()
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("replication", justify="right")
    for t in listing.values():
        rf = max((len(p.replicas) for p in t.partitions), default=0)
        table.add_row(t.name + (" [dim](internal)[/]" if t.internal else ""), str(len(t.partitions)), str(rf))
    ctx.console.print(table)


@topics.command("describe")
@click.argument("names", nargs=-1)
@pass_ctx
@handle_errors
def describe(ctx: CliContext, names: tuple[str, ...]) -> None:
    """Describe topics (all when no NAME is given)."""
    with Admin(ctx.client_config()) as admin:
        if names:
            descriptions = [future.result() for future in admin.describe_topics(list(names)).values()]
        else:
            descriptions = list(admin.list_topics().values())
    if ctx.json:
        ctx.emit_json([d.to_dict() for d in descriptions])
        return
    for d in descriptions:
        ctx.console.print(_partition_table(d))
        if d.configs:
            ctx.console.print("  configs: " + ", ".join(f"{k}={v}" for k, v in sorted(d.configs.items())))


@topics.command("delete")
@click.argument("names", nargs=-1, required=True)
@pass_ctx
@handle_errors
def delete(ctx: CliContext, names: tuple[str, ...]) -> None:
    """Delete topics."""
    with Admin(ctx.client_config()) as admin:
        futures = admin.delete_topics(list(names))
    results = {}
    failure: ShoalError | None = None
    for name, future in futures.items():
        try:
            future.result()
            results[name] = None
        except ShoalError as exc:
            results[name] = exc.to_dict()
            failure = failure or exc
    if ctx.json:
        ctx.emit_json(results)
        if failure:
            raise SystemExit(1)
        return
    for name, error in results.items():
        if error is None:
            ctx.console.print(f"Deleted topic {name}.")
    if failure:
        raise failure


@topics.command("alter")
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="K=V", help="Config to set, repeatable.")
@click.option("--delete", "deletes", multiple=True, metavar="K", help="Config to reset to its default, repeatable.")
@pass_ctx
@handle_errors
def alter(ctx: CliContext, name: str, sets: tuple[str, ...], deletes: tuple[str, ...]) -> None:
    """Change topic configs."""
    if not sets and not deletes:
        raise click.UsageError("give at least one --set K=V or --delete K")
    with Admin(ctx.client_config()) as admin:
        admin.alter_topic_configs(name, set=parse_pairs(sets, "--set"), delete=list(deletes))
        description = admin.describe_topics([name])[name].result()
    if ctx.json:
        ctx.emit_json({"topic": name, "configs": description.configs})
    else:
        ctx.console.print(f"Altered topic {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(description.configs.items())))
