"""``meshware keys``: operator keys that sign config versions (init, id)."""

from __future__ import annotations

from pathlib import Path

import click

from meshware.cli.context import out, report_errors
from meshware.security.signing import read_key_id, write_key_pair


@click.group()
def keys() -> None:
    """Operator keys (Ed25519) that sign config versions; instances trust their .pub files."""


@keys.command("init")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write NAME.key (0600) and NAME.pub.",
)
@click.option("--name", default="operator", show_default=True, help="File name of the pair.")
@report_errors
def init(directory: Path, name: str) -> None:
    """Create an operator key pair; never replaces an existing one."""
    key, private_path, public_path = write_key_pair(directory, name)
    out.print(f"operator key {key.key_id}", highlight=False)
    out.print(
        f"  {private_path}  private key (0600): signs with "
        f"'meshware apply --signing-key {private_path}' (or MESHWARE_SIGNING_KEY); keep it secret\n"
        f"  {public_path}  public key: give it to every instance "
        f"(MESHWARE_TRUSTED_KEYS={public_path})",
        highlight=False,
        markup=False,
    )


@keys.command("id")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@report_errors
def key_id(file: Path) -> None:
    """Print the id of an operator key (a .key or a .pub file), as 'meshware history' shows it."""
    click.echo(read_key_id(file))
