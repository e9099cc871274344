"""The ``meshware`` entry point: global options and the command list."""

from __future__ import annotations

import signal
import time

import click

from meshware import __version__
from meshware.cli.ca_cmd import ca
from meshware.cli.config_cmds import apply, delete, get, history, rollback
from meshware.cli.context import CliContext, out, report_errors
from meshware.cli.demo_cmd import demo
from meshware.cli.keys_cmd import keys
from meshware.cli.rollout_cmd import rollout
from meshware.cli.serve_cmd import serve
from meshware.cli.status_cmd import status
from meshware.cli.top_cmd import top
from meshware.config.connection import DEFAULT_REDIS_URL, redact
from meshware.config.keys import DEFAULT_MESH


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--redis-url",
    envvar="MESHWARE_REDIS_URL",
    default=DEFAULT_REDIS_URL,
    show_default=True,
    help="Control plane Redis (redis:// or rediss://, user:password@ allowed). Env: MESHWARE_REDIS_URL.",
)
@click.option(
    "--mesh",
    envvar="MESHWARE_MESH",
    default=DEFAULT_MESH,
    show_default=True,
    help="Mesh name: namespaces the keys so meshes can share a Redis. Env: MESHWARE_MESH.",
)
@click.version_option(__version__, prog_name="meshware")
@click.pass_context
def cli(ctx: click.Context, redis_url: str, mesh: str) -> None:
    """meshware: a proxyless service mesh for Python web services."""
    state = CliContext(redis_url=redis_url, mesh=mesh)
    ctx.obj = state
    ctx.call_on_close(state.close)


@cli.command("redis")
@click.option("--port", type=click.IntRange(0, 65535), default=6379, show_default=True)
@report_errors
def redis_cmd(port: int) -> None:
    """Run an embedded Redis on 127.0.0.1 for local use, until Ctrl-C."""
    from meshware.embedded_redis import RedisServer

    server = RedisServer(port=port)
    server.start()
    out.print(
        f"embedded Redis listening: export MESHWARE_REDIS_URL={redact(server.url)}", highlight=False
    )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and server.running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


for command in (apply, get, delete, history, rollback, status, demo, serve, ca, keys):
    cli.add_command(command)
cli.add_command(top)
cli.add_command(rollout)


def main() -> None:
    cli(prog_name="meshware")


if __name__ == "__main__":
    main()
