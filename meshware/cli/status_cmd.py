"""``meshware status``: every live instance and whether it runs the current config."""

from __future__ import annotations

import sys
import time

import click
from rich.table import Table

from meshware.cli.context import CliContext, dump_json, out, pass_ctx, report_errors
from meshware.config.record import ConfigHead
from meshware.config.registry import InstanceStatus, list_instances

_STATE_STYLE = {"SYNCED": "green", "STALE": "yellow", "NACK": "bold red"}


def _snapshot(ctx: CliContext) -> tuple[ConfigHead | None, list[InstanceStatus]]:
    store = ctx.store()
    current = store.head()
    return current, list_instances(store.client, store.keys, current, url=store.url)


def render_status(current: ConfigHead | None, instances: list[InstanceStatus]) -> None:
    if current is None:
        out.print("control plane: no config applied", highlight=False)
    else:
        out.print(
            f"control plane: config v{current.version} (epoch {current.epoch}, {current.action} by {current.actor})",
            highlight=False,
        )
    if not instances:
        out.print("no live instances", highlight=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("SERVICE", "VERSION", "INSTANCE", "ADDRESS", "CONFIG", "STATE", "HEARTBEAT"):
        table.add_column(column, no_wrap=True)
    reasons: dict[str, list[str]] = {}
    for status in instances:
        r = status.record
        style = _STATE_STYLE.get(status.state, "")
        config = f"v{r.config_version}" if r.config_version else "-"
        if r.config_source == "disk":
            config += " (disk)"
        state = f"[{style}]{status.state}[/]"
        if status.reason:
            reasons.setdefault(status.reason, []).append(r.instance)
            state += f" [dim]\\[{list(reasons).index(status.reason) + 1}][/]"
        table.add_row(
            r.service,
            r.version,
            r.instance,
            r.address or "-",
            config,
            state,
            f"{status.heartbeat_age:.1f}s",
        )
    out.print(table)
    for number, (reason, _) in enumerate(reasons.items(), start=1):
        out.print(f"[dim]\\[{number}][/] ", end="")
        out.print(reason, highlight=False, markup=False)


@click.command()
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--wait-synced",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait until every instance is SYNCED; exit 1 if that does not happen in time.",
)
@pass_ctx
@report_errors
def status(ctx: CliContext, fmt: str, wait_synced: float | None) -> None:
    """List live instances: service, version, address, applied config and sync state."""
    current, instances = _snapshot(ctx)
    if wait_synced is not None:
        deadline = time.monotonic() + wait_synced
        while not all(s.state == "SYNCED" for s in instances) and time.monotonic() < deadline:
            time.sleep(0.05)
            current, instances = _snapshot(ctx)
    if fmt == "json":
        click.echo(dump_json([s.to_json() for s in instances]))
    else:
        render_status(current, instances)
    if wait_synced is not None and not all(s.state == "SYNCED" for s in instances):
        pending = sum(1 for s in instances if s.state != "SYNCED")
        click.echo(f"error: {pending} instance(s) not SYNCED after {wait_synced:g}s", err=True)
        sys.exit(1)
