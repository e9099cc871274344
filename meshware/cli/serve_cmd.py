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
    type=click.Choice(["strict", "permissive", "disable"], case_sensitive=False),
    default=None,
    envvar="MESHWARE_MTLS",
    help="Override the PeerAuthentication mode for this instance: strict (mutual TLS only), "
    "permissive (mutual TLS and plaintext on the same port) or disable (plaintext). "
    "Default: follow the PeerAuthentication resources (PERMISSIVE when none applies and "
    "the instance has credentials). Env: MESHWARE_MTLS.",
)
@click.option(
    "--spiffe-endpoint",
    metavar="URL",
    default=None,
    envvar="MESHWARE_SPIFFE_ENDPOINT",
    help="Take the workload credentials from the SPIFFE Workload API (a SPIRE agent) at URL, "
    "e.g. unix:///run/spire/agent.sock, instead of --cert-dir, and keep them current as SPIRE "
    "rotates them (mutual TLS as with --cert-dir). Needs meshware[spire]. "
    "Env: MESHWARE_SPIFFE_ENDPOINT.",
)
@click.option(
    "--ca-url",
    metavar="URL",
    default=None,
    envvar="MESHWARE_CA_URL",
    help="Take the workload certificate from the CA service (meshware ca serve) at URL, e.g. "
    "https://ca:15012, and renew it while serving; written to --cert-dir if given, else to a "
    "private temporary directory. Env: MESHWARE_CA_URL.",
)
@click.option(
    "--join-token",
    metavar="TOKEN",
    default=None,
    envvar="MESHWARE_JOIN_TOKEN",
    help="The join token (meshware ca token) for the first certificate from --ca-url; not "
    "needed when --cert-dir already holds a valid certificate. Prefer the environment "
    "variable: a command line is visible to other users. Env: MESHWARE_JOIN_TOKEN.",
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
    spiffe_endpoint: str | None,
    ca_url: str | None,
    join_token: str | None,
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
    if ca_url is not None and spiffe_endpoint is not None:
        raise click.UsageError(
            "--ca-url and --spiffe-endpoint both say where the workload credentials come "
            "from: give one"
        )
    if spiffe_endpoint is not None:  # SPIRE writes the credentials, kept current while we serve
        from meshware.security.spire import start_for_serve

        cert_dir = start_for_serve(spiffe_endpoint, cert_dir=cert_dir).directory
    # the app's own Mesh must not enroll again (nor see the token): this process renews
    for name in ("MESHWARE_CA_URL", "MESHWARE_JOIN_TOKEN"):
        os.environ.pop(name, None)
    if ca_url is not None:  # enrolled here, in the parent: one token use for all workers
        from meshware.cli.ca_cmd import log_to_stderr
        from meshware.security.enroll import start_for_serve as enroll_for_serve

        log_to_stderr("meshware.security")
        cert_dir = enroll_for_serve(
            ca_url,
            service=service,
            namespace=os.environ.get("MESHWARE_NAMESPACE") or "default",
            join_token=join_token,
            cert_dir=cert_dir,
            redis_url=root["redis_url"],
            mesh=root["mesh"],
        ).directory
    if cert_dir is not None:
        os.environ["MESHWARE_CERT_DIR"] = str(cert_dir.resolve())
    if mtls:
        os.environ["MESHWARE_MTLS"] = mtls.upper()
    serve_target(target, host=host, port=port, workers=workers, admin_port=admin_port)


def _advertised_address(advertise: str | None, host: str, port: int) -> str:
    """``--advertise`` as ``host:port`` (its port, else ``port``); without it, where we bind."""
    if not advertise:
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    _, sep, tail = advertise.rpartition(":")
    if sep and tail.isdigit() and not advertise.endswith("]"):
        return advertise
    return f"{advertise}:{port}"
