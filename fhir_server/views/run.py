"""``$viewdefinition-run`` (SQL on FHIR v2, OperationDefinition ViewDefinitionRun): a
ViewDefinition run over resources sent with it or over the server's data, answered as
JSON, NDJSON, CSV or Parquet (``output``). api/views.py serves it; this module knows the
operation's parameters and where the resources come from, nothing of HTTP.

Parameters (a Parameters body; the scalar ones may also be URL parameters):

- ``viewResource``: the ViewDefinition itself, or ``viewReference``: a stored one
  (``ViewDefinition/<id>``, ``.../_history/<vid>``, or a canonical ``url|version``),
  resolved by the caller's ``resolve`` (views/store.py ``ViewStore.resolve``, which
  applies the token's read access); exactly one of the two, or neither at the instance
  level (``ViewDefinition/[id]/$run``: the view is the one at ``[id]``). ``group`` and
  ``source`` are not supported;
- ``resource`` (repeating): the resources to run over; when present, only those;
- ``patient`` (Reference ``Patient/<id>``): only resources of that patient's compartment;
- ``_since`` (instant): only resources whose lastUpdated is at or after it;
- ``_limit`` (positive integer): at most that many rows;
- ``_format`` (json, ndjson, csv, parquet, or their media types; else ``Accept``; else
  json) and ``header`` (boolean, csv only, default true).

Without ``resource`` the view runs over the current versions of its type, read with one
MongoDB cursor in ``_id`` order, a batch at a time, within what the token may read and
search (the restriction a search by this token gets: a patient's record, a granular
scope's category). Each batch is evaluated and encoded in the offload pool, so a long
run never holds the event loop. Rows are held back until the first one exists: an error
before it (an invalid view, a column with several values but no ``collection``) is an
OperationOutcome with a status; one on a later batch can only cut the stream short.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.authz.policy import Filter, Policy, all_of
from fhir_server.datetimes import parse_range
from fhir_server.digits import whole_number
from fhir_server.jsonio import load_stored
from fhir_server.offload import Offload, checkpoint
from fhir_server.outcome import FhirError
from fhir_server.resource_types import is_valid_id
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.service.context import request_base_url
from fhir_server.service.parameters import Parameter
from fhir_server.storage import Storage
from fhir_server.views.engine import Row, View, compile_view
from fhir_server.views.errors import ViewDefinitionError, ViewError
from fhir_server.views.output import FORMATS, Encoder, Format, encoder_for, format_named
from fhir_server.views.pushdown import where_filter

# The statuses of the two kinds of client error: a ViewDefinition that is invalid or
# fails on the resources, and a parameter that is missing, malformed or not supported.
INVALID_VIEW = 422
BAD_PARAMETER = 400

BATCH = 500  # resources per cursor batch and per offloaded evaluation
# The first evaluation's resources from the database: the first row goes out after these,
# not after a whole batch (~300 us a resource: 500 took the first row past 200 ms).
FIRST_BATCH = 50

Progress = Callable[[int], None]  # told the resources of each batch read

OPERATION = "$viewdefinition-run"
SCALARS = ("_format", "header", "patient", "_since", "_limit")
NOT_YET = {
    "group": "the group parameter is not supported yet",
    "source": "external data sources (source) are not supported",
}


@dataclass(frozen=True, slots=True)
class RunRequest:
    view: View
    view_at: str  # where the ViewDefinition is in the request, for error expressions
    format: Format
    header: bool = True
    resources: tuple[Any, ...] | None = None  # inline resources (None: the server's data)
    resources_at: tuple[str, ...] = ()  # where each inline resource is in the request
    patient: str | None = None
    patient_at: str = "patient"  # where the patient parameter is, for error expressions
    since: datetime | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    media_type: str
    chunks: AsyncIterator[bytes]


def bad_parameter(message: str, *where: str, code: str = "invalid") -> FhirError:
    return FhirError.of(BAD_PARAMETER, code, message, *where)


def view_error(exc: ViewError, view_at: str) -> FhirError:
    """A view error as an OperationOutcome, its expression rooted where the
    ViewDefinition is in the request (``Parameters.parameter[0].resource.select[0]...``)."""
    where = exc.expression
    if where.startswith("ViewDefinition"):
        where = view_at + where[len("ViewDefinition") :]
    if isinstance(exc, ViewDefinitionError):
        return FhirError.of(
            INVALID_VIEW, "invalid", f"Invalid ViewDefinition: {exc.message}", where
        )
    return FhirError.of(
        INVALID_VIEW, "processing", f"The ViewDefinition failed: {exc.message}", where
    )


# --- parameters -------------------------------------------------------------------------


# A stored view by reference: (reference, where the reference is in the request) ->
# (the ViewDefinition's JSON, the root of its error expressions). ViewStore.resolve.
Resolver = Callable[[str, str], Awaitable[tuple[dict[str, Any], str]]]


async def parse_run_request(
    parameters: Sequence[Parameter],
    query: Iterable[tuple[str, str]],
    accept: str | None = None,
    *,
    resolve: Resolver | None = None,
    instance: tuple[dict[str, Any], str] | None = None,
) -> RunRequest:
    """The request's parameters, from a Parameters body and the URL; 400 (422 for an
    invalid view) naming the parameter at fault. ``resolve`` reads a ``viewReference``
    (None: references are not supported here); ``instance`` is the view of an instance
    level call (its JSON and error root), which then takes neither viewResource nor
    viewReference."""
    given: dict[str, tuple[Any, str]] = {}

    def once(name: str, value: Any, where: str) -> None:
        if name in given:
            raise bad_parameter(f"{OPERATION} takes one {name}", where)
        given[name] = (value, where)

    for name, value in query:
        if name not in SCALARS:
            raise bad_parameter(
                f"{OPERATION} has no URL parameter {name!r}", name, code="not-supported"
            )
        once(name, value, name)
    view: tuple[Any, str] | None = None
    reference: tuple[str, str] | None = None
    resources: list[Any] = []
    resources_at: list[str] = []
    for p in parameters:
        if p.name in NOT_YET:
            raise bad_parameter(NOT_YET[p.name], p.path, code="not-supported")
        if p.name in ("viewResource", "viewReference"):
            if instance is not None:
                raise bad_parameter(
                    f"{p.name} cannot be given at the instance level: the view is the "
                    "one the URL names",
                    p.path,
                )
            if view is not None or reference is not None:
                raise bad_parameter(
                    f"{OPERATION} takes exactly one of viewResource and viewReference", p.path
                )
            if p.name == "viewResource":
                view = (p.resource, f"{p.path}.resource")
            else:
                reference = (_view_reference(p), p.path)
        elif p.name == "resource":
            resources.append(_inline_resource(p))
            resources_at.append(f"{p.path}.resource")
        elif p.name in SCALARS:
            if not p.has_value:
                raise bad_parameter(f"{p.name} must have a value[x]", p.path)
            once(p.name, p.value, p.path)
        else:
            raise bad_parameter(
                f"{OPERATION} has no parameter {p.name!r}", p.path, code="not-supported"
            )
    if reference is not None:
        if resolve is None:
            raise bad_parameter(
                "viewReference is not supported here", reference[1], code="not-supported"
            )
        view = await resolve(*reference)
    view = view or instance
    if view is None:
        raise bad_parameter(
            "one of viewResource (the ViewDefinition inline) or viewReference (a stored one) "
            "is required",
            "Parameters",
            code="required",
        )
    definition, view_at = view
    if not isinstance(definition, dict):
        raise bad_parameter("viewResource must hold a ViewDefinition resource", view_at)
    try:
        compiled = compile_view(definition)
    except ViewError as exc:
        raise view_error(exc, view_at) from None
    return RunRequest(
        view=compiled,
        view_at=view_at,
        format=_format(given.get("_format"), accept),
        header=boolean_parameter(given.get("header"), "header", default=True),
        resources=tuple(resources) if resources else None,
        resources_at=tuple(resources_at),
        patient=patient_parameter(given.get("patient")),
        patient_at=given["patient"][1] if "patient" in given else "patient",
        since=since_parameter(given.get("_since")),
        limit=_limit(given.get("_limit")),
    )


def _view_reference(p: Parameter) -> str:
    """What a ``viewReference`` names: a Reference's ``reference`` (this server's absolute
    URL of a view made relative), or a canonical given as valueCanonical/valueUri."""
    value = p.value if p.has_value else None
    reference = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(reference, str) or not reference.strip():
        raise bad_parameter(
            "viewReference must be a Reference to a ViewDefinition (or its canonical URL)",
            p.path,
        )
    base = request_base_url.get() or ""
    if base and reference.startswith(f"{base}/"):
        reference = reference[len(base) + 1 :]
    return reference


def _inline_resource(p: Parameter) -> Any:
    resource = p.resource
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise bad_parameter("resource must hold a resource", f"{p.path}.resource")
    return resource


def _format(given: tuple[Any, str] | None, accept: str | None) -> Format:
    if given is not None:
        value, where = given
        fmt = format_named(value) if isinstance(value, str) else None
        if fmt is None:
            raise bad_parameter(
                f"Format {value!r} is not supported; supported formats: {', '.join(FORMATS)}",
                where,
                code="not-supported",
            )
        return fmt
    for media_type in (accept or "").split(","):
        fmt = format_named(media_type) if media_type.strip() else None
        if fmt is not None:
            return fmt
    return FORMATS["json"]


def boolean_parameter(given: tuple[Any, str] | None, name: str, default: bool) -> bool:
    if given is None:
        return default
    value, where = given
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise bad_parameter(f"{name} must be true or false, not {value!r}", where)


def _limit(given: tuple[Any, str] | None) -> int | None:
    if given is None:
        return None
    value, where = given
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str):
        number = whole_number(value)
    if number is None or number < 1:
        raise bad_parameter(f"_limit must be a positive integer, not {value!r}", where)
    return number


def since_parameter(given: tuple[Any, str] | None) -> datetime | None:
    if given is None:
        return None
    value, where = given
    if isinstance(value, str):
        try:
            return parse_range(value.replace(" ", "+"))[0]  # '+' decoded as ' ' in a URL
        except ValueError:
            pass
    raise bad_parameter(f"_since must be an instant, not {value!r}", where)


def patient_parameter(given: tuple[Any, str] | None) -> str | None:
    """The id of the patient a ``patient`` Reference names (``Patient/<id>``, or this
    server's absolute URL of it)."""
    if given is None:
        return None
    value, where = given
    reference = value.get("reference") if isinstance(value, dict) else value
    if isinstance(reference, str):
        base = request_base_url.get() or ""
        if base and reference.startswith(f"{base}/"):
            reference = reference[len(base) + 1 :]
        kind, _, pid = reference.partition("/")
        if kind == "Patient" and is_valid_id(pid):
            return pid
    raise bad_parameter(f"patient must be a reference to a Patient, not {value!r}", where)


# --- running ----------------------------------------------------------------------------


class _Limit:
    """Rows taken so far, against ``_limit``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.rows = 0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.rows >= self.limit


class ViewRunService:
    def __init__(self, storage: Storage, registry: Registry, offload: Offload) -> None:
        self.storage = storage
        self.registry = registry
        self.offload = offload

    async def run(
        self, req: RunRequest, policy: Policy, progress: Progress | None = None
    ) -> RunResult:
        """The rows as chunks of the requested format; errors found before the first
        row (authorization, parameters, the view on the first resources) raise here.
        ``progress`` is told how many resources each batch read holds."""
        keep: Callable[[dict[str, Any]], bool] | None = None
        if req.resources is not None:
            batches = _inline_batches(req.resources)
            keep = self._inline_filter(req)
        else:
            batches = await self.stored_batches(req, policy)
        if progress is not None:
            batches = _counted(batches, progress)
        return await run_over(req, batches, self.offload, keep)

    # --- sources ---

    async def stored_batches(
        self, req: RunRequest, policy: Policy, narrow: Filter | None = None
    ) -> AsyncGenerator[list[Any], None]:
        """The current versions of the view's type within the token's reach and the
        filters, as batches of stored JSON; 403 without read or search on the type.
        ``narrow``: more conditions on the stored index (a report's period)."""
        t = req.view.resource_type
        restriction = all_of(await policy.restriction(t, "r"), await policy.restriction(t, "s"))
        clauses: list[dict[str, Any]] = [{"del": False}, restriction]
        if req.since is not None:
            clauses.append({"lu": {"$gte": req.since}})
        if req.patient is not None:
            if t != "Patient" and not self.registry.patient_compartment(t):
                raise bad_parameter(
                    f"patient: {t} resources are not in the Patient compartment", req.patient_at
                )
            await self.require_patient(req.patient, req.patient_at, policy)
            clauses.append({"comp": f"Patient/{req.patient}"})
        # The where's element = literal tests, as index conditions (views/pushdown.py).
        clauses.append(where_filter(req.view, self.registry))
        if narrow:
            clauses.append(narrow)
        return self._documents(t, all_of(*clauses))

    async def require_patient(self, pid: str, where: str, policy: Policy) -> None:
        """The patient named must exist, as far as the token may know: checked only when
        it may read Patients (otherwise its rows are simply confined to that patient)."""
        if await policy.try_restriction("Patient", "r") is None:
            return
        stored = await self.storage.read_current("Patient", pid)
        visible = await policy.contains("Patient", pid, "r")
        if stored is None or stored.deleted or not visible:
            raise bad_parameter(f"patient: Patient/{pid} is not known", where, code="not-found")

    async def _documents(self, t: str, query: dict[str, Any]) -> AsyncGenerator[list[Any], None]:
        cursor = self.storage.current(t).find(
            query, {"raw": 1}, sort=[("_id", 1)], batch_size=BATCH
        )
        try:
            batch: list[Any] = []
            size = min(FIRST_BATCH, BATCH)
            async for doc in cursor:
                batch.append(doc["raw"])
                if len(batch) >= size:
                    yield batch
                    batch, size = [], BATCH
            if batch:
                yield batch
        finally:
            await cursor.close()

    def _inline_filter(self, req: RunRequest) -> Callable[[dict[str, Any]], bool] | None:
        """``_since`` and ``patient`` on inline resources: by ``meta.lastUpdated`` (one
        without a readable one is kept) and by the Patient compartment its references
        put it in, as the server's index would."""
        if req.since is None and req.patient is None:
            return None
        since, patient = req.since, req.patient
        registry, base = self.registry, request_base_url.get()
        where = {id(r): at for r, at in zip(req.resources or (), req.resources_at, strict=True)}

        def keep(resource: dict[str, Any]) -> bool:
            if resource.get("resourceType") != req.view.resource_type:
                return False  # not the view's: no rows anyway
            if since is not None:
                meta = resource.get("meta")
                updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
                if isinstance(updated, str):
                    try:
                        if parse_range(updated)[0] < since:
                            return False
                    except ValueError:
                        pass
            if patient is not None:
                try:
                    comp = index_resource(resource, registry, base).comp
                except (TypeError, ValueError, AttributeError, KeyError):  # malformed
                    raise bad_parameter(
                        "patient: the Patient compartment of this resource cannot be read "
                        "(it is not a valid resource)",
                        where.get(id(resource), "resource"),
                    ) from None
                if f"Patient/{patient}" not in comp:
                    return False
            return True

        return keep


# --- rows to bytes ---------------------------------------------------------------------


async def run_over(
    req: RunRequest,
    batches: AsyncGenerator[list[Any], None],
    offload: Offload,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> RunResult:
    """The view of ``req`` over ``batches`` of resources (dicts, or stored JSON bytes),
    as chunks of its format. A view error before the first row raises here as a 422
    FhirError; one after it raises ViewError from the chunks (the output so far stands).
    The service's sources come here, and so do the resource files of ``fhir-server view
    run`` (views/cli.py)."""
    chunks = _chunks(
        req,
        encoder_for(req.format, req.view.columns, req.header),
        _read_ahead(batches),
        keep,
        offload,
    )
    try:
        first = await anext(chunks, b"")
    except ViewError as exc:
        await chunks.aclose()
        raise view_error(exc, req.view_at) from None
    except BaseException:
        await chunks.aclose()
        raise
    return RunResult(req.format.media_type, _prepend(first, chunks))


async def _chunks(
    req: RunRequest,
    encoder: Encoder,
    batches: AsyncGenerator[list[Any], None],
    keep: Callable[[dict[str, Any]], bool] | None,
    offload: Offload,
) -> AsyncGenerator[bytes, None]:
    """Encoded output, held back until a row exists (or the end)."""
    limit = _Limit(req.limit)
    pending = encoder.begin()
    try:
        async for batch in batches:
            pending += await offload.call(_encode, req.view, encoder, limit, batch, keep)
            if limit.rows and pending:
                yield pending
                pending = b""
            if limit.done:
                break
        for block in encoder.finish():
            pending += block
            yield pending
            pending = b""
        if pending:
            yield pending
    finally:
        await batches.aclose()
        close = getattr(encoder, "close", None)
        if close is not None:
            close()


def _encode(
    view: View,
    encoder: Encoder,
    limit: _Limit,
    batch: list[Any],
    keep: Callable[[dict[str, Any]], bool] | None,
) -> bytes:
    """One batch of resources (stored JSON bytes, or inline dicts) as encoded rows."""
    rows: list[Row] = []
    for item in batch:
        checkpoint()
        resource = load_stored(item) if isinstance(item, bytes) else item
        if keep is not None and not keep(resource):
            continue
        for row in view.rows(resource):
            rows.append(row)
            limit.rows += 1
            if limit.done:
                return encoder.encode(rows)
    return encoder.encode(rows)


async def _counted(
    batches: AsyncGenerator[list[Any], None], progress: Progress
) -> AsyncGenerator[list[Any], None]:
    try:
        async for batch in batches:
            progress(len(batch))
            yield batch
    finally:
        await batches.aclose()


async def _inline_batches(resources: Sequence[Any]) -> AsyncGenerator[list[Any], None]:
    for start in range(0, len(resources), BATCH):
        yield list(resources[start : start + BATCH])


async def _read_ahead(
    batches: AsyncGenerator[list[Any], None],
) -> AsyncGenerator[list[Any], None]:
    """Each batch, the next one being read meanwhile: the database answers the next
    getMore while this process evaluates the batch at hand in the offload pool."""
    task = asyncio.ensure_future(anext(batches, None))
    try:
        while (batch := await task) is not None:
            task = asyncio.ensure_future(anext(batches, None))
            yield batch
    finally:
        if not task.done():
            task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task  # the read ahead is not wanted: its error neither
        await batches.aclose()


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
