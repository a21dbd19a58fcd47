"""The ``shoal`` command line (click + rich); ``main`` is the console-script entry.

It talks to nodes only through the client API. Global options:
``--bootstrap-server`` (env ``SHOAL_BOOTSTRAP``, default 127.0.0.1:19092) and
``--output text|json``. Exit status: 0 ok, 1 the operation failed, 2 usage error.
"""

from __future__ import annotations

import importlib

import click

from client.cli._common import DEFAULT_BOOTSTRAP, CliContext
from client.cli.cluster import cluster, node
from client.cli.data import consume, produce, share_consume
from client.cli.groups import groups, share_groups
from client.cli.topics import topics


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--bootstrap-server", "-b", envvar="SHOAL_BOOTSTRAP", default=DEFAULT_BOOTSTRAP, show_default=True,
              help="host:port[,host:port...] of any nodes (env SHOAL_BOOTSTRAP).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def cli(ctx: click.Context, bootstrap_server: str, output: str) -> None:
    """shoal: a message broker with Kafka share groups (queues) beside consumer groups."""
    ctx.obj = CliContext(bootstrap=bootstrap_server, output=output)


@cli.command("top", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def top(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Live view of the cluster, groups and share partitions (client/cli/top.py)."""
    try:
        module = importlib.import_module("client.cli.top")
    except ModuleNotFoundError as exc:
        if exc.name != "client.cli.top":
            raise
        raise click.ClickException("`shoal top` is not available in this build: client/cli/top.py is missing") from None
    command = getattr(module, "top", None)
    if not isinstance(command, click.Command):
        raise click.ClickException("client/cli/top.py does not define a click command named `top`")
    command.main(list(args), prog_name="shoal top", obj=ctx.obj, standalone_mode=True)


for command in (topics, produce, consume, share_consume, groups, share_groups, cluster, node):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="shoal")


__all__ = ["cli", "main"]
