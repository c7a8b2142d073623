"""The stock ledger (issue 16): receipts, adjustments, dispenses earliest expiry first,
cancellations, and the figures of ``$stock`` checked against hand-computed ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from fhir_helpers import (
    assert_outcome,
    bundle_response,
    entry,
    expressions,
    post,
    post_bundle,
    put,
    urn,
)
from pharmacy_helpers import (
    adjustment,
    dispense,
    dispensed_lots,
    pharmacy,
    receipt,
    stock,
)

D = Decimal
FAR = "Location/farmacia"
BOD = "Location/bodega"


def test_receipts_adjustments_dispenses_and_a_cancellation_add_up(client):
    pharmacy(client, a="2031-01-31", b="2031-06-30")
    assert post(client, receipt("Medication/a", 100)).status_code == 201
    assert post(client, receipt("Medication/b", 40)).status_code == 201
    assert post(client, receipt("Medication/b", 25, BOD)).status_code == 201
    # breakage: 3 of lot A written off; an inventory count finds 2 more of lot B
    assert post(client, adjustment("Medication/a", -3, "rotura")).status_code == 201
    assert post(client, adjustment("Medication/b", 2, "inventario")).status_code == 201
    r = post(client, dispense(30))
    assert r.status_code == 201, r.text
    made = r.json()
    assert dispensed_lots(made) == [("A", D(30))]  # A expires first
    held = stock(client, "/fhir/Medication/para/$stock")
    # A: 100 - 3 - 30 = 67; B: 40 + 2 = 42 at the pharmacy, 25 in the store room
    assert held == {
        ("A", FAR): D(67),
        ("B", FAR): D(42),
        ("total", FAR): D(109),
        ("B", BOD): D(25),
        ("total", BOD): D(25),
    }
    # entered-in-error puts the 30 back where they came from
    cancelled = {**made, "status": "entered-in-error"}
    assert put(client, cancelled).status_code == 200
    assert stock(client, "/fhir/Location/farmacia/$stock")[("A", FAR)] == D(100 - 3)
    # and a second cancellation (same content again) moves nothing
    assert put(client, cancelled).status_code == 200
    assert stock(client, "/fhir/Location/farmacia/$stock")[("total", FAR)] == D(97 + 42)


def test_a_dispense_takes_the_earliest_expiry_first_across_batches(client):
    pharmacy(client, late="2032-12-31", early="2031-02-28", mid="2031-09")
    for lot, amount in (("late", 10), ("early", 4), ("mid", 5)):
        assert post(client, receipt(f"Medication/{lot}", amount)).status_code == 201
    r = post(client, dispense(12))
    assert r.status_code == 201, r.text
    assert dispensed_lots(r.json()) == [("EARLY", D(4)), ("MID", D(5)), ("LATE", D(3))]
    stored = client.get(f"/fhir/MedicationDispense/{r.json()['id']}").json()
    assert dispensed_lots(stored) == dispensed_lots(r.json())
    held = stock(client, "/fhir/Location/farmacia/$stock")
    assert held[("LATE", FAR)] == D(7) and ("EARLY", FAR) not in held


def test_expired_stock_is_never_dispensed(client):
    pharmacy(client, old="2020-01-31", new="2031-01-31")
    post(client, receipt("Medication/old", 50))
    post(client, receipt("Medication/new", 5))
    r = post(client, dispense(6))
    issues = assert_outcome(r, 409)
    assert expressions(issues) == ["MedicationDispense.quantity"]
    text = issues[0]["diagnostics"]
    assert "5 usable" in text and "lot OLD: 50, expired expiry 2020-01-31" in text
    assert post(client, dispense(5)).status_code == 201
    expiring = stock(client, "/fhir/$stock?expiring-before=2025-01-01")
    assert expiring == {("OLD", FAR): D(50), ("total", FAR): D(0)}


def test_stock_never_goes_below_zero(client):
    pharmacy(client, a="2031-01-31")
    post(client, receipt("Medication/a", 2))
    assert_outcome(post(client, adjustment("Medication/a", -3, "rotura")), 409)
    plain_negative = post(client, receipt("Medication/a", -1))
    assert expressions(assert_outcome(plain_negative, 422)) == [
        "SupplyDelivery.suppliedItem.quantity.value"
    ]
    # a receipt whose stock has been dispensed cannot be withdrawn
    got = post(client, receipt("Medication/a", 10)).json()
    assert post(client, dispense(11)).status_code == 201
    assert_outcome(put(client, {**got, "status": "entered-in-error"}), 409)
    assert stock(client, "/fhir/$stock")[("A", FAR)] == D(1)


def test_a_completed_dispense_cannot_be_changed_only_cancelled(client):
    pharmacy(client, a="2031-01-31")
    post(client, receipt("Medication/a", 10))
    made = post(client, dispense(4)).json()
    r = put(client, {**made, "quantity": {"value": 2}})
    assert expressions(assert_outcome(r, 422)) == ["MedicationDispense.status"]
    # an edit of something else keeps the recorded batches on it
    edited = {k: v for k, v in made.items() if k != "extension"}
    r = put(client, {**edited, "note": [{"text": "entregado a la madre"}]})
    assert r.status_code == 200, r.text
    assert dispensed_lots(r.json()) == [("A", D(4))]
    assert stock(client, "/fhir/$stock")[("A", FAR)] == D(6)


def test_dispenses_from_no_stock_kept_here_move_nothing(client):
    """Another pharmacy's dispense (or a history an importer brings) is a record of what
    happened there: without a location, or at a location that keeps no stock here."""
    pharmacy(client, a="2031-01-31")
    post(client, receipt("Medication/a", 10))
    assert post(client, dispense(50, place=None)).status_code == 201
    elsewhere = post(client, dispense(50, place="Location/otra-farmacia"))
    assert elsewhere.status_code == 201, elsewhere.text
    assert dispensed_lots(elsewhere.json()) == []
    assert stock(client, "/fhir/$stock")[("A", FAR)] == D(10)
    # a location that once held stock keeps its ledger, empty or not
    post(client, dispense(10))
    assert_outcome(post(client, dispense(1)), 409)


def test_every_path_moves_stock_in_one_transaction(client):
    pharmacy(client, a="2031-01-31")
    delivery = urn()
    r = post_bundle(
        client,
        [
            entry("POST", "SupplyDelivery", receipt("Medication/a", 8), delivery),
            entry("POST", "MedicationDispense", dispense(5), urn()),
        ],
    )
    assert r.status_code == 200, r.text
    answers = bundle_response(r)
    assert dispensed_lots(answers[1]["resource"]) == [("A", D(5))]
    # a transaction that would oversell is refused whole: the receipt is not kept
    r = post_bundle(
        client,
        [
            entry("POST", "SupplyDelivery", receipt("Medication/a", 1), urn()),
            entry("POST", "MedicationDispense", dispense(5), urn()),
        ],
    )
    assert_outcome(r, 409)
    assert stock(client, "/fhir/$stock")[("A", FAR)] == D(3)
    # batch entries are separate: the first is dispensed, the second refused
    r = post_bundle(
        client,
        [
            entry("POST", "MedicationDispense", dispense(2), urn()),
            entry("POST", "MedicationDispense", dispense(2), urn()),
        ],
        kind="batch",
    )
    statuses = [e["response"]["status"][:3] for e in r.json()["entry"]]
    assert statuses == ["201", "409"]
    assert stock(client, "/fhir/$stock")[("A", FAR)] == D(1)


def test_concurrent_dispensers_never_oversell(client):
    pharmacy(client, a="2031-01-31", b="2031-03-31")
    post(client, receipt("Medication/a", 25))
    post(client, receipt("Medication/b", 12))

    def attempt(_: int) -> int:
        return post(client, dispense(2)).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(attempt, range(40)))
    assert codes.count(201) == 18  # 37 units: 18 dispenses of 2, then 1 left
    assert set(codes) == {201, 409}
    held = stock(client, "/fhir/$stock")
    assert held.get(("A", FAR), D(0)) == 0 and held[("B", FAR)] == D(1)
    lots = [
        lot
        for e in client.get("/fhir/MedicationDispense?_count=100").json()["entry"]
        for lot in dispensed_lots(e["resource"])
    ]
    assert sum(q for _, q in lots) == D(36)
