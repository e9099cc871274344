"""Shared CLI plumbing: global options, error reporting without tracebacks, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import click
import yaml
from rich.console import Console

from meshware.config.store import ConfigStore
from meshware.errors import ConfigError, ControlPlaneError, MeshwareError, NotFoundError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INVALID = 1
EXIT_UNREACHABLE = 2


@dataclass
class CliContext:
    redis_url: str
    mesh: str
    _store: ConfigStore | None = None

    def store(self) -> ConfigStore:
        if self._store is None:
            self._store = ConfigStore.from_url(self.redis_url, mesh=self.mesh)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


pass_ctx = click.make_pass_decorator(CliContext)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def report_errors(fn: F) -> F:
    """Print meshware errors as plain messages (no traceback) with a meaningful exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            err.print("[bold red]error:[/] invalid configuration", highlight=False)
            for problem in exc.problems:
                err.print(f"  - {problem}", highlight=False, markup=False)
            sys.exit(EXIT_INVALID)
        except ControlPlaneError as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except (NotFoundError, MeshwareError) as exc:
            fail(str(exc), EXIT_INVALID)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = EXIT_INVALID) -> None:
    """Print ``error: message`` to stderr and exit with ``code``."""
    err.print("[bold red]error:[/] ", end="", highlight=False)
    err.print(message, highlight=False, markup=False)
    sys.exit(code)


def dump_yaml_documents(documents: list[Any]) -> str:
    return "---\n".join(
        yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in documents
    )


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
