"""Envoy's response flags for one outbound call, shared by its span and its metrics.

``DI``/``FI`` an injected delay/abort, ``UT`` the route's timeout, ``UH`` no healthy
upstream, ``UO`` overflow (pending-request limit), ``NR`` no route, ``DC`` the caller gave up
(cancelled), ``UF`` any other failure to get a response, and ``URX`` when retries were made and the call still failed. Several
flags are joined with commas, as in Envoy's ``%RESPONSE_FLAGS%``; none is ``-``.
"""

from __future__ import annotations

from meshware.errors import (
    EgressBlockedError,
    NoHealthyUpstreamError,
    NoRouteError,
    UpstreamOverflowError,
    UpstreamTimeoutError,
)

__all__ = ["error_flag", "fault_flag", "response_flags"]


def error_flag(error: BaseException) -> str:
    """Envoy's response flag for a call that failed with ``error``."""
    if not isinstance(error, Exception):
        return "DC"  # cancelled (the caller gave up): Envoy's downstream connection termination
    if isinstance(error, UpstreamTimeoutError):
        return "UT"
    if isinstance(error, NoHealthyUpstreamError):
        return "UH"
    if isinstance(error, UpstreamOverflowError):
        return "UO"
    if isinstance(error, NoRouteError | EgressBlockedError):
        return "NR"
    return "UF"


def fault_flag(kind: str) -> str:
    """``DI`` for an injected delay, ``FI`` for an injected abort."""
    return "DI" if kind == "delay" else "FI"


def response_flags(faults: str, error: BaseException | None, attempts: int, failed: bool) -> str:
    """The flags of a finished call: ``faults`` (comma-joined fault flags, or ``""``), the
    error's flag, then ``URX`` if it was retried and failed; ``-`` when there are none."""
    flags = faults
    if error is not None:
        flag = error_flag(error)
        flags = f"{flags},{flag}" if flags else flag
    if attempts > 1 and failed:
        flags = f"{flags},URX" if flags else "URX"
    return flags or "-"
