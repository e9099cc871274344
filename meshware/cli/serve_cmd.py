"""``meshware serve MODULE:APP``: run an ASGI or WSGI app as a mesh service, no boilerplate."""

from __future__ import annotations

import os
from pathlib import Path

import click

from meshware.cli.context import report_errors


@click.command()
@click.argument("target", metavar="MODULE:APP")
@click.option("--service", required=True, help="Service name (MESHWARE_SERVICE).")
@click.option("--version", "version_label", default="v1", show_default=True, help="Version label.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes; each is its own mesh instance.",
)
@click.option(
    "--admin-port",
    type=click.IntRange(1, 65535),
    default=None,
    envvar="MESHWARE_ADMIN_PORT",
    help="Serve the admin app (/healthz, /readyz, /config_dump) on this port.",
)
@click.option(
    "--advertise",
    metavar="HOST[:PORT]",
    default=None,
    envvar="MESHWARE_ADVERTISE_ADDRESS",
    help="Address other instances reach this one at (MESHWARE_ADDRESS); PORT defaults to --port. "
    "Default: --host, or 127.0.0.1 when binding 0.0.0.0/::. "
    "Env: MESHWARE_ADVERTISE_ADDRESS.",
)
@click.option(
    "--cert-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="MESHWARE_CERT_DIR",
    help="Workload credentials (cert.pem, key.pem, bundle.pem) for mutual TLS. "
    "Env: MESHWARE_CERT_DIR.",
)
@click.option(
    "--mtls",
    type=click.Choice(["strict", "disable"], case_sensitive=False),
    default=None,
    envvar="MESHWARE_MTLS",
    help="Inbound mutual TLS: strict (client certificate required; the default with "
    "--cert-dir) or disable. Env: MESHWARE_MTLS.",
)
@click.pass_context
@report_errors
def serve(
    ctx: click.Context,
    target: str,
    service: str,
    version_label: str,
    host: str,
    port: int,
    workers: int,
    admin_port: int | None,
    advertise: str | None,
    cert_dir: Path | None,
    mtls: str | None,
) -> None:
    """Run MODULE:APP (ASGI under uvicorn, WSGI through a2wsgi) joined to the mesh.

    The mesh environment is set before the app is imported (MESHWARE_SERVICE, MESHWARE_VERSION,
    MESHWARE_ADDRESS, MESHWARE_REDIS_URL, MESHWARE_MESH), so ``Mesh.from_env()`` in the app
    module needs no arguments. The first SIGTERM drains the instance before the server stops.
    """
    from meshware.serving import serve_target

    root = ctx.find_root().params
    os.environ.update(
        {
            "MESHWARE_SERVICE": service,
            "MESHWARE_VERSION": version_label,
            "MESHWARE_ADDRESS": _advertised_address(advertise, host, port),
            "MESHWARE_REDIS_URL": root["redis_url"],
            "MESHWARE_MESH": root["mesh"],
        }
    )
    if cert_dir is not None:
        os.environ["MESHWARE_CERT_DIR"] = str(cert_dir.resolve())
    mode = (mtls or ("strict" if cert_dir is not None else "disable")).upper()
    os.environ["MESHWARE_MTLS"] = mode
    serve_target(target, host=host, port=port, workers=workers, admin_port=admin_port)


def _advertised_address(advertise: str | None, host: str, port: int) -> str:
    """``--advertise`` as ``host:port`` (its port, else ``port``); without it, where we bind."""
    if not advertise:
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    _, sep, tail = advertise.rpartition(":")
    if sep and tail.isdigit() and not advertise.endswith("]"):
        return advertise
    return f"{advertise}:{port}"
