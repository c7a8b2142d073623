"""Billing operations; each answers the Invoice it wrote (201 when it created one).

- ``POST [base]/Account/[id]/$invoice``: a draft Invoice of the Account's billable
  ChargeItems (``ChargeItem.account``; the rules copy it from the Encounter's
  ``account``), issued by the Account's ``owner`` (else FHIR_BILLING_ISSUER), for the
  Account's ``subject`` patient.
- ``POST [base]/Invoice/$generate`` (Parameters ``patient``, optional ``encounter``
  and ``issuer``, each a valueReference or a valueString ``Type/id``): a draft
  Invoice of that patient's billable ChargeItems (of that Encounter), issued by
  ``issuer`` or FHIR_BILLING_ISSUER.
- ``POST [base]/Invoice/[id]/$issue``: issues a draft, giving it the issuer's next
  invoice number in the same transaction (numbering.py).

The invoices are written with the ordinary create and update, so the rules apply (the
items become ``billed``, a ChargeItem is on one invoice only). Through the token's
policy: reading the Account, Patient and ChargeItems, creating or updating the
Invoice; and never for a patient-side token (403): a patient reads invoices, the
clinic makes them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import optional_body
from fhir_server.api.rendering import resource_response
from fhir_server.api.routes import base_url, bind_base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.authz.policy import Policy
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import FhirError, bad_request, not_found
from fhir_server.service.context import request_access
from fhir_server.service.parameters import Parameter, is_parameters, read_parameters
from fhir_server.service.resources import WriteOutcome, check_id
from fhir_server.workflows.billing.building import billable, invoice_of, lines_for
from fhir_server.workflows.billing.numbering import issuer_of
from fhir_server.workflows.pipeline import WriteContext
from fhir_server.workflows.scheduling.booking import local_reference
from profiles.clinics import CEDULA, PASSPORT, RUC

router = APIRouter(dependencies=[Depends(bind_base_url)])
MOST_ITEMS = 1000


def _staff(request: Request, policy: Policy, *needs: tuple[str, str]) -> None:
    if WriteContext(request_access.get()).patient_side:
        raise FhirError.of(
            403, "forbidden", "Invoices are made by the clinic's staff, not by a patient's token"
        )
    for rtype, interaction in needs:
        policy.require(rtype, interaction)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalised(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as parsed JSON (its Decimals as jsonio reads them)."""
    return load_stored(dumps(resource))  # type: ignore[no-any-return]


async def _visible(
    request: Request, policy: Policy, rtype: str, rid: str
) -> tuple[Any, dict[str, Any]]:
    check_id(rid)
    current = await services(request).resources.read(rtype, rid)
    if not await policy.sees(current) or current.raw is None:
        raise not_found(f"{rtype}/{rid} is not known")
    return current, load_stored(current.raw)


def _identifier(resource: dict[str, Any], systems: tuple[str, ...]) -> dict[str, Any] | None:
    for system in systems:
        for identifier in resource.get("identifier") or []:
            if (
                isinstance(identifier, dict)
                and identifier.get("system") == system
                and isinstance(identifier.get("value"), str)
            ):
                return {"system": system, "value": identifier["value"]}
    return None


async def _issuer(request: Request, issuer: str | None, where: str) -> tuple[str, dict[str, Any]]:
    """The issuing Organization and its RUC identifier (422 without them)."""
    if issuer is None:
        raise FhirError.of(
            422,
            "business-rule",
            "No issuer: give one, or set FHIR_BILLING_ISSUER to the clinic's Organization",
            where,
        )
    storage = services(request).resources.storage
    stored = await storage.read_current("Organization", issuer.split("/", 1)[1])
    if stored is None or stored.raw is None:
        raise FhirError.of(422, "business-rule", f"The issuer {issuer} is not known", where)
    ruc = _identifier(load_stored(stored.raw), (RUC,))
    if ruc is None:
        raise FhirError.of(
            422, "business-rule", f"The issuer {issuer} has no RUC identifier ({RUC})", where
        )
    return issuer, ruc


async def _make(
    request: Request,
    policy: Policy,
    items: list[Any],
    *,
    patient: str,
    issuer: tuple[str, dict[str, Any]],
    account: str | None,
    where: str,
    person: dict[str, Any] | None = None,
) -> Response:
    out = neg.negotiate(request)
    svc = services(request)
    chosen = billable(items)
    if not chosen:
        raise FhirError.of(
            422, "business-rule", f"{account or patient} has no billable ChargeItems", where
        )
    if person is None:
        _, person = await _visible(request, policy, "Patient", patient.split("/", 1)[1])
    lines = await lines_for(svc.resources.storage, chosen, svc.settings.billing_iva_rate)
    invoice = invoice_of(
        lines,
        patient=patient,
        recipient_identifier=_identifier(person, (CEDULA, PASSPORT)),
        issuer=issuer[0],
        issuer_identifier=issuer[1],
        date=_now(),
        account=account,
    )
    result = await svc.resources.create("Invoice", _normalised(invoice), None, policy)
    return _answer(request, result, out)


def _answer(request: Request, result: WriteOutcome, out: neg.Output) -> Response:
    stored = result.stored
    url = f"{base_url(request)}/Invoice/{stored.id}/_history/{stored.version}"
    return resource_response(stored, out, 201 if result.created else 200, {"Location": url})


async def _charge_items(request: Request, query: dict[str, Any]) -> list[Any]:
    storage = services(request).resources.storage
    found = await storage.find_current("ChargeItem", query, MOST_ITEMS + 1)
    if len(found) > MOST_ITEMS:
        raise FhirError.of(
            422, "too-costly", f"More than {MOST_ITEMS} ChargeItems for one invoice", "ChargeItem"
        )
    return found


@router.post("/Account/{rid}/$invoice")
async def invoice_account(request: Request, rid: str) -> Response:
    policy = request_policy(request)
    _staff(request, policy, ("Account", "r"), ("ChargeItem", "r"), ("Invoice", "c"))
    _, account = await _visible(request, policy, "Account", rid)
    subjects = [local_reference(s, ("Patient",)) for s in account.get("subject") or []]
    patients = [s for s in subjects if s is not None]
    if len(patients) != 1:
        raise FhirError.of(
            422, "business-rule", f"Account/{rid} must have one Patient subject", "Account.subject"
        )
    owner = local_reference(account.get("owner"), ("Organization",))
    where = "Account.owner"
    issuer, items = await asyncio.gather(
        _issuer(request, owner or services(request).settings.billing_issuer, where),
        _charge_items(request, {"sp.account": f"Account/{rid}"}),
    )
    return await _make(
        request,
        policy,
        items,
        patient=patients[0],
        issuer=issuer,
        account=f"Account/{rid}",
        where="Account",
    )


def _reference(p: Parameter, rtype: str) -> str:
    value = p.value
    if isinstance(value, dict):
        value = value.get("reference")
    where = f"{p.path}.value[x]"
    if not isinstance(value, str) or not value:
        raise bad_request(f"'{p.name}' must be a reference to a {rtype}", where)
    parts = value.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) > 1 and parts[-2] != rtype:
        raise bad_request(f"'{p.name}' must be a reference to a {rtype}", where)
    try:
        check_id(parts[-1])
    except FhirError:
        raise bad_request(f"'{p.name}' has no valid {rtype} id", where) from None
    return f"{rtype}/{parts[-1]}"


@router.post("/Invoice/$generate")
async def generate(request: Request) -> Response:
    policy = request_policy(request)
    _staff(request, policy, ("ChargeItem", "r"), ("Invoice", "c"))
    body = await optional_body(request)
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    given: dict[str, Parameter] = {}
    types = {"patient": "Patient", "encounter": "Encounter", "issuer": "Organization"}
    for p in read_parameters(body):
        if p.name not in types:
            raise bad_request(f"$generate has no parameter {p.name!r}", p.path)
        if p.name in given:
            raise bad_request(f"$generate takes one {p.name!r}", p.path)
        given[p.name] = p
    if "patient" not in given:
        raise bad_request("$generate needs the 'patient' parameter", "Parameters.parameter")
    refs = {name: _reference(p, types[name]) for name, p in given.items()}
    patient = refs["patient"]
    _, person = await _visible(request, policy, "Patient", patient.split("/", 1)[1])
    query: dict[str, Any] = {"sp.subject": patient}
    if "encounter" in refs:
        await _visible(request, policy, "Encounter", refs["encounter"].split("/", 1)[1])
        query["sp.context"] = refs["encounter"]
    where = f"{given['issuer'].path}.value[x]" if "issuer" in given else "Parameters.parameter"
    issuer, items = await asyncio.gather(  # independent reads: one wait, not two
        _issuer(request, refs.get("issuer") or services(request).settings.billing_issuer, where),
        _charge_items(request, query),
    )
    return await _make(
        request,
        policy,
        items,
        patient=patient,
        issuer=issuer,
        account=None,
        where=given["patient"].path,
        person=person,
    )


@router.post("/Invoice/{rid}/$issue")
async def issue(request: Request, rid: str) -> Response:
    out = neg.negotiate(request)
    policy = request_policy(request)
    _staff(request, policy, ("Invoice", "u"))
    await optional_body(request)
    current, invoice = await _visible(request, policy, "Invoice", rid)
    if invoice.get("status") != "draft":
        raise FhirError.of(
            422,
            "business-rule",
            f"Invoice/{rid} is {invoice.get('status')!r}: only a draft is issued",
            "Invoice.status",
        )
    issuer = issuer_of(invoice)
    if issuer is None:
        raise FhirError.of(
            422, "business-rule", f"Invoice/{rid} has no issuer Organization", "Invoice.issuer"
        )
    # numbering.py gives the number, in the transaction that stores the issued version
    issued = {**invoice, "status": "issued", "date": _now()}
    resources = services(request).resources
    result = await resources.update("Invoice", rid, issued, current.version, policy)
    return _answer(request, result, out)
