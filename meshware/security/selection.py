"""Which workloads a policy resource selects: Istio's ``selector.matchLabels`` and namespaces.

Istio's policy kinds (PeerAuthentication, AuthorizationPolicy, Telemetry, ...) attach to
workloads the same way: a resource in the workload's own namespace applies to it when its
``selector`` is absent or its ``matchLabels`` are a subset of the workload's labels, and a
resource in the *root namespace* (``istio-system``) without a selector applies mesh-wide. What
differs per kind is how the levels combine, so that part stays with each kind.

:mod:`meshware.security.peer_auth`, :mod:`meshware.security.authz` and
:mod:`meshware.telemetry.policy` (tracing and access logging) take them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from meshware.config.model.common import WorkloadSelector

__all__ = ["ROOT_NAMESPACE", "is_workload_specific", "selects"]

ROOT_NAMESPACE: Final = "istio-system"
"""Policies here without a selector apply mesh-wide (Istio's default root namespace)."""


def selects(selector: WorkloadSelector | None, labels: Mapping[str, str]) -> bool:
    """True when ``selector`` picks a workload with ``labels``: no selector, an empty
    ``matchLabels``, or every ``matchLabels`` entry among the labels."""
    return selector is None or all(
        labels.get(key) == value for key, value in selector.match_labels.items()
    )


def is_workload_specific(selector: WorkloadSelector | None) -> bool:
    """True for a selector naming labels; absent or empty means namespace- or mesh-wide."""
    return selector is not None and bool(selector.match_labels)
