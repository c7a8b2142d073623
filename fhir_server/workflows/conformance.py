"""A workflow's OperationDefinitions: JSON files in its ``conformance/`` directory,
installed as stored resources at start-up (fhir_server/service/shipped.py), so each
``definition`` canonical the CapabilityStatement declares resolves on this server
(``GET OperationDefinition?url=...``). The files are the one source: the declarations
(``rest.resource[type].operation``, ``rest.operation``) are read from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fhir_server.service.shipped import Shipment, digest_of


class Operations:
    """The OperationDefinitions of one workflow, in the order ``order`` gives (codes)."""

    def __init__(self, directory: Path, what: str, marker: str, order: tuple[str, ...]) -> None:
        self.directory = directory
        self.what = what
        self.marker = marker
        self.order = order

    @cached_property
    def _files(self) -> tuple[tuple[Path, bytes], ...]:
        return tuple((p, p.read_bytes()) for p in sorted(self.directory.glob("*.json")))

    def definitions(self) -> list[dict[str, Any]]:
        found = [json.loads(raw) for _, raw in self._files]
        return sorted(found, key=lambda d: self.order.index(d["code"]))

    def raw(self) -> tuple[bytes, ...]:
        return tuple(raw for _, raw in self._files)

    def shipment(self) -> Shipment:
        return shipment_of(self.what, self.marker, [self])

    def on(self, resource_type: str) -> tuple[Mapping[str, str], ...]:
        """The declarations for ``rest.resource[resource_type].operation``."""
        return tuple(
            _declared(d)
            for d in self.definitions()
            if resource_type in d.get("resource", ()) and (d.get("type") or d.get("instance"))
        )

    def system(self) -> tuple[Mapping[str, str], ...]:
        """The declarations for ``rest.operation`` (system-level operations)."""
        return tuple(_declared(d) for d in self.definitions() if d.get("system"))


def _declared(definition: dict[str, Any]) -> Mapping[str, str]:
    return MappingProxyType({"name": definition["code"], "definition": definition["url"]})


def shipment_of(what: str, marker: str, sets: list[Operations]) -> Shipment:
    """One shipment of the OperationDefinitions of several workflows."""
    return Shipment(
        what=what,
        marker=marker,
        resources=[d for ops in sets for d in ops.definitions()],
        digest=digest_of(*(raw for ops in sets for raw in ops.raw())),
    )
