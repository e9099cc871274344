"""The AuthorizationPolicy engine: Istio's ALLOW/DENY/AUDIT semantics for one workload.

:meth:`Authorizer.compile` picks the policies that apply to a workload and turns them into
plain tuples and set/prefix/suffix matchers, once per config version; :meth:`Authorizer.check`
then decides one request in a single loop over them: no regex is compiled, nothing is parsed
but the path, and the verdicts returned are precomputed. The module is pure: it neither reads the config channel nor answers requests (the
middleware does, with :data:`DENIED_STATUS`/:data:`DENIED_BODY`, or
:data:`MALFORMED_STATUS`/:data:`MALFORMED_BODY` when :attr:`Verdict.malformed`).

Which policies apply (Istio's rules): those in the workload's namespace whose ``selector``
matches its labels or that have none, and those in the root namespace ``istio-system``
without a selector (mesh-wide) or whose selector matches the workload's labels, whatever
its namespace.

How a request is decided (Istio's order; CUSTOM is refused by the parser):

1. AUDIT policies never change the decision; when one matches, ``audit=True``.
2. If any DENY policy matches, the request is denied.
3. If no ALLOW policy applies to the workload, the request is allowed.
4. If any ALLOW policy matches, the request is allowed; otherwise it is denied.

A policy matches when one of its rules does. A rule matches when (any ``from`` source matches,
or there is none) and (any ``to`` operation matches, or there is none) and every ``when``
condition matches; so ``rules: [{}]`` matches everything and an ALLOW policy without rules
(``spec: {}``) applies but never matches: it denies everything. Inside a source, operation or
condition every set field must match, and a field matches when the request's value matches
any of ``values`` (if set) and none of ``notValues`` (if set).

A value that the request does not have (no peer identity on a plaintext request, a header
that is absent, no ``Host``) never matches ``values`` and is never excluded by ``notValues``:
Envoy's ``not_id``/``not_rule`` around a matcher that fails. So ``notPrincipals: ["*"]``
matches exactly the plaintext requests (Istio's way to refuse them with DENY), and
``notNamespaces: ["foo"]`` lets a plaintext caller from ``foo`` through (ISTIO-SECURITY-2021-004).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from meshware.config.model.common import WorkloadSelector
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.security import (
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    ValueMatch,
)
from meshware.security.paths import canonical_escapes, normalize_path
from meshware.security.selection import ROOT_NAMESPACE

__all__ = [
    "DENIED_BODY",
    "DENIED_STATUS",
    "MALFORMED_BODY",
    "MALFORMED_STATUS",
    "ROOT_NAMESPACE",
    "Authorizer",
    "AuthzRequest",
    "Verdict",
    "applicable_policies",
]

DENIED_STATUS: Final = 403
DENIED_BODY: Final = b"RBAC: access denied"
"""What Envoy answers a request denied by an authorization policy."""

MALFORMED_STATUS: Final = 400
MALFORMED_BODY: Final = b"Bad Request"
"""The answer to a request refused before any policy is consulted (:attr:`Verdict.malformed`)."""

_SPIFFE: Final = "spiffe://"


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """What authorization looks at in one inbound request."""

    method: str
    """As received; a method with lower-case letters is refused as malformed (Istio does)."""
    path: str
    """The raw request target path, *not* percent-decoded (ASGI ``scope["raw_path"]``)."""
    host: str
    """The ``Host`` header (``:authority``) as received, port included; ``""`` when absent."""
    port: int
    """The destination port the request arrived on."""
    headers: Mapping[str, str]
    """Lower-case names; repeated headers joined with ``","`` (as Envoy does)."""
    principal: str | None
    """The caller's verified SPIFFE ID (``spiffe://cluster.local/ns/default/sa/reviews``), or
    None for a plaintext request."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one request."""

    allowed: bool
    audit: bool
    """An AUDIT policy matched (to be marked in the access log)."""
    policy: str
    """``namespace/name`` of the deciding policy; ``""`` when decided by default."""
    reason: str
    """Short, for logs: ``denied by DENY policy default/deny-admin``."""
    malformed: bool = False
    """Refused before any policy was consulted (a path Istio answers 400 to): not a 403."""

    @property
    def status(self) -> int:
        """The HTTP status to answer with when not allowed (200 when allowed)."""
        if self.allowed:
            return 200
        return MALFORMED_STATUS if self.malformed else DENIED_STATUS


# -- compiled form ---------------------------------------------------------------------------

_Match = Callable[[str], bool]

# Slots of the per-request attribute tuple; _HEADER reads request.headers[name] instead.
_METHOD, _PATH, _HOST, _PORT, _PRINCIPAL, _NAMESPACE, _HEADER = range(7)

# One field: (slot, header name or "", values matcher or None, notValues matcher or None).
_Test = tuple[int, str, _Match | None, _Match | None]
# Fields that must all match: one source, one operation, or every condition of a rule.
_Tests = tuple[_Test, ...]
# Alternatives of which one must match: a rule's sources, or its operations.
_Group = tuple[_Tests, ...]
# A rule matches when every group has a matching alternative; () matches everything.
_Rule = tuple[_Group, ...]


def _anything(_: str) -> bool:
    return True


def _non_empty(value: str) -> bool:
    return value != ""


def _matcher(
    values: Iterable[ValueMatch],
    *,
    present_if_empty: bool = False,
    lower: bool = False,
    path: bool = False,
) -> _Match | None:
    """One OR-ed list of Istio values as a single test; None for an empty list.

    ``*`` matches any non-empty value, or any value at all with ``present_if_empty`` (header
    and host ``*`` is Envoy's ``present_match``: the header exists, even empty).
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    seen = False
    for value in values:
        seen = True
        if value.kind == "present":
            return _anything if present_if_empty else _non_empty
        text = value.value.lower() if lower else value.value
        if path:
            text = canonical_escapes(text)
        if value.kind == "exact":
            exact.add(text)
        elif value.kind == "prefix":
            prefixes.append(text)
        else:
            suffixes.append(text)
    if not seen:
        return None
    exacts, starts, ends = frozenset(exact), tuple(prefixes), tuple(suffixes)
    # One specialisation per combination: no empty set or tuple is ever consulted.
    if not starts and not ends:
        return exacts.__contains__
    if not exacts and not ends:
        return lambda candidate: candidate.startswith(starts)
    if not exacts and not starts:
        return lambda candidate: candidate.endswith(ends)
    if not ends:
        return lambda candidate: candidate in exacts or candidate.startswith(starts)
    if not starts:
        return lambda candidate: candidate in exacts or candidate.endswith(ends)
    if not exacts:
        return lambda candidate: candidate.startswith(starts) or candidate.endswith(ends)
    return lambda candidate: (
        candidate in exacts or candidate.startswith(starts) or candidate.endswith(ends)
    )


def _ports(ports: tuple[int, ...]) -> _Match | None:
    return frozenset(str(port) for port in ports).__contains__ if ports else None


def _field(
    tests: list[_Test], slot: int, positive: _Match | None, negative: _Match | None, name: str = ""
) -> None:
    if positive is not None or negative is not None:
        tests.append((slot, name, positive, negative))


def _source(source: Source) -> _Tests:
    tests: list[_Test] = []
    _field(tests, _PRINCIPAL, _matcher(source.principals), _matcher(source.not_principals))
    _field(tests, _NAMESPACE, _matcher(source.namespaces), _matcher(source.not_namespaces))
    return tuple(tests)


def _operation(operation: Operation) -> _Tests:
    tests: list[_Test] = []
    # Cheapest and most selective first: ports and methods are small exact sets.
    _field(tests, _PORT, _ports(operation.ports), _ports(operation.not_ports))
    _field(
        tests,
        _METHOD,
        _matcher(operation.methods, present_if_empty=True),
        _matcher(operation.not_methods, present_if_empty=True),
    )
    _field(
        tests,
        _PATH,
        _matcher(operation.paths, path=True),
        _matcher(operation.not_paths, path=True),
    )
    _field(
        tests,
        _HOST,
        _matcher(operation.hosts, lower=True, present_if_empty=True),
        _matcher(operation.not_hosts, lower=True, present_if_empty=True),
    )
    return tuple(tests)


_CONDITION_SLOTS: Final = {
    "request.headers": _HEADER,
    "source.principal": _PRINCIPAL,
    "source.namespace": _NAMESPACE,
    "destination.port": _PORT,
}


def _condition(condition: Condition) -> _Test | None:
    header = condition.key == "request.headers"
    positive = _matcher(condition.values, present_if_empty=header)
    negative = _matcher(condition.not_values, present_if_empty=header)
    if positive is None and negative is None:
        return None
    return (_CONDITION_SLOTS[condition.key], condition.header.lower(), positive, negative)


def _rule(rule: Rule) -> _Rule:
    """A rule as groups, cheapest first: sources (any), conditions (all), operations (any)."""
    groups: list[_Group] = []
    if rule.sources:
        groups.append(tuple(_source(source) for source in rule.sources))
    conditions = tuple(test for test in map(_condition, rule.conditions) if test is not None)
    if conditions:
        groups.append((conditions,))
    if rule.operations:
        groups.append(tuple(_operation(operation) for operation in rule.operations))
    return tuple(groups)


def _any_rule(
    rules: tuple[_Rule, ...], attrs: tuple[str | None, ...], headers: Mapping[str, str]
) -> bool:
    """Whether one of ``rules`` matches: the whole evaluation, in one frame, no allocation.

    A rule matches when each of its groups has an alternative whose fields all match. A
    field matches when its value matches ``positive`` (if set) and not ``negative`` (if
    set); an absent value (None) fails ``positive`` and is never excluded by ``negative``.
    """
    for rule in rules:
        for group in rule:
            for tests in group:
                for slot, name, positive, negative in tests:
                    value = headers.get(name) if slot == _HEADER else attrs[slot]
                    if value is None:
                        if positive is not None:
                            break
                    elif (positive is not None and not positive(value)) or (
                        negative is not None and negative(value)
                    ):
                        break
                else:
                    break  # every field of this alternative matched: the group is satisfied
            else:
                break  # no alternative of this group matched: the rule fails
        else:
            return True  # every group satisfied
    return False


@dataclass(frozen=True, slots=True)
class _Policy:
    ref: str
    rules: tuple[_Rule, ...]
    always: bool
    """A rule without from/to/when: the policy matches every request."""
    verdicts: tuple[Verdict, Verdict]
    """The verdict this policy gives, indexed by ``audit``."""

    def matches(self, attrs: tuple[str | None, ...], headers: Mapping[str, str]) -> bool:
        return self.always or _any_rule(self.rules, attrs, headers)


def _verdicts(allowed: bool, policy: str, reason: str) -> tuple[Verdict, Verdict]:
    return (Verdict(allowed, False, policy, reason), Verdict(allowed, True, policy, reason))


def _compile_policy(resource: AuthorizationPolicy) -> _Policy:
    ref = f"{resource.metadata.namespace}/{resource.metadata.name}"
    action = resource.spec.action
    if action == "DENY":
        verdicts = _verdicts(False, ref, f"denied by DENY policy {ref}")
    elif action == "ALLOW":
        verdicts = _verdicts(True, ref, f"allowed by ALLOW policy {ref}")
    else:  # AUDIT: never decides
        verdicts = _verdicts(True, ref, f"audited by AUDIT policy {ref}")
    rules = tuple(_rule(rule) for rule in resource.spec.rules)
    always = any(not rule for rule in rules)
    return _Policy(ref, () if always else rules, always, verdicts)


_ALLOWED_BY_DEFAULT: Final = _verdicts(True, "", "allowed: no ALLOW policy applies")
_DENIED_BY_DEFAULT: Final = _verdicts(False, "", "denied: no ALLOW policy matched")
_MALFORMED_PATH: Final = Verdict(False, False, "", "malformed request path", malformed=True)
_MALFORMED_METHOD: Final = Verdict(
    False, False, "", "malformed request method (not upper case)", malformed=True
)


def _selects(selector: WorkloadSelector | None, labels: Mapping[str, str]) -> bool:
    return selector is None or all(
        labels.get(key) == value for key, value in selector.match_labels.items()
    )


def applicable_policies(
    config: MeshConfig, *, namespace: str, labels: Mapping[str, str]
) -> tuple[AuthorizationPolicy, ...]:
    """The AuthorizationPolicies that apply to a workload, in (namespace, name) order.

    Those in ``namespace`` and in the root namespace whose selector matches ``labels`` or
    that have none (an empty ``matchLabels`` selects every workload).
    """
    return tuple(
        policy
        for policy in config.of(AuthorizationPolicy)
        if policy.metadata.namespace in (namespace, ROOT_NAMESPACE)
        and _selects(policy.spec.selector, labels)
    )


@lru_cache(maxsize=1024)
def _identity(principal: str | None) -> tuple[str | None, str | None]:
    """(principal without ``spiffe://``, namespace from ``/ns/<namespace>/``), or Nones."""
    if principal is None:
        return None, None
    if principal.startswith(_SPIFFE):
        principal = principal[len(_SPIFFE) :]
    # trust-domain / "ns" / namespace / rest: Istio's namespace match is ".*/ns/NS/.*".
    parts = principal.split("/", 3)
    if len(parts) == 4 and parts[1] == "ns" and parts[2]:
        return principal, parts[2]
    return principal, None


class Authorizer:
    """The AuthorizationPolicies of one workload, compiled for :meth:`check`.

    Immutable once built; recompile on every config change. Thread-safe.
    """

    __slots__ = ("_allow", "_audit", "_deny", "_empty", "_has_allow", "_headers", "_refs")

    def __init__(self, policies: Iterable[AuthorizationPolicy]) -> None:
        """Compile ``policies``, all taken to apply (see :func:`applicable_policies`)."""
        audit: list[_Policy] = []
        deny: list[_Policy] = []
        allow: list[_Policy] = []
        refs: list[str] = []
        for resource in policies:
            compiled = _compile_policy(resource)
            refs.append(compiled.ref)
            target = {"AUDIT": audit, "DENY": deny, "ALLOW": allow}[resource.spec.action]
            target.append(compiled)
        self._refs = tuple(refs)
        # An ALLOW policy without rules still *applies* (deny-by-default) but never matches;
        # an AUDIT or DENY policy without rules has no effect at all.
        self._has_allow = bool(allow)
        self._allow = tuple(p for p in allow if p.always or p.rules)
        self._deny = tuple(p for p in deny if p.always or p.rules)
        self._audit = tuple(p for p in audit if p.always or p.rules)
        self._empty = not (self._has_allow or self._deny or self._audit)
        self._headers = frozenset(
            name
            for policy in (*self._audit, *self._deny, *self._allow)
            for rule in policy.rules
            for group in rule
            for tests in group
            for slot, name, _, _ in tests
            if slot == _HEADER
        )

    @classmethod
    def compile(
        cls, config: MeshConfig, *, namespace: str, labels: Mapping[str, str]
    ) -> Authorizer:
        """The policies of ``config`` that apply to the workload ``namespace``/``labels``."""
        return cls(applicable_policies(config, namespace=namespace, labels=labels))

    @property
    def empty(self) -> bool:
        """No policy has an effect: every request is allowed, :meth:`check` can be skipped."""
        return self._empty

    @property
    def header_names(self) -> frozenset[str]:
        """The (lower-case) headers that ``when`` conditions read: all ``check()`` needs."""
        return self._headers

    @property
    def policies(self) -> tuple[str, ...]:
        """``namespace/name`` of every applicable policy (for logs and status)."""
        return self._refs

    def __repr__(self) -> str:
        return f"Authorizer({', '.join(self._refs) or 'no policies'})"

    def check(self, request: AuthzRequest) -> Verdict:
        """Decide one request (see the module docstring for the order and matching rules).

        With no policy the request is allowed untouched. Otherwise a method with lower-case
        letters, or a path :func:`~meshware.security.paths.normalize_path` refuses, gives a
        :attr:`Verdict.malformed` denial (answer 400) before any policy is consulted.
        """
        if self._empty:
            return _ALLOWED_BY_DEFAULT[False]
        method = request.method
        if not method or method.upper() != method:
            return _MALFORMED_METHOD
        path = normalize_path(request.path)
        if path is None:
            return _MALFORMED_PATH
        principal, namespace = _identity(request.principal)
        attrs = (
            method,
            path,
            request.host.lower() or None,
            str(request.port),
            principal,
            namespace,
        )
        headers = request.headers

        audit = False
        for policy in self._audit:
            if policy.matches(attrs, headers):
                audit = True
                break
        for policy in self._deny:
            if policy.matches(attrs, headers):
                return policy.verdicts[audit]
        if not self._has_allow:
            return _ALLOWED_BY_DEFAULT[audit]
        for policy in self._allow:
            if policy.matches(attrs, headers):
                return policy.verdicts[audit]
        return _DENIED_BY_DEFAULT[audit]
