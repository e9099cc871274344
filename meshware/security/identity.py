"""SPIFFE workload identities: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``.

This is Istio's identity format (``sa`` is the Kubernetes service account; in meshware it is the
service name). Parsing is strict: a malformed ID is never half-read into something that could
match an authorization rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

__all__ = ["SpiffeId", "spiffe_ids_of"]

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PATH = re.compile(r"^/ns/([^/]+)/sa/([^/]+)$")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """One workload identity."""

    trust_domain: str
    namespace: str
    service: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain):
            raise ValueError(f"invalid SPIFFE trust domain {self.trust_domain!r}")
        for name, value in (("namespace", self.namespace), ("service", self.service)):
            if not _SEGMENT.match(value):
                raise ValueError(f"invalid {name} {value!r} for a SPIFFE ID")

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Read ``spiffe://td/ns/NS/sa/NAME``; ``ValueError`` for anything else."""
        scheme, sep, rest = uri.partition("://")
        if scheme != "spiffe" or not sep:
            raise ValueError(f"not a SPIFFE ID: {uri!r}")
        domain, slash, path = rest.partition("/")
        match = _PATH.match(slash + path)
        if match is None:
            raise ValueError(f"not a workload SPIFFE ID (/ns/NS/sa/NAME): {uri!r}")
        return cls(domain, match.group(1), match.group(2))


def spiffe_ids_of(certificate: x509.Certificate) -> list[str]:
    """The ``spiffe://`` URI SANs of a certificate (a valid SVID has exactly one)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        uri
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith("spiffe://")
    ]
