"""The audit trail is read-only through the API: a pipeline rule refuses every write
of an AuditEvent (create, update, patch, delete, in a transaction or batch, by an
importer), since storage's write is the one path all of them take. The server's own
records go in through the sink, which does not use that path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fhir_server.outcome import FhirError
from fhir_server.workflows.pipeline import Rule, Write


class ReadOnlyAudit(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"AuditEvent"})

    async def before_write(self, writes: Sequence[Write]) -> None:
        for w in writes:
            raise FhirError.of(
                405,
                "not-supported",
                "AuditEvent records are written by this server alone and never change: "
                "read and search them",
                w.type,
            )
