"""A report's view run over the stored data, within what the token may read, with the
period pushed into the MongoDB query.

Authorization is ``ViewRunService``'s own (fhir_server/views/run.py): its stored-data
source applies the SMART restriction for read and search on the view's type (403
without them), a ``patient/`` token's compartment, and the ``patient`` parameter's
checks. This module only narrows the query further, with the report's search criteria
(the period as ``date=ge…&date=le…``, a status) compiled by the search engine into
conditions on the stored index, so a year's report reads that year's resources of one
type through the index instead of scanning the collection.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from fhir_server.authz.policy import Policy
from fhir_server.jsonio import load_stored
from fhir_server.offload import Offload, checkpoint
from fhir_server.search.registry import Registry
from fhir_server.storage import Storage
from fhir_server.views.engine import Row, View
from fhir_server.views.output import FORMATS
from fhir_server.views.pushdown import index_filter
from fhir_server.views.run import RunRequest, ViewRunService


async def view_rows(
    view: View,
    criteria: Iterable[tuple[str, str]],
    policy: Policy,
    storage: Storage,
    registry: Registry,
    offload: Offload,
    patient: str | None = None,
) -> list[Row]:
    """Every row of ``view`` over the stored resources matching ``criteria`` that the
    token may read and search (a patient's compartment with ``patient``)."""
    narrow = index_filter(registry, view.resource_type, criteria)
    source = ViewRunService(storage, registry, offload)
    request = RunRequest(
        view=view, view_at="ViewDefinition", format=FORMATS["json"], patient=patient
    )
    batches = await source.stored_batches(request, policy, narrow)
    rows: list[Row] = []
    try:
        async for batch in batches:
            rows += await offload.call(_rows, view, batch)
    finally:
        await batches.aclose()
    return rows


def _rows(view: View, batch: list[Any]) -> list[Row]:
    found: list[Row] = []
    for item in batch:
        checkpoint()
        resource = load_stored(item) if isinstance(item, bytes) else item
        found.extend(view.rows(resource))
    return found


def day_of(value: Any) -> date | None:
    """The calendar date a date, dateTime or instant is written on (its own offset: the
    clinic's local day, as the workflows write it)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    text = value[:10]
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text)
    except ValueError:
        return None
