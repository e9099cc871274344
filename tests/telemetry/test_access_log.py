"""Access logs: the CEL filter subset, the Telemetry policy (hierarchy, modes, disabled),
the JSON line format and the sink (buffered, never raising into the request path)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import load_yaml, parse_documents
from meshware.errors import ConfigError
from meshware.telemetry.access_log import (
    FIELDS,
    AccessLogSink,
    access_log_policy,
    filter_attributes,
    format_line,
)
from meshware.telemetry.cel import CelError, compile_filter


def attributes(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "method": "GET",
        "path": "/reviews/1?x=1",
        "host": "reviews:9080",
        "scheme": "http",
        "protocol": "HTTP/1.1",
        "headers": {"x-request-id": "abc", "user-agent": "curl/8", "x-user": "jason"},
        "code": 200,
        "flags": "",
        "request_size": 0,
        "response_size": 120,
        "duration_ms": 3.5,
        "source_address": "127.0.0.1:5000",
        "source_principal": "spiffe://cluster.local/ns/default/sa/productpage",
        "upstream_address": None,
        "sampled": False,
        "direction": "inbound",
    }
    values.update(overrides)
    return filter_attributes(**values)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("response.code >= 400", False),
        ("response.code == 200", True),
        ("response.code >= 400 || request.method == 'GET'", True),
        ("response.code >= 400 && request.method == 'GET'", False),
        ("!(response.code >= 400)", True),
        ("request.headers['x-user'] == 'jason'", True),
        ("request.headers['X-User'] == 'jason'", True),  # header names are case-insensitive
        ("request.headers['x-missing'] == 'a'", False),  # a missing attribute: not logged
        ("request.headers['x-missing'] == 'a' || response.code == 200", True),  # absorbed by ||
        ("request.headers['x-missing'] == 'a' && response.code == 500", False),
        ("request.url_path.startsWith('/reviews')", True),
        ("request.url_path.endsWith('/2')", False),
        ("request.path.contains('x=1')", True),
        ("response.code in [500, 502, 503]", False),
        ("request.method in ['GET', 'HEAD']", True),
        ("has(request.headers['x-user'])", True),
        ("has(request.headers['x-nope'])", False),
        ("size(request.url_path) == 10", True),
        ("connection.mtls && source.principal.endsWith('/sa/productpage')", True),
        ("meshware.duration_ms > 2.5", True),
        ("response.code == 200 ? request.method == 'GET' : false", True),
        ("response.code < 'a'", False),  # a type error evaluates to "not logged"
        ("response.code", False),  # not a boolean
        ("-response.code < 0", True),
        ('request.headers["user-agent"] == "curl/8"', True),
        ("int(meshware.duration_ms) == 3", True),
        ("string(response.code) == '200'", True),
    ],
)
def test_filter_expressions(expression: str, expected: bool) -> None:
    assert compile_filter(expression)(attributes()) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("response.code >=", "position"),
        ("response.code = 400", "unexpected character '='"),
        ("request.method.lower()", "unsupported method 'lower'"),
        ("exists(response.code)", "unsupported function 'exists'"),
        ("(response.code == 1", r"expected '\)'"),
        ("response.code == 1 2", "unexpected 2"),
        ("a.startsWith('x', 'y')", r"takes one argument"),
        ("`", "unexpected character"),
        ("x" * 5000, "longer than 4096"),
    ],
)
def test_unsupported_or_malformed_expressions_are_refused_with_the_position(
    expression: str, message: str
) -> None:
    with pytest.raises(CelError, match=message):
        compile_filter(expression)


def telemetry(name: str, spec: str, namespace: str = "default") -> str:
    return (
        f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )


def config(text: str) -> MeshConfig:
    return parse_documents(load_yaml(text, "test.yaml"))


def test_access_logging_is_off_without_a_telemetry_resource() -> None:
    policy = access_log_policy(MeshConfig(), "default", {"app": "reviews"})
    assert policy.inbound is None and policy.outbound is None


def test_the_most_specific_telemetry_wins_and_modes_pick_directions() -> None:
    text = (
        telemetry("mesh", "  accessLogging: [{providers: [{name: envoy}]}]", "istio-system")
        + telemetry(
            "ns",
            "  accessLogging:\n  - match: {mode: SERVER}\n"
            "    filter: {expression: 'response.code >= 500'}",
        )
        + telemetry(
            "reviews",
            "  selector: {matchLabels: {app: reviews}}\n"
            "  accessLogging:\n  - match: {mode: CLIENT}\n  - match: {mode: SERVER}\n"
            "    disabled: true",
        )
    )
    parsed = config(text)
    # reviews: its own resource; inbound disabled, outbound logs everything
    reviews = access_log_policy(parsed, "default", {"app": "reviews"})
    assert reviews.inbound is None
    assert reviews.outbound is not None and reviews.outbound.wants(None)
    # ratings in the same namespace: the namespace-wide one, server side, 5xx only
    ratings = access_log_policy(parsed, "default", {"app": "ratings"})
    assert ratings.outbound is None
    assert ratings.inbound is not None
    assert not ratings.inbound.wants(attributes())
    assert ratings.inbound.wants(attributes(code=503))
    # another namespace: the mesh-wide one, both directions
    other = access_log_policy(parsed, "shop", {"app": "cart"})
    assert other.inbound is not None and other.outbound is not None


def test_a_bad_filter_expression_is_a_config_error_naming_the_field() -> None:
    text = telemetry("bad", "  accessLogging:\n  - filter: {expression: 'response.code >=> 400'}")
    with pytest.raises(ConfigError) as error:
        config(text)
    assert "accessLogging[0].filter.expression" in str(error.value)
    assert "position" in str(error.value)


def test_a_line_has_every_field_in_order_with_envoy_conventions() -> None:
    line = format_line(
        {
            "start_time": 1767225600.25,
            "method": "GET",
            "path": "/reviews/1",
            "response_code": 200,
            "response_flags": "",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        }
    )
    entry = json.loads(line)
    assert list(entry) == list(FIELDS)
    assert entry["start_time"] == "2026-01-01T00:00:00.250Z"
    assert entry["response_flags"] == "-"
    assert entry["upstream_host"] is None
    assert "\n" not in line


def test_the_sink_buffers_writes_and_flushes_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLogSink(path=str(path))
    for code in (200, 503):
        sink.write({"start_time": 0.0, "response_code": code})
    sink.flush()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["response_code"] for line in lines] == [200, 503]
    sink.close()
    assert sink.written == 2 and sink.dropped == 0


def test_a_broken_sink_drops_lines_and_never_raises() -> None:
    stream = io.StringIO()
    sink = AccessLogSink(stream)
    sink.write({"response_code": 200})
    stream.close()
    sink.write({"response_code": 200})  # the stream is closed: dropped, no exception
    sink.flush()
    assert sink.written == 1 and sink.dropped == 1
