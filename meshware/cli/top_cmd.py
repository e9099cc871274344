"""``meshware top``: live traffic per service and version, from the mesh-wide aggregates.

Like ``linkerd viz stat``: requests per second, success rate and latency percentiles of each
destination service version over the last ``--window``, as its instances reported them
(``--reporter destination``, the default) or as their callers saw them (``source``). Read
from the aggregates every instance flushes to Redis (see
:mod:`meshware.telemetry.aggregates`); no Prometheus needed.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from meshware.cli.context import CliContext, dump_json, out, pass_ctx, report_errors
from meshware.config.connection import translate_errors
from meshware.config.parse.values import parse_duration
from meshware.telemetry.aggregates import ServiceStats, read_stats


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive")
    return seconds


def _stats(
    ctx: CliContext, window: float, namespace: str | None, reporter: str
) -> list[ServiceStats]:
    store = ctx.store()
    now = time.time()
    with translate_errors(store.url):
        found = read_stats(store.client, store.keys, now - window, now=now, reporter=reporter)
    return [s for s in found if namespace is None or s.namespace == namespace]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def _table(stats: list[ServiceStats], window: float) -> Table:
    table = Table(box=None, pad_edge=False, title_justify="left")
    for column in ("NAMESPACE", "SERVICE", "VERSION", "SUCCESS", "RPS", "P50", "P95", "P99"):
        table.add_column(column, no_wrap=True, justify="left" if column.isalpha() else "right")
    for s in stats:
        rate = s.success_rate
        success = "-" if rate is None else f"{rate * 100:.2f}%"
        style = "" if rate is None or rate >= 0.99 else ("yellow" if rate >= 0.95 else "red")
        table.add_row(
            s.namespace,
            s.name,
            s.version,
            f"[{style}]{success}[/]" if style else success,
            f"{s.rps:.1f}",
            _ms(s.quantile(0.50)),
            _ms(s.quantile(0.95)),
            _ms(s.quantile(0.99)),
        )
    if not stats:
        table.caption = f"no traffic recorded in the last {window:g}s"
    return table


def _json(stats: list[ServiceStats], window: float, reporter: str) -> str:
    document: dict[str, Any] = {
        "window_seconds": window,
        "reporter": reporter,
        "at": time.time(),
        "services": [s.to_json() for s in stats],
    }
    return dump_json(document)


@click.command()
@click.option("-n", "--namespace", default=None, help="Only services of this namespace.")
@click.option(
    "--window",
    default="30s",
    show_default=True,
    callback=_duration,
    help="How far back to aggregate (aggregates are kept in 5 s windows for 15 min).",
)
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option("--once", is_flag=True, help="Print once and exit (implied by -o json).")
@click.option(
    "--interval",
    default=None,
    callback=_duration,
    help="Refresh period  [default: 2s; with -o json, print every INTERVAL instead of once]",
)
@click.option(
    "--reporter",
    type=click.Choice(["destination", "source"]),
    default="destination",
    show_default=True,
    help="Whose measurements: the services' own, or their callers'.",
)
@pass_ctx
@report_errors
def top(
    ctx: CliContext,
    namespace: str | None,
    window: float,
    fmt: str,
    once: bool,
    interval: float | None,
    reporter: str,
) -> None:
    """Live requests per second, success rate and latency per service and version."""
    if fmt == "json":
        while True:
            click.echo(_json(_stats(ctx, window, namespace, reporter), window, reporter))
            if once or interval is None:
                return
            time.sleep(interval)
    if once:
        out.print(_table(_stats(ctx, window, namespace, reporter), window))
        return
    period = interval or 2.0
    with Live(_table(_stats(ctx, window, namespace, reporter), window), console=out) as live:
        try:
            while True:
                time.sleep(period)
                live.update(_table(_stats(ctx, window, namespace, reporter), window))
        except KeyboardInterrupt:
            pass
