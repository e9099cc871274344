"""Parsers for ``networking.istio.io`` resources: VirtualService, DestinationRule, ServiceEntry.

Validation follows Istio's own (``pkg/config/validation``) wherever meshware implements the
feature; every Istio field meshware does not implement is declared with
:meth:`Node.unsupported` so that it is rejected with a reason instead of ignored.
"""

from meshware.config.model.networking import DestinationRule, ServiceEntry, VirtualService
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.networking.destination_rule import parse_destination_rule
from meshware.config.parse.networking.service_entry import parse_service_entry
from meshware.config.parse.networking.virtual_service import parse_virtual_service

NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")

KINDS: tuple[KindSpec, ...] = (
    KindSpec(VirtualService, NETWORKING_VERSIONS, parse_virtual_service),
    KindSpec(DestinationRule, NETWORKING_VERSIONS, parse_destination_rule),
    KindSpec(ServiceEntry, NETWORKING_VERSIONS, parse_service_entry),
)

__all__ = [
    "KINDS",
    "NETWORKING_VERSIONS",
    "parse_destination_rule",
    "parse_service_entry",
    "parse_virtual_service",
]
