"""``meshware rollout``: watch and steer progressive rollouts; ``run`` runs the controller."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from meshware.cli.context import CliContext, dump_json, err, fail, out, pass_ctx, report_errors
from meshware.config.model.common import DEFAULT_NAMESPACE
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.rollout import Rollout
from meshware.config.parse import Document, parse_documents
from meshware.config.record import ConfigRecord
from meshware.errors import NotFoundError
from meshware.rollout.analysis import MetricsReader
from meshware.rollout.controller import DEFAULT_LEASE_TTL, DEFAULT_TICK, build_controller
from meshware.rollout.lease import LeaseHolder, read_holder
from meshware.rollout.report import RolloutReport, collect
from meshware.rollout.state import TERMINAL, Event
from meshware.rollout.storage import RolloutStorage

JSON_OR_TABLE = click.Choice(["table", "json"])
_STATUS_STYLE = {
    "Progressing": "cyan",
    "Paused": "yellow",
    "Succeeded": "green",
    "Failed": "bold red",
    "Aborted": "red",
    "Pending": "dim",
}
_MARK = {"done": "[green]✔[/]", "current": "[cyan]▶[/]", "pending": "[dim]·[/]"}


def _output_option(fn: Any) -> Any:
    return click.option(
        "-o", "--output", "fmt", type=JSON_OR_TABLE, default="table", show_default=True
    )(fn)


def _namespace_option(fn: Any) -> Any:
    return click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True)(fn)


def _config(ctx: CliContext) -> tuple[ConfigRecord | None, MeshConfig]:
    record = ctx.store().current()
    if record is None:
        return None, MeshConfig()
    config = parse_documents(
        Document(body, f"redis (v{record.version})", i)
        for i, body in enumerate(record.documents, start=1)
    )
    return record, config


def _rollouts(config: MeshConfig, namespace: str | None, name: str | None) -> list[Rollout]:
    return [
        r
        for r in config.of(Rollout)
        if (namespace is None or r.metadata.namespace == namespace)
        and (name is None or r.metadata.name == name)
    ]


def _storage(ctx: CliContext) -> RolloutStorage:
    store = ctx.store()
    return RolloutStorage(store.client, store.keys, url=store.url)


def _leader(ctx: CliContext) -> LeaseHolder | None:
    store = ctx.store()
    return read_holder(store.client, store.keys, url=store.url)


def _one(ctx: CliContext, namespace: str, name: str) -> tuple[Rollout, MeshConfig, ConfigRecord]:
    record, config = _config(ctx)
    found = _rollouts(config, namespace, name)
    if record is None or not found:
        where = "" if namespace == DEFAULT_NAMESPACE else f" in namespace {namespace}"
        raise NotFoundError(f"Rollout/{name} not found{where} (apply one with 'meshware apply -f')")
    return found[0], config, record


@click.group()
def rollout() -> None:
    """Progressive delivery: staged canaries with automatic analysis (see docs/rollouts.md)."""


# -- status -----------------------------------------------------------------------------


def _number(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.4g}{unit}"


def _measurement_rows(report: RolloutReport) -> Table:
    table = Table(box=None, pad_edge=False, title_justify="left")
    table.title = f"live metrics, last {report.window:g}s"
    for column in ("", "REQUESTS", "RPS", "SUCCESS", "P50", "P99"):
        table.add_column(column)
    spec = report.rollout.spec
    for label, m in (
        (f"canary {spec.canary_subset}", report.canary),
        (f"stable {spec.stable_subset}", report.stable),
    ):
        if m is None:
            continue
        table.add_row(
            label,
            str(m.requests),
            f"{m.rps:.1f}",
            _number(m.success_rate, "%"),
            _number(m.p50_ms, " ms"),
            _number(m.p99_ms, " ms"),
        )
    return table


def _last_check(report: RolloutReport) -> Table | Text:
    state = report.state
    check = state.last_check if state else None
    if check is None:
        return Text("no check yet", style="dim")
    verdict = "[green]passed[/]" if check.passed else "[bold red]failed[/]"
    age = max(0.0, time.time() - check.at)
    table = Table(box=None, pad_edge=False, title_justify="left")
    table.title = f"last {check.kind} check {age:.0f}s ago: {verdict}"
    if check.kind == "webhook":
        for column in ("WEBHOOK", "TYPE", "RESULT"):
            table.add_column(column)
        for hook in check.hooks:
            result = "[green]ok[/]" if hook.ok else f"[red]{_escape(hook.error)}[/]"
            table.add_row(hook.name, hook.type, result)
        return table
    for column in ("METRIC", "CANARY", "STABLE", "THRESHOLD", "RESULT"):
        table.add_column(column)
    for metric in check.metrics:
        unit = "%" if metric.name == "request-success-rate" else " ms"
        result = "[green]pass[/]" if metric.passed else f"[red]{_escape(metric.reason)}[/]"
        table.add_row(
            metric.name,
            _number(metric.canary, unit),
            _number(metric.stable, unit),
            metric.threshold,
            result,
        )
    return table


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def _render_one(report: RolloutReport) -> None:
    spec = report.rollout.spec
    state = report.state
    style = _STATUS_STYLE.get(report.status, "")
    out.print(
        f"[bold]Rollout {report.name}[/]  service {spec.service}: "
        f"{spec.stable_subset} → {spec.canary_subset}  [{style}]{report.status}[/]",
        highlight=False,
    )
    if state is not None and state.message:
        out.print(f"  {_escape(state.message)}", highlight=False)
    done, total = report.progress
    weight = state.weight if state else 0
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        Text(f"steps {done}/{total}"), ProgressBar(total=max(total, 1), completed=done, width=40)
    )
    out.print(bar)
    mode = " (A/B: matching users only)" if spec.match else ""
    mirror = f", mirroring {state.mirror:g}% to the canary" if state and state.mirror else ""
    out.print(f"canary weight: [bold]{weight}%[/]{mode}{mirror}", highlight=False)
    if state is not None:
        out.print(
            f"failed checks: {state.failed_checks}/{spec.analysis.threshold}"
            + (f" (last failure: {state.failing_metric})" if state.failing_metric else "")
            + f", config v{state.config_version}",
            highlight=False,
        )
    steps = Table(box=None, pad_edge=False)
    steps.add_column("")
    steps.add_column("STEP")
    for _, label, mark in report.step_states():
        steps.add_row(_MARK[mark], label)
    out.print(steps)
    out.print(_measurement_rows(report))
    out.print(_last_check(report))
    leader = report.leader
    if leader is None:
        out.print(
            "[yellow]no rollout controller holds the lease[/] (MESHWARE_ROLLOUT_CONTROLLER=1 "
            "on an instance, or 'meshware rollout run')",
            highlight=False,
        )
    else:
        out.print(f"[dim]controller: {leader.holder} (fence {leader.fence})[/]", highlight=False)


def _render_table(reports: Sequence[RolloutReport]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "NAMESPACE", "SERVICE", "STABLE", "CANARY", "STATUS", "STEP", "WEIGHT"):
        table.add_column(column, no_wrap=True)
    table.add_column("MESSAGE")
    for report in reports:
        spec = report.rollout.spec
        done, total = report.progress
        style = _STATUS_STYLE.get(report.status, "")
        table.add_row(
            report.name,
            report.rollout.metadata.namespace,
            spec.service,
            spec.stable_subset,
            spec.canary_subset,
            f"[{style}]{report.status}[/]",
            f"{done}/{total}",
            f"{report.state.weight if report.state else 0}%",
            _escape(report.state.message if report.state else ""),
        )
    out.print(table)


@rollout.command("status")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None, help="Only this namespace (default: all).")
@_output_option
@pass_ctx
@report_errors
def status_cmd(ctx: CliContext, name: str | None, namespace: str | None, fmt: str) -> None:
    """Rollouts with their step, weight, live canary vs stable metrics and last check."""
    record, config = _config(ctx)
    if name is not None and namespace is None:
        namespace = DEFAULT_NAMESPACE
    rollouts = _rollouts(config, namespace, name)
    if name is not None and (record is None or not rollouts):
        raise NotFoundError(f"Rollout/{name} not found")
    store = ctx.store()
    storage = _storage(ctx)
    leader = _leader(ctx)
    metrics = MetricsReader(store.client, store.keys, url=store.url) if name else None
    reports = [
        collect(r, config, record, storage, metrics, leader) for r in rollouts if record is not None
    ]
    if fmt == "json":
        if name is not None:
            click.echo(dump_json(reports[0].to_json()))
        else:
            click.echo(dump_json([r.to_json() for r in reports]))
        return
    if not reports:
        out.print("no rollouts in this mesh", highlight=False)
        return
    if name is not None:
        _render_one(reports[0])
    else:
        _render_table(reports)


# -- commands ---------------------------------------------------------------------------


def _command(ctx: CliContext, name: str, namespace: str, command: str, fmt: str) -> None:
    rollout_resource, config, record = _one(ctx, namespace, name)
    storage = _storage(ctx)
    report = collect(rollout_resource, config, record, storage, None, None)
    state = report.state
    if state is not None and state.status in TERMINAL and command != "retry":
        fail(f"rollout {name} is {state.status}; nothing to {command.partition('-')[0]}")
    if command == "retry" and (state is None or state.status not in ("Failed", "Aborted")):
        fail(f"rollout {name} is {report.status}; only a Failed or Aborted rollout can be retried")
    control = storage.command(namespace, name, command)
    leader = _leader(ctx)
    if fmt == "json":
        click.echo(
            dump_json(
                {
                    "name": name,
                    "namespace": namespace,
                    "command": command,
                    "control": {
                        "paused": control.paused,
                        "promote": control.promote,
                        "promoteFull": control.promote_full,
                        "abort": control.abort,
                        "retry": control.retry,
                    },
                    "controller": leader.holder if leader else None,
                }
            )
        )
        return
    out.print(
        f"rollout {name}: {command} requested; the controller acts on it at its next tick",
        highlight=False,
    )
    if leader is None:
        err.print(
            "[yellow]warning: no rollout controller holds the lease; nothing will happen until "
            "one runs (MESHWARE_ROLLOUT_CONTROLLER=1 or 'meshware rollout run')[/]",
            highlight=False,
        )


@rollout.command("promote")
@click.argument("name")
@click.option("--full", is_flag=True, help="Skip every remaining step and promote now.")
@_namespace_option
@_output_option
@pass_ctx
@report_errors
def promote_cmd(ctx: CliContext, name: str, full: bool, namespace: str, fmt: str) -> None:
    """End the current pause or analysis step (--full: promote the canary now)."""
    _command(ctx, name, namespace, "promote-full" if full else "promote", fmt)


@rollout.command("abort")
@click.argument("name")
@_namespace_option
@_output_option
@pass_ctx
@report_errors
def abort_cmd(ctx: CliContext, name: str, namespace: str, fmt: str) -> None:
    """Roll back: canary weight 0, status Aborted."""
    _command(ctx, name, namespace, "abort", fmt)


@rollout.command("pause")
@click.argument("name")
@_namespace_option
@_output_option
@pass_ctx
@report_errors
def pause_cmd(ctx: CliContext, name: str, namespace: str, fmt: str) -> None:
    """Stop advancing steps (analysis keeps running and can still roll back)."""
    _command(ctx, name, namespace, "pause", fmt)


@rollout.command("resume")
@click.argument("name")
@_namespace_option
@_output_option
@pass_ctx
@report_errors
def resume_cmd(ctx: CliContext, name: str, namespace: str, fmt: str) -> None:
    """Continue a paused rollout; the paused time does not count against a timed pause."""
    _command(ctx, name, namespace, "resume", fmt)


@rollout.command("retry")
@click.argument("name")
@_namespace_option
@_output_option
@pass_ctx
@report_errors
def retry_cmd(ctx: CliContext, name: str, namespace: str, fmt: str) -> None:
    """Start a Failed or Aborted rollout again from its first step."""
    _command(ctx, name, namespace, "retry", fmt)


# -- history ----------------------------------------------------------------------------


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "at": event.at,
        "kind": event.kind,
        "message": event.message,
        "revision": event.revision,
        "stage": event.stage,
        "weight": event.weight,
        "configVersion": event.config_version or None,
        "controller": event.leader,
        "check": event.check.to_json() if event.check else None,
    }


@rollout.command("history")
@click.argument("name")
@_namespace_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@_output_option
@pass_ctx
@report_errors
def history_cmd(ctx: CliContext, name: str, namespace: str, limit: int, fmt: str) -> None:
    """A rollout's events, newest first: steps, config versions written, checks, commands."""
    events = _storage(ctx).history(namespace, name, limit)
    if fmt == "json":
        click.echo(dump_json([_event_json(e) for e in events]))
        return
    if not events:
        out.print(f"no history for rollout {name}", highlight=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("TIME", "EVENT", "WEIGHT", "CONFIG", "CONTROLLER"):
        table.add_column(column, no_wrap=True)
    table.add_column("MESSAGE")
    for event in events:
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(event.at)),
            event.kind,
            "" if event.weight is None else f"{event.weight}%",
            f"v{event.config_version}" if event.config_version else "",
            event.leader,
            _escape(event.message),
        )
    out.print(table)


# -- run --------------------------------------------------------------------------------


@rollout.command("run")
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=0.5),
    default=DEFAULT_LEASE_TTL,
    show_default=True,
    envvar="MESHWARE_ROLLOUT_LEASE_TTL",
    help="Seconds the lease outlives this controller (takeover delay after a crash).",
)
@click.option(
    "--tick",
    type=click.FloatRange(min=0.05),
    default=DEFAULT_TICK,
    show_default=True,
    envvar="MESHWARE_ROLLOUT_TICK",
    help="Seconds between two passes.",
)
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MESHWARE_SIGNING_KEY",
    default=None,
    help="Operator private key that signs every step's config version. Env: MESHWARE_SIGNING_KEY.",
)
@click.option(
    "--trusted-keys",
    metavar="PATHS",
    envvar="MESHWARE_TRUSTED_KEYS",
    default=None,
    help="Operator public keys whose versions a step may build on, besides the signing key's "
    "own. Env: MESHWARE_TRUSTED_KEYS.",
)
@click.option("--holder", default=None, help="This controller's name in the lease.")
@pass_ctx
@report_errors
def run_cmd(
    ctx: CliContext,
    lease_ttl: float,
    tick: float,
    signing_key: Path | None,
    trusted_keys: str | None,
    holder: str | None,
) -> None:
    """Run the rollout controller in this process until Ctrl-C or SIGTERM (it competes for
    the lease with every other controller of the mesh)."""
    if tick * 3 > lease_ttl:
        fail("--tick must be at most a third of --lease-ttl")
    trusted = [Path(p) for p in trusted_keys.split(os.pathsep) if p.strip()] if trusted_keys else []
    if trusted and signing_key is None:
        fail(
            "config signing is on (--trusted-keys / MESHWARE_TRUSTED_KEYS) but there is no "
            "--signing-key: every step would be refused by the instances"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    controller = build_controller(
        ctx.redis_url,
        mesh=ctx.mesh,
        holder=holder,
        signing_key=signing_key,
        trusted_keys=trusted,
        lease_ttl=lease_ttl,
        tick=tick,
    )
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signer = controller.store.signer
    signing = f"signing with key {signer.key_id}" if signer is not None else "unsigned"
    err.print(
        f"rollout controller {controller.holder} running (lease TTL {lease_ttl:g}s, {signing})",
        highlight=False,
    )
    try:
        controller.run(stop)
    except KeyboardInterrupt:
        stop.set()
