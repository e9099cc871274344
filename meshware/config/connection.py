"""Redis connections for the control plane, with meshware's timeouts and error translation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio

from meshware.errors import ControlPlaneError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0


def check_redis_url(url: str) -> str:
    """Validate ``redis://`` / ``rediss://`` / ``unix://`` URLs; raises ``ValueError``."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported Redis URL {redact(url)!r}: use redis://, rediss:// or unix://"
        )
    return url


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and status output)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return parts._replace(netloc=netloc).geturl()


def sync_client(url: str, *, timeout: float = COMMAND_TIMEOUT) -> redis.Redis:
    """A synchronous client (CLI, status); decodes responses to ``str``."""
    try:
        return redis.Redis.from_url(
            check_redis_url(url),
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=timeout,
        )
    except ValueError as exc:
        raise ControlPlaneError(str(exc)) from exc


def async_client(url: str, *, timeout: float = COMMAND_TIMEOUT) -> redis.asyncio.Redis:
    """An asyncio client (the instance runtime); decodes responses to ``str``."""
    try:
        return redis.asyncio.Redis.from_url(
            check_redis_url(url),
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=timeout,
        )
    except ValueError as exc:
        raise ControlPlaneError(str(exc)) from exc


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn redis-py and socket errors into :class:`ControlPlaneError` naming the server."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise ControlPlaneError(f"Redis at {redact(url)} refused the credentials: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ControlPlaneError(f"cannot reach Redis at {redact(url)}: {exc}") from exc
    except redis.RedisError as exc:
        raise ControlPlaneError(f"Redis at {redact(url)} answered with an error: {exc}") from exc


def text(value: object) -> str:
    """A reply value as ``str`` (clients decode responses; this also narrows the type)."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def text_map(reply: Mapping[Any, Any]) -> dict[str, str]:
    """An HGETALL reply as ``dict[str, str]``."""
    return {text(k): text(v) for k, v in reply.items()}


def for_hset(values: Mapping[str, str]) -> Mapping[Any, Any]:
    """Hand a ``dict[str, str]`` to redis-py's loosely typed ``hset(mapping=...)``."""
    return values


async def aclose_quietly(resource: redis.asyncio.Redis | redis.asyncio.client.PubSub) -> None:
    """Close a client or pub/sub connection, ignoring errors (it may already be dead)."""
    with suppress(redis.RedisError, OSError, RuntimeError):
        await resource.aclose()
