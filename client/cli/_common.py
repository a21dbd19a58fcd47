"""Shared plumbing of the ``shoal`` command line: context, output, errors, exit codes.

Exit status: 0 success, 1 the operation failed (the cluster refused or could
not be reached — a typed error is printed), 2 usage error (bad flags or
values, reported by click or by a ConfigError). ``--output json`` prints one
JSON document (or one JSON object per line for streams) on stdout, and errors
as ``{"error": NAME, "code": N, "message": ..., "retriable": ...}``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from rich.console import Console

from client.errors import ConfigError, ShoalError

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    bootstrap: str
    output: str  # "text" or "json"
    console: Console = field(default_factory=lambda: Console(highlight=False))
    err_console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @property
    def json(self) -> bool:
        return self.output == "json"

    def client_config(self, **extra: Any) -> dict[str, Any]:
        # 10 s rather than 30 s: a person at a terminal should not wait half a
        # minute to learn that nothing listens at the bootstrap address.
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "client.id": "shoal-cli", "request.timeout.ms": 10000}
        config.update(extra)
        return config

    def require_topic(self, topic: str) -> None:
        """Raise UnknownTopicOrPartitionError at once if ``topic`` does not exist.

        The clients wait for a topic to appear (a producer up to max.block.ms, a
        consumer forever, as in Kafka); at a terminal a typo should fail fast.
        """
        from client.admin import Admin

        with Admin(self.client_config()) as admin:
            admin.describe_topics([topic])[topic].result()

    def emit_json(self, data: Any) -> None:
        click.echo(json.dumps(data, default=_json_default, sort_keys=False))


def _json_default(obj: Any) -> Any:
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return str(obj)


pass_ctx = click.make_pass_decorator(CliContext)


def report_error(ctx: CliContext, exc: ShoalError) -> None:
    if ctx.json:
        ctx.emit_json(exc.to_dict())
    else:
        ctx.err_console.print(f"[bold red]error[/]: {exc.name}: {exc.message}", soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn typed errors into a printed message and the right exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(CliContext)
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            if ctx is not None:
                report_error(ctx, exc)
            sys.exit(2)
        except ShoalError as exc:
            if ctx is not None:
                report_error(ctx, exc)
            else:
                click.echo(str(exc), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def parse_pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``k=v`` options into a dict; a malformed one is a usage error."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint=option)
        out[key.strip()] = value
    return out


def display(value: Any) -> str:
    """Bytes as text where possible (the console tools print values, not reprs)."""
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)
