"""``apply``, ``get``, ``delete``, ``history`` and ``rollback``: the config channel's CLI.

The three commands that store a version sign it with ``--signing-key`` (``MESHWARE_SIGNING_KEY``);
without one they store it unsigned and say loudly that instances trusting operator keys will
refuse it.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from meshware.cli.context import (
    CliContext,
    dump_json,
    dump_yaml_documents,
    err,
    fail,
    out,
    pass_ctx,
    report_errors,
)
from meshware.cli.kinds import resolve_kind
from meshware.config.model.common import DEFAULT_NAMESPACE, ResourceKey
from meshware.config.parse import load_files
from meshware.config.record import ConfigRecord, RawDocument, document_key
from meshware.config.store import Change, ChangeResult, ConfigStore
from meshware.security.signing import ConfigVerifier, OperatorKey, load_trusted_keys

OUTPUT_FORMATS = click.Choice(["table", "yaml", "json"])
F = TypeVar("F", bound=Callable[..., Any])


def signing_options(fn: F) -> F:
    """``--signing-key``, ``--trusted-keys`` and ``--adopt-unsigned`` for commands that store."""
    fn = click.option(
        "--adopt-unsigned",
        is_flag=True,
        help="With --signing-key: sign on top of an unsigned current version (once, when "
        "switching a mesh to signed config; check it with 'meshware get -o yaml' first).",
    )(fn)
    fn = click.option(
        "--trusted-keys",
        metavar="PATHS",
        envvar="MESHWARE_TRUSTED_KEYS",
        default=None,
        help="With --signing-key: operator public keys (files or directories of *.pub, "
        f"'{os.pathsep}'-separated) whose versions a signed change may build on, besides the "
        "signing key's own (after a rotation: the old key). Env: MESHWARE_TRUSTED_KEYS.",
    )(fn)
    return click.option(
        "--signing-key",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="MESHWARE_SIGNING_KEY",
        default=None,
        help="Operator private key (meshware keys init) that signs the new version. "
        "Env: MESHWARE_SIGNING_KEY.",
    )(fn)


def _writer(
    ctx: CliContext, signing_key: Path | None, trusted_keys: str | None, adopt_unsigned: bool
) -> ConfigStore:
    """The store that writes: signing with ``signing_key`` if given (loaded before any I/O)."""
    if signing_key is None:
        return ctx.store()
    signer = OperatorKey.load(signing_key)
    trusted = [signer.public]
    if trusted_keys:
        trusted.extend(load_trusted_keys(p for p in trusted_keys.split(os.pathsep) if p.strip()))
    base = ctx.store()
    return ConfigStore(
        base.client,
        mesh=ctx.mesh,
        url=ctx.redis_url,
        signer=signer,
        trusted=ConfigVerifier(trusted, mesh=ctx.mesh),
        adopt_unsigned=adopt_unsigned,
    )


def _warn_unsigned(store: ConfigStore, result: ChangeResult, *, dry_run: bool) -> None:
    if store.signer is not None:
        return
    if result.record is not None:
        what = f"config v{result.record.version} was stored UNSIGNED"
    elif dry_run and result.changed:
        what = "the new version would be stored UNSIGNED"
    else:
        return
    err.print(
        f"[bold yellow]warning: {what}[/] [yellow](no --signing-key / MESHWARE_SIGNING_KEY): "
        "instances that trust operator keys (MESHWARE_TRUSTED_KEYS) will reject it (NACK) and "
        "keep their last good version[/]",
        highlight=False,
    )


def _print_changes(result: ChangeResult, *, dry_run: bool, show_diff: bool) -> None:
    suffix = " (dry run)" if dry_run else ""
    for change in result.changes:
        out.print(
            f"{change.key.kind.lower()}/{_name(change.key)} {change.action}{suffix}",
            highlight=False,
        )
        if show_diff and change.action in ("configured", "created", "deleted"):
            _print_diff(change)
    if result.record is not None:
        record = result.record
        signed = f", signed by key {record.key_id}" if record.key_id else ""
        out.print(
            f"config v{record.version} stored (epoch {record.epoch}, {record.summary}){signed}",
            highlight=False,
        )
    elif not dry_run:
        out.print("no changes: the current version stays", highlight=False)
    elif result.changed:
        version = (result.previous.version + 1) if result.previous else 1
        out.print(f"would store config v{version}", highlight=False)


def _name(key: ResourceKey) -> str:
    return key.name if key.namespace == DEFAULT_NAMESPACE else f"{key.namespace}/{key.name}"


def _print_diff(change: Change) -> None:
    before = dump_yaml_documents([change.before]).splitlines() if change.before else []
    after = dump_yaml_documents([change.after]).splitlines() if change.after else []
    label = change.key.ref
    for line in difflib.unified_diff(
        before, after, f"{label} (current)", f"{label} (new)", lineterm=""
    ):
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
        out.print(f"[{style}]{_escape(line)}[/]", highlight=False)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


@click.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(allow_dash=True),
    help="A YAML/JSON file of Istio-format resources ('-' for stdin). Repeatable.",
)
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; store nothing.")
@signing_options
@pass_ctx
@report_errors
def apply(
    ctx: CliContext,
    files: Sequence[str],
    dry_run: bool,
    signing_key: Path | None,
    trusted_keys: str | None,
    adopt_unsigned: bool,
) -> None:
    """Validate the files with the current config and store the result as a new version."""
    store = _writer(ctx, signing_key, trusted_keys, adopt_unsigned)
    documents = load_files(files)
    if not documents:
        fail("no resources found in " + ", ".join(files))
    result = store.apply(documents, dry_run=dry_run)
    _print_changes(result, dry_run=dry_run, show_diff=dry_run)
    _warn_unsigned(store, result, dry_run=dry_run)


def _select(
    documents: Sequence[RawDocument], kind: str | None, name: str | None, namespace: str | None
) -> list[RawDocument]:
    selected = []
    for doc in documents:
        key = document_key(doc)
        if kind and key.kind != kind:
            continue
        if namespace and key.namespace != namespace:
            continue
        if name and key.name != name:
            continue
        selected.append(doc)
    return selected


def _summary(doc: RawDocument) -> str:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind in ("VirtualService", "ServiceEntry"):
        return ", ".join(map(str, spec.get("hosts") or []))
    if kind == "DestinationRule":
        subsets = ", ".join(
            str(s.get("name")) for s in spec.get("subsets") or [] if isinstance(s, dict)
        )
        return f"{spec.get('host', '')}" + (f" [{subsets}]" if subsets else "")
    if kind == "PeerAuthentication":
        return str((spec.get("mtls") or {}).get("mode", "UNSET"))
    if kind == "AuthorizationPolicy":
        return str(spec.get("action", "ALLOW"))
    return ""


@click.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None, help="Only this namespace (default: all).")
@click.option("-o", "--output", "fmt", type=OUTPUT_FORMATS, default="table", show_default=True)
@click.option(
    "--revision", type=int, default=None, help="Read an earlier version from the history."
)
@pass_ctx
@report_errors
def get(
    ctx: CliContext,
    kind: str | None,
    name: str | None,
    namespace: str | None,
    fmt: str,
    revision: int | None,
) -> None:
    """Show resources of the current (or an earlier) config version."""
    try:
        kind_name = resolve_kind(kind) if kind else None
    except ValueError as exc:
        fail(str(exc))
        return
    store = ctx.store()
    record = store.version(revision) if revision is not None else store.current()
    documents = list(record.documents) if record else []
    selected = _select(documents, kind_name, name, namespace)
    if name and not selected:
        fail(f"{kind_name}/{name} not found")
    if fmt == "yaml":
        if selected:
            click.echo(dump_yaml_documents(selected), nl=False)
        return
    if fmt == "json":
        if name and len(selected) == 1:
            click.echo(dump_json(selected[0]))
        else:
            click.echo(dump_json({"apiVersion": "v1", "kind": "List", "items": selected}))
        return
    if record is None:
        out.print("no config has been applied to this mesh yet", highlight=False)
        return
    table = Table(title=f"config v{record.version}", title_justify="left", box=None, pad_edge=False)
    for column in ("KIND", "NAMESPACE", "NAME", "API VERSION", "SUMMARY"):
        table.add_column(column)
    for doc in selected:
        key = document_key(doc)
        table.add_row(
            key.kind, key.namespace, key.name, str(doc.get("apiVersion", "")), _summary(doc)
        )
    out.print(table)


@click.command()
@click.argument("kind")
@click.argument("name")
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True)
@click.option("--dry-run", is_flag=True, help="Show what would change; store nothing.")
@signing_options
@pass_ctx
@report_errors
def delete(
    ctx: CliContext,
    kind: str,
    name: str,
    namespace: str,
    dry_run: bool,
    signing_key: Path | None,
    trusted_keys: str | None,
    adopt_unsigned: bool,
) -> None:
    """Delete one resource (the rest of the mesh must stay valid) as a new version."""
    try:
        kind_name = resolve_kind(kind)
    except ValueError as exc:
        fail(str(exc))
        return
    store = _writer(ctx, signing_key, trusted_keys, adopt_unsigned)
    result = store.delete(ResourceKey(kind_name, namespace, name), dry_run=dry_run)
    _print_changes(result, dry_run=dry_run, show_diff=False)
    _warn_unsigned(store, result, dry_run=dry_run)


def _age(timestamp: float) -> str:
    seconds = max(0.0, time.time() - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _record_json(record: ConfigRecord) -> dict[str, Any]:
    return {
        "version": record.version,
        "epoch": record.epoch,
        "digest": record.digest,
        "created_at": record.created_at,
        "action": record.action,
        "actor": record.actor,
        "summary": record.summary,
        "changes": [{"change": a, "resource": r} for a, r in record.changes],
        "key_id": record.key_id,
    }


@click.command()
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@pass_ctx
@report_errors
def history(ctx: CliContext, fmt: str, limit: int) -> None:
    """List stored config versions, newest first."""
    records = ctx.store().history(limit)
    if fmt == "json":
        click.echo(dump_json([_record_json(r) for r in records]))
        return
    if not records:
        out.print("no config history yet", highlight=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("VERSION", "AGE", "ACTION", "ACTOR", "SIGNED BY", "CHANGES"):
        table.add_column(column)
    for record in records:
        changes = ", ".join(f"{r} {a}" for a, r in record.changes) or record.summary
        table.add_row(
            f"v{record.version}",
            _age(record.created_at),
            record.action,
            record.actor,
            record.key_id or "[yellow]unsigned[/]",
            changes,
        )
    out.print(table)


@click.command()
@click.option(
    "--to",
    "to",
    type=click.IntRange(min=1),
    default=None,
    help="Version to return to (default: the previous one).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; store nothing.")
@signing_options
@pass_ctx
@report_errors
def rollback(
    ctx: CliContext,
    to: int | None,
    dry_run: bool,
    signing_key: Path | None,
    trusted_keys: str | None,
    adopt_unsigned: bool,
) -> None:
    """Store an earlier version's config as a new version (signed anew with --signing-key)."""
    store = _writer(ctx, signing_key, trusted_keys, adopt_unsigned)
    result = store.rollback(to, dry_run=dry_run)
    _print_changes(result, dry_run=dry_run, show_diff=dry_run)
    _warn_unsigned(store, result, dry_run=dry_run)
