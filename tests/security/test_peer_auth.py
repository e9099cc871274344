"""PeerAuthentication resolution: Istio's levels (workload > namespace > mesh), UNSET
inheritance, portLevelMtls, selectors, the root namespace, ties, defaults and overrides; and
the Mesh recomputing its inbound mode and what it advertises on every config change."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshware import Mesh
from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import load_yaml, parse_documents
from meshware.errors import ConfigError
from meshware.security.ca import CertificateAuthority, write_credentials
from meshware.security.peer_auth import (
    InboundMode,
    MergedPeerAuthentication,
    inbound_mode,
    merge_peer_authentication,
    resolve,
)
from meshware.settings import Settings
from tests.helpers import wait_until

REVIEWS = {"app": "reviews", "version": "v2"}


def pa(
    name: str,
    mode: str | None = None,
    *,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    ports: dict[int, str | None] | None = None,
) -> str:
    """One PeerAuthentication as YAML (``mode=None``: no ``mtls`` at all)."""
    spec: dict[str, Any] = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = {
            port: ({"mode": port_mode} if port_mode else {}) for port, port_mode in ports.items()
        }
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {json.dumps(spec)}\n"
    )


def config(*policies: str) -> MeshConfig:
    return parse_documents(load_yaml("\n---\n".join(policies), "peer.yaml"))


def mode(
    *policies: str,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    port: int | None = 9080,
    credentials: bool = True,
    override: str = "",
) -> str:
    return inbound_mode(
        config(*policies),
        namespace=namespace,
        labels=REVIEWS if labels is None else labels,
        port=port,
        credentials=credentials,
        override=override,
    ).mode


# -- levels and precedence -------------------------------------------------------------------


def test_no_policy_defaults_to_permissive_with_credentials_and_disable_without() -> None:
    assert mode() == "PERMISSIVE"
    assert mode(credentials=False) == "DISABLE"
    only_unset = pa("default", "UNSET")
    assert mode(only_unset) == "PERMISSIVE"
    assert mode(pa("default")) == "PERMISSIVE"  # no mtls field at all: UNSET


def test_mesh_wide_policy_lives_in_the_root_namespace() -> None:
    mesh_strict = pa("default", "STRICT", namespace="istio-system")
    assert mode(mesh_strict) == "STRICT"
    assert mode(mesh_strict, namespace="prod") == "STRICT"
    # a namespace-wide policy elsewhere applies to its own namespace only
    other = pa("default", "STRICT", namespace="prod")
    assert mode(other) == "PERMISSIVE"
    assert mode(other, namespace="prod") == "STRICT"


def test_namespace_beats_mesh_and_workload_beats_namespace() -> None:
    mesh_strict = pa("mesh", "STRICT", namespace="istio-system")
    ns_disable = pa("ns", "DISABLE")
    workload_permissive = pa("wl", "PERMISSIVE", selector={"app": "reviews"})
    assert mode(mesh_strict, ns_disable) == "DISABLE"
    assert mode(mesh_strict, ns_disable, workload_permissive) == "PERMISSIVE"
    # the workload policy does not select ratings: the namespace level applies to it
    ratings = {"app": "ratings", "version": "v1"}
    assert mode(mesh_strict, ns_disable, workload_permissive, labels=ratings) == "DISABLE"


def test_unset_inherits_from_the_level_above() -> None:
    mesh_strict = pa("mesh", "STRICT", namespace="istio-system")
    ns_unset = pa("ns", "UNSET")
    workload_unset = pa("wl", "UNSET", selector={"app": "reviews"})
    assert mode(mesh_strict, ns_unset, workload_unset) == "STRICT"
    ns_disable = pa("ns", "DISABLE")
    assert mode(mesh_strict, ns_disable, workload_unset) == "DISABLE"


def test_selector_must_be_a_subset_of_the_workload_labels() -> None:
    v1_only = pa("v1-only", "STRICT", selector={"app": "reviews", "version": "v1"})
    assert mode(v1_only) == "PERMISSIVE"  # REVIEWS is v2
    assert mode(v1_only, labels={"app": "reviews", "version": "v1", "extra": "x"}) == "STRICT"
    # an empty matchLabels is namespace-wide, as in Istio
    assert mode(pa("all", "STRICT", selector={})) == "STRICT"


def test_selector_policies_in_the_root_namespace_are_ignored() -> None:
    # Istio's ComposePeerAuthentication: a root-namespace policy with a selector selects nothing
    root_selector = pa("root-wl", "STRICT", namespace="istio-system", selector={"app": "reviews"})
    assert mode(root_selector) == "PERMISSIVE"
    assert mode(root_selector, namespace="istio-system") == "PERMISSIVE"


def test_a_workload_in_the_root_namespace_takes_its_namespace_policy_as_mesh_wide() -> None:
    assert mode(pa("default", "DISABLE", namespace="istio-system"), namespace="istio-system") == (
        "DISABLE"
    )


def test_ties_go_to_the_first_by_name_at_each_level() -> None:
    # no creation times are kept: "a-..." is taken as the oldest
    assert mode(pa("b-strict", "STRICT"), pa("a-disable", "DISABLE")) == "DISABLE"
    assert (
        mode(
            pa("z-wl", "DISABLE", selector={"app": "reviews"}),
            pa("m-wl", "STRICT", selector={"version": "v2"}),
        )
        == "STRICT"
    )
    assert (
        mode(
            pa("b", "STRICT", namespace="istio-system"),
            pa("a", "DISABLE", namespace="istio-system"),
        )
        == "DISABLE"
    )


# -- port-level ----------------------------------------------------------------------------


def test_port_level_mtls_overrides_for_the_serving_port_only() -> None:
    policy = pa(
        "reviews",
        "STRICT",
        selector={"app": "reviews"},
        ports={9080: "PERMISSIVE", 15090: "DISABLE"},
    )
    assert mode(policy, port=9080) == "PERMISSIVE"
    assert mode(policy, port=15090) == "DISABLE"
    assert mode(policy, port=8080) == "STRICT"
    assert mode(policy, port=None) == "STRICT"


def test_port_level_unset_inherits_the_merged_workload_mode() -> None:
    ns_disable = pa("ns", "DISABLE")
    policy = pa("reviews", None, selector={"app": "reviews"}, ports={9080: "UNSET"})
    assert mode(ns_disable, policy, port=9080) == "DISABLE"
    merged = merge_peer_authentication(
        config(ns_disable, policy), namespace="default", labels=REVIEWS
    )
    assert merged.port_modes == {9080: "DISABLE"}
    assert merged.source_for(9080) == "default/reviews"
    assert merged.source_for(8080) == "default/ns"


def test_port_level_of_a_policy_that_does_not_select_the_workload_is_ignored() -> None:
    policy = pa("ratings", "STRICT", selector={"app": "ratings"}, ports={9080: "DISABLE"})
    assert mode(policy, port=9080) == "PERMISSIVE"


# -- credentials and overrides ---------------------------------------------------------------


def test_strict_without_credentials_fails_closed() -> None:
    strict = pa("default", "STRICT")
    result = inbound_mode(
        config(strict), namespace="default", labels=REVIEWS, port=9080, credentials=False
    )
    assert result.mode == "STRICT"
    assert result.refuses_everything
    assert not result.accepts_plaintext
    assert not result.accepts_mtls
    assert "refused" in str(result)


def test_permissive_without_credentials_serves_plaintext_only() -> None:
    result = inbound_mode(
        config(pa("default", "PERMISSIVE")),
        namespace="default",
        labels=REVIEWS,
        port=9080,
        credentials=False,
    )
    assert (result.mode, result.accepts_mtls, result.accepts_plaintext) == (
        "DISABLE",
        False,
        True,
    )


def test_override_beats_every_policy() -> None:
    strict = pa("default", "STRICT", namespace="istio-system")
    assert mode(strict, override="PERMISSIVE") == "PERMISSIVE"
    assert mode(strict, override="DISABLE") == "DISABLE"
    assert mode(override="STRICT") == "STRICT"
    with pytest.raises(ValueError, match="override"):
        resolve(MergedPeerAuthentication(), port=None, credentials=True, override="LOOSE")


def test_what_is_advertised() -> None:
    assert InboundMode("STRICT", True, "").accepts_mtls
    assert InboundMode("PERMISSIVE", True, "").accepts_mtls
    assert not InboundMode("DISABLE", True, "").accepts_mtls
    assert not InboundMode("PERMISSIVE", False, "").accepts_mtls


# -- settings --------------------------------------------------------------------------------


def test_settings_accept_the_three_modes_or_nothing(tmp_path: Path) -> None:
    assert Settings(service="reviews").mtls == ""
    for value in ("STRICT", "PERMISSIVE", "DISABLE"):
        assert Settings(service="reviews", cert_dir=tmp_path, mtls=value).mtls == value
    env = {"MESHWARE_SERVICE": "reviews", "MESHWARE_MTLS": "permissive"}
    assert Settings.from_env(env, cert_dir=tmp_path).mtls == "PERMISSIVE"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mtls": "LOOSE"}, "must be STRICT, PERMISSIVE or DISABLE"),
        ({"mtls": "STRICT"}, "STRICT needs workload credentials"),
        ({"mtls": "PERMISSIVE"}, "PERMISSIVE needs workload credentials"),
        ({"protocol_detection_timeout": 0}, "protocol_detection_timeout"),
    ],
)
def test_settings_refuse(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(service="reviews", **values)


# -- the Mesh follows its config -------------------------------------------------------------


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    ca = CertificateAuthority.init(tmp_path / "ca")
    directory = tmp_path / "reviews"
    write_credentials(directory, ca.issue("reviews"))
    return directory


def test_mesh_recomputes_its_mode_and_advertisement_on_every_config_change(
    make_mesh: Callable[..., Mesh], apply_yaml: Callable[[str], int], credentials: Path
) -> None:
    mesh = make_mesh("reviews", "v2", cert_dir=credentials, address="127.0.0.1:9080")
    assert mesh.inbound_mtls.mode == "PERMISSIVE"
    assert not mesh.advertises_mtls  # no server of meshware's enforces the mode yet
    mesh.serve_inbound(9080)
    assert mesh.advertises_mtls
    mesh.start()
    caller = make_mesh("productpage", "v1", discovery_interval=0.2).start()
    host = "reviews.default.svc.cluster.local"

    def registered_mtls() -> bool | None:
        endpoints = caller.endpoint_table.endpoints(host)
        return endpoints[0].mtls if endpoints else None

    assert wait_until(lambda: registered_mtls() is True, timeout=10)

    apply_yaml(pa("default", "DISABLE"))
    assert wait_until(lambda: mesh.inbound_mtls.mode == "DISABLE", timeout=10)
    assert not mesh.advertises_mtls
    assert wait_until(lambda: registered_mtls() is False, timeout=10)

    apply_yaml(pa("reviews", "STRICT", selector={"app": "reviews"}, ports={9080: "PERMISSIVE"}))
    assert wait_until(lambda: mesh.inbound_mtls.mode == "PERMISSIVE", timeout=10)
    assert "default/reviews port 9080" in mesh.inbound_mtls.reason
    mesh.serve_inbound(8080)  # another port: the workload-wide STRICT
    assert mesh.inbound_mtls.mode == "STRICT"
    assert wait_until(lambda: registered_mtls() is True, timeout=10)


def test_mesh_override_ignores_the_config(
    make_mesh: Callable[..., Mesh], apply_yaml: Callable[[str], int], credentials: Path
) -> None:
    apply_yaml(pa("default", "STRICT", namespace="istio-system"))
    mesh = make_mesh("reviews", "v2", cert_dir=credentials, mtls="DISABLE").start()
    assert wait_until(lambda: mesh.snapshot.loaded, timeout=10)
    assert mesh.inbound_mtls.mode == "DISABLE"
    assert mesh.inbound_mtls.reason == "override"
