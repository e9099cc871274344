"""``meshware ca``: the built-in certificate authority (init, issue)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import click

from meshware.cli.context import out, report_errors
from meshware.security.ca import DEFAULT_TRUST_DOMAIN, CertificateAuthority, write_credentials

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
