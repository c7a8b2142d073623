"""The scheduling operations as the CapabilityStatement declares them
(``rest.resource[Appointment].operation``): Argonaut Scheduling's $find, $hold and $book (its
R4 form), and this server's $cancel."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_ARGONAUT = "http://fhir.org/guides/argonaut/scheduling/OperationDefinition"

APPOINTMENT_OPERATIONS: tuple[Mapping[str, str], ...] = (
    MappingProxyType({"name": "find", "definition": f"{_ARGONAUT}/appointment-find"}),
    MappingProxyType({"name": "hold", "definition": f"{_ARGONAUT}/appointment-hold"}),
    MappingProxyType({"name": "book", "definition": f"{_ARGONAUT}/appointment-book"}),
    MappingProxyType(
        {"name": "cancel", "definition": "urn:fhir-server:OperationDefinition/appointment-cancel"}
    ),
)
