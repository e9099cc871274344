"""Rollout webhooks: an HTTP POST with a JSON payload and a timeout, as in Flagger.

A webhook passes when it answers 2xx within its timeout; anything else (another status, a
timeout, a refused connection) fails it, and a failed pre-rollout or confirm-promotion hook
counts as a failed check (retried every analysis interval). The payload names the rollout
and the moment::

    {"name": "reviews", "namespace": "default", "type": "pre-rollout",
     "phase": "Progressing", "revision": "3f2a...", "service": "reviews",
     "stableSubset": "v1", "canarySubset": "v2", "weight": 0,
     "metadata": {...the hook's metadata...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from meshware.config.model.rollout import Rollout, Webhook
from meshware.rollout.state import HookResult, RolloutState

MAX_ERROR = 200


def payload(rollout: Rollout, state: RolloutState, hook: Webhook) -> dict[str, Any]:
    spec = rollout.spec
    return {
        "name": rollout.metadata.name,
        "namespace": rollout.metadata.namespace,
        "type": hook.type,
        "phase": state.status,
        "revision": state.revision,
        "service": spec.service,
        "stableSubset": spec.stable_subset,
        "canarySubset": spec.canary_subset,
        "weight": state.weight,
        "metadata": dict(hook.metadata),
    }


def call(client: httpx.Client, hook: Webhook, body: dict[str, Any]) -> HookResult:
    try:
        response = client.post(hook.url, json=body, timeout=hook.timeout)
    except httpx.TimeoutException:
        return HookResult(hook.name, hook.type, False, error=f"no answer within {hook.timeout:g}s")
    except httpx.HTTPError as exc:
        return HookResult(
            hook.name, hook.type, False, error=str(exc)[:MAX_ERROR] or type(exc).__name__
        )
    ok = 200 <= response.status_code < 300
    error = "" if ok else f"HTTP {response.status_code}: {response.text[:MAX_ERROR]}".rstrip(": ")
    return HookResult(hook.name, hook.type, ok, status=response.status_code, error=error)


def call_all(
    client: httpx.Client, rollout: Rollout, state: RolloutState, hooks: Sequence[Webhook]
) -> tuple[HookResult, ...]:
    """Call ``hooks`` in order; every one is called even after a failure (all are reported)."""
    return tuple(call(client, hook, payload(rollout, state, hook)) for hook in hooks)
