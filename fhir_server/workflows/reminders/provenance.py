"""Every change a patient's reply causes gets a Provenance naming the patient as agent
and the message (a Communication) as its source, in the change's own transaction.

The replies write with ``request_acting`` set (pipeline.py). An Appointment status
change or move is already logged by the action log (scheduling/actions.py) with that
agent and source; this rule logs the rest: a participant's acceptance, the Task asking
staff to reschedule, a Patient's opt-out.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

from fhir_server.datetimes import format_instant
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.actions import activity

_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_AUTHOR = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


class ReplyProvenance(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"Appointment", "Patient", "Task"})
    creates: ClassVar[frozenset[str]] = frozenset({"Provenance"})

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        for w in writes:
            acting = w.context.acting
            if acting is None or w.rewrite or w.new is None:
                continue
            if w.type == "Appointment" and activity(w) is not None:
                continue  # the action log has it
            code = "CREATE" if w.previous is None else "UPDATE"
            found: dict[str, Any] = {
                "resourceType": "Provenance",
                "target": [{"reference": f"{w.type}/{w.id}/_history/{w.version}"}],
                "recorded": format_instant(w.last_updated),
                "activity": {"coding": [{"system": _OPERATION, "code": code}]},
                "agent": [
                    {
                        "type": {"coding": [{"system": _AUTHOR, "code": "author"}]},
                        "who": acting.who,
                    }
                ],
            }
            if acting.source is not None:
                found["entity"] = [{"role": "source", "what": acting.source}]
            millis = int(w.last_updated.timestamp() * 1000)
            tx.create(found, w.last_updated, f"{millis:012x}-{uuid.uuid4().hex[:20]}")
