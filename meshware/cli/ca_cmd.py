"""``meshware ca``: the built-in certificate authority (init, issue, token, serve, rotate)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from meshware.cli.context import err, out, report_errors
from meshware.security.ca import DEFAULT_TRUST_DOMAIN, CertificateAuthority, write_credentials

if TYPE_CHECKING:
    from meshware.security.rotation import Phase

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_ttl(value: str) -> dt.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``."""
    match = _DURATION.match(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(f"expected a duration like 90s, 30m, 24h or 7d, got {value!r}")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.group()
def ca() -> None:
    """The mesh's certificate authority: SPIFFE identities for workloads."""


@ca.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--root-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@report_errors
def init(directory: Path, trust_domain: str, root_cert: Path | None, root_key: Path | None) -> None:
    """Create a root CA (or use yours, --root-cert/--root-key) and a signing intermediate."""
    authority = CertificateAuthority.init(
        directory,
        trust_domain=trust_domain,
        root_cert=root_cert.read_bytes() if root_cert else None,
        root_key=root_key.read_bytes() if root_key else None,
    )
    from meshware.security.tokens import TokenKey

    TokenKey.load_or_create(directory)
    out.print(
        f"CA for trust domain {authority.trust_domain} in {directory}: root-cert.pem is the "
        "trust bundle; the keys (mode 0600) never leave this directory",
        highlight=False,
    )


@ca.command("issue")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--service", required=True)
@click.option("--namespace", default="default", show_default=True)
@click.option("--ttl", default="24h", show_default=True, help="Validity: 90s, 30m, 24h, 7d.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@report_errors
def issue(directory: Path, service: str, namespace: str, ttl: str, out_dir: Path) -> None:
    """Write cert.pem, key.pem (0600) and bundle.pem for one workload into --out."""
    authority = CertificateAuthority.load(directory)
    try:
        credentials = authority.issue(service, namespace, ttl=parse_ttl(ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    write_credentials(out_dir, credentials)
    out.print(
        f"{credentials.spiffe_id} until {credentials.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
        f"→ {out_dir}/cert.pem, key.pem, bundle.pem",
        highlight=False,
    )


@ca.command("token")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--service", required=True)
@click.option("--namespace", default="default", show_default=True)
@click.option(
    "--ttl", default="1h", show_default=True, help="Validity: 90s, 30m, 1h (a week at most)."
)
@report_errors
def token(directory: Path, service: str, namespace: str, ttl: str) -> None:
    """Print a single-use join token for SERVICE's first certificate from `ca serve`.

    Hand it to the workload as MESHWARE_JOIN_TOKEN (with MESHWARE_CA_URL). Only the token
    goes to stdout, so `TOKEN=$(meshware ca token ...)` works.
    """
    from meshware.security.tokens import TokenKey, root_pins

    authority = CertificateAuthority.load(directory)
    try:
        subject = authority.identity(service, namespace)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if subject == authority.service_identity:
        raise click.BadParameter(f"{subject} is the CA service's own identity")
    lifetime = parse_ttl(ttl)
    minted = TokenKey.load_or_create(directory).mint(
        subject, lifetime.total_seconds(), root_pins(authority.bundle_pem)
    )
    click.echo(minted)
    err.print(f"join token for {subject}, single use, valid {lifetime}", highlight=False)


@ca.command("serve")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=15012, show_default=True)
@click.option(
    "--ttl", default="24h", show_default=True, help="Workload certificate validity: 10s, 30m, 24h."
)
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Publish the trust bundle (certificates only) to the mesh's Redis (--redis-url).",
)
@click.pass_context
@report_errors
def serve(
    ctx: click.Context, directory: Path, host: str, port: int, ttl: str, publish: bool
) -> None:
    """Run the signing service: workloads send a CSR with a join token (first certificate)
    or over mutual TLS with their current certificate (renewal). Follows root rotations
    (`ca rotate`) in DIR without a restart."""
    from meshware.config.keys import Keys
    from meshware.security.bundle_hint import BundlePublisher
    from meshware.security.ca_service import CAService

    log_to_stderr("meshware.security")
    root = ctx.find_root().params
    publisher = BundlePublisher(root["redis_url"], Keys(root["mesh"])) if publish else None
    service = CAService(directory, ttl=parse_ttl(ttl), publisher=publisher)
    service.serve(host, port)


@ca.command("rotate")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option(
    "--phase",
    type=click.Choice(["add", "switch", "remove", "status"]),
    required=True,
    help="add: a new root beside the old one; switch: sign with the new root; "
    "remove: drop the old root from the bundle; status: show where the rotation stands.",
)
@click.option("--root-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@report_errors
def rotate(directory: Path, phase: str, root_cert: Path | None, root_key: Path | None) -> None:
    """Rotate the root CA in three phases, without downtime. Wait at least one workload
    certificate lifetime (the --ttl of `ca serve`) between phases: see docs/security.md."""
    from meshware.security.rotation import rotate as run_phase
    from meshware.security.rotation import rotation_state

    if phase == "status":
        state = rotation_state(directory)
    else:
        if (root_cert or root_key) and phase != "add":
            raise click.BadParameter("--root-cert/--root-key go with --phase add")
        state = run_phase(
            directory,
            cast("Phase", phase),
            root_cert=root_cert.read_bytes() if root_cert else None,
            root_key=root_key.read_bytes() if root_key else None,
        )
    where = {None: "no rotation in progress", "added": "added", "switched": "switched"}
    out.print(
        f"{directory}: {where.get(state.phase, state.phase)}"
        + (f" since {state.since}" if state.since else ""),
        highlight=False,
    )
    for fingerprint in state.roots:
        out.print(f"  root sha256:{fingerprint}", highlight=False)
    following = {"added": "switch", "switched": "remove"}.get(state.phase or "")
    if following and phase != "status":
        out.print(
            f"next: wait at least one workload certificate lifetime (ca serve --ttl), then "
            f"meshware ca rotate --dir {directory} --phase {following}",
            highlight=False,
        )


def log_to_stderr(name: str, level: int = logging.INFO) -> None:
    """Show a logger's records on stderr (long-running commands: ca serve, serve --ca-url)."""
    logger = logging.getLogger(name)
    if any(getattr(h, "_meshware_cli", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._meshware_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
