"""The Invoice life cycle (issue 16): draft -> issued -> balanced | cancelled, on every
write path; issued invoices immutable; gap-free numbers per issuer; payments.

invoice.html#status: "draft: the invoice has been prepared but not yet finalized;
issued: the invoice has been finalized and sent to the recipient; balanced: the
invoice has been balanced / completely paid; cancelled: the invoice was cancelled".
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from billing_helpers import (
    ISSUER,
    NUMBER,
    PARACETAMOL,
    charge_items,
    dispense,
    generate,
    issue,
    number,
    people,
    price,
    write,
)
from fastapi.testclient import TestClient
from fhir_helpers import (
    app_client,
    assert_outcome,
    bundle_response,
    entry,
    expressions,
    post,
    post_bundle,
    put,
)

from fhir_server.config import Settings
from profiles.clinics import RUC


@pytest.fixture
def billing(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, billing_issuer=ISSUER, billing_establishment="002") as client:
        people(client)
        write(client, price("paracetamol", PARACETAMOL, "0.50", "0.15"))
        yield client


def draft(client: TestClient, *dispenses: str) -> dict[str, Any]:
    for d in dispenses:
        write(client, dispense(d, PARACETAMOL, 10))
    r = generate(client)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def current(client: TestClient, rid: str) -> dict[str, Any]:
    r = client.get(f"/fhir/Invoice/{rid}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def statuses(client: TestClient) -> list[str]:
    return sorted(i["status"] for i in charge_items(client))


def test_issue_gives_the_next_number(billing):
    first = draft(billing, "d1")
    assert number(first) is None
    r = issue(billing, first["id"])
    assert r.status_code == 200, r.text
    issued = r.json()
    assert issued["status"] == "issued"
    assert number(issued) == "002-001-000000001"
    assert current(billing, first["id"]) == issued
    second = draft(billing, "d2")
    assert number(issue(billing, second["id"]).json()) == "002-001-000000002"
    # issuing again is refused, and takes no number
    again = issue(billing, second["id"])
    assert expressions(assert_outcome(again, 422)) == ["Invoice.status"]
    third = draft(billing, "d3")
    assert number(issue(billing, third["id"]).json()) == "002-001-000000003"


def test_a_plain_update_or_a_transaction_issues_with_the_next_number(billing):
    """The number is the server's on every path, not only through $issue."""
    first, second = draft(billing, "d1"), draft(billing, "d2")
    r = put(billing, {**first, "status": "issued"})
    assert r.status_code == 200, r.text
    assert number(r.json()) == "002-001-000000001"
    assert number(current(billing, first["id"])) == "002-001-000000001"
    r = post_bundle(
        billing, [entry("PUT", f"Invoice/{second['id']}", {**second, "status": "issued"})]
    )
    assert r.status_code == 200, r.text
    assert number(bundle_response(r)[0]["resource"]) == "002-001-000000002"


def test_a_number_cannot_be_written_by_hand(billing):
    invoice = draft(billing, "d1")
    plain = {**invoice, "status": "issued"}
    forged = {**plain, "identifier": [{"system": NUMBER, "value": "002-001-000000007"}]}
    assert expressions(assert_outcome(put(billing, forged), 422)) == ["Invoice.identifier"]
    # nor a number on a draft, nor an invoice created issued by a client
    numbered = {**invoice, "identifier": forged["identifier"]}
    assert expressions(assert_outcome(put(billing, numbered), 422)) == ["Invoice.identifier"]
    # the same refusals inside a transaction
    r = post_bundle(billing, [entry("PUT", f"Invoice/{invoice['id']}", forged)])
    assert expressions(assert_outcome(r, 422)) == ["Invoice.identifier"]
    # an issued number is taken: writing it on another invoice is refused
    issued = issue(billing, invoice["id"]).json()
    other = draft(billing, "d2")
    copied = {**other, "status": "issued", "identifier": issued["identifier"]}
    assert_outcome(put(billing, copied), (409, 422))
    assert current(billing, other["id"])["status"] == "draft"


def test_refused_transitions(billing):
    invoice = draft(billing, "d1")
    rid = invoice["id"]
    r = put(billing, {**invoice, "status": "balanced"})
    assert expressions(assert_outcome(r, 422)) == ["Invoice.status"]
    issued = issue(billing, rid).json()
    back = {**issued, "status": "draft"}
    back.pop("identifier")
    assert expressions(assert_outcome(put(billing, back), 422)) == ["Invoice.status"]
    r = put(billing, {**issued, "status": "entered-in-error"})
    assert expressions(assert_outcome(r, 422)) == ["Invoice.status"]
    # the same through a JSON Patch and a transaction
    ops = [{"op": "replace", "path": "/status", "value": "draft"}]
    r = billing.patch(
        f"/fhir/Invoice/{rid}",
        json=ops,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert expressions(assert_outcome(r, 422)) == ["Invoice.status"]
    r = post_bundle(billing, [entry("PUT", f"Invoice/{rid}", {**issued, "status": "draft"})])
    assert expressions(assert_outcome(r, 422)) == ["Invoice.status"]
    assert current(billing, rid)["status"] == "issued"


def test_an_issued_invoice_is_immutable(billing):
    issued = issue(billing, draft(billing, "d1")["id"]).json()
    cheaper = {**issued, "totalGross": {"value": 1, "currency": "USD"}}
    assert expressions(assert_outcome(put(billing, cheaper), 422)) == ["Invoice.totalGross"]
    noted = {**issued, "note": [{"text": "otra cosa"}]}
    assert expressions(assert_outcome(put(billing, noted), 422)) == ["Invoice.note"]
    r = billing.delete(f"/fhir/Invoice/{issued['id']}")
    assert expressions(assert_outcome(r, 422)) == ["Invoice.status"]
    # an identical PUT is no change at all (no new version)
    stored = billing.get(f"/fhir/Invoice/{issued['id']}")
    same = billing.put(
        f"/fhir/Invoice/{issued['id']}",
        content=stored.text,
        headers={"Content-Type": "application/fhir+json"},
    )
    assert same.status_code == 200, same.text
    assert same.json()["meta"]["versionId"] == issued["meta"]["versionId"]


def test_cancellation_needs_a_reason_and_returns_the_items(billing):
    issued = issue(billing, draft(billing, "d1", "d2")["id"]).json()
    assert statuses(billing) == ["billed", "billed"]
    r = put(billing, {**issued, "status": "cancelled"})
    assert expressions(assert_outcome(r, 422)) == ["Invoice.cancelledReason"]
    cancelled = {**issued, "status": "cancelled", "cancelledReason": "datos del cliente errados"}
    r = put(billing, cancelled)
    assert r.status_code == 200, r.text
    assert r.json()["identifier"] == issued["identifier"]  # the number stays used
    assert statuses(billing) == ["billable", "billable"]
    # invoiced again, they get the next number
    again = issue(billing, draft(billing)["id"]).json()
    assert number(again) == "002-001-000000002"
    assert statuses(billing) == ["billed", "billed"]
    # a cancelled invoice is final
    r = put(billing, {**cancelled, "status": "issued"})
    assert expressions(assert_outcome(r, 422)) == ["Invoice.status"]


def test_a_cancelled_draft_returns_its_items_in_a_transaction(billing):
    invoice = draft(billing, "d1")
    bundle = [entry("PUT", f"Invoice/{invoice['id']}", {**invoice, "status": "cancelled"})]
    bundle_response(post_bundle(billing, bundle))
    assert statuses(billing) == ["billable"]


def test_numbers_are_gap_free_under_concurrency(billing):
    """Ten invoices issued at once by ten threads get 1..10, each once; and an issuing
    that fails in its transaction takes no number."""
    invoices = []
    for i in range(10):
        invoices.append(draft(billing, f"d{i}")["id"])

    def issuing(rid: str) -> str:
        r = issue(billing, rid)
        assert r.status_code == 200, r.text
        return number(r.json()) or ""

    with ThreadPoolExecutor(10) as pool:
        numbers = list(pool.map(issuing, invoices))
    assert sorted(numbers) == [f"002-001-{n:09d}" for n in range(1, 11)]
    # what is stored agrees with what was answered
    assert sorted(number(current(billing, rid)) or "" for rid in invoices) == sorted(numbers)


def test_numbers_are_per_issuer_and_refusals_take_none(billing):
    """Each issuer has its own sequence; an issuing refused (not a draft, or one whose
    transaction fails) draws no number: the counter is written in the issuing's
    transaction, so a rollback takes the increment back."""
    other = {
        "resourceType": "Organization",
        "id": "other",
        "identifier": [{"system": RUC, "value": "0990012345001"}],
    }
    write(billing, other)
    first = issue(billing, draft(billing, "d1")["id"]).json()
    assert expressions(assert_outcome(issue(billing, first["id"]), 422)) == ["Invoice.status"]
    write(billing, dispense("d2", PARACETAMOL, 10))
    params = [
        {"name": "patient", "valueString": "Patient/pa"},
        {"name": "issuer", "valueReference": {"reference": "Organization/other"}},
    ]
    r = billing.post(
        "/fhir/Invoice/$generate", json={"resourceType": "Parameters", "parameter": params}
    )
    assert r.status_code == 201, r.text
    assert r.json()["issuer"]["reference"] == "Organization/other"
    theirs = issue(billing, r.json()["id"]).json()
    assert number(theirs) == "002-001-000000001"
    ours = issue(billing, draft(billing, "d3")["id"]).json()
    assert number(ours) == "002-001-000000002"


def payment(rid: str, invoice: str, *amounts: float, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "PaymentReconciliation",
        "id": rid,
        "status": status,
        "created": "2030-01-02T12:00:00Z",
        "paymentDate": "2030-01-02",
        "paymentAmount": {"value": sum(amounts), "currency": "USD"},
        "detail": [
            {
                "type": {"coding": [{"code": "payment"}]},
                "request": {"reference": f"Invoice/{invoice}"},
                "amount": {"value": a, "currency": "USD"},
            }
            for a in amounts
        ],
    }


def test_payments_balance_the_invoice(billing):
    """paymentreconciliation.html: detail.request is Reference(Any), "A link to, or
    reference to, the request to which this payment applies": the invoice paid."""
    issued = issue(billing, draft(billing, "d1")["id"]).json()
    rid = issued["id"]
    assert issued["totalGross"]["value"] == 5.75  # 10 x 0.50 + 15 % IVA
    # part of it: still issued
    write(billing, payment("p1", rid, 2.00))
    assert current(billing, rid)["status"] == "issued"
    # the rest, in two details of a second payment: balanced
    r = post(billing, payment("p2", rid, 1.75, 2.00))
    assert r.status_code == 201, r.text
    paid = current(billing, rid)
    assert paid["status"] == "balanced"
    assert number(paid) == number(issued)
    # a payment for a draft is refused
    other = draft(billing, "d2")
    r = put(billing, payment("p3", other["id"], 1))
    assert expressions(assert_outcome(r, 422)) == ["PaymentReconciliation.detail[0].request"]
    r = put(billing, payment("p3", rid, -1))
    assert expressions(assert_outcome(r, 422)) == ["PaymentReconciliation.detail[0].amount"]


def test_a_cancelled_payment_does_not_count(billing):
    issued = issue(billing, draft(billing, "d1")["id"]).json()
    write(billing, payment("p1", issued["id"], 5.75, status="cancelled"))
    assert current(billing, issued["id"])["status"] == "issued"
    bundle = [entry("PUT", "PaymentReconciliation/p1", payment("p1", issued["id"], 5.75))]
    bundle_response(post_bundle(billing, bundle))
    assert current(billing, issued["id"])["status"] == "balanced"
