"""Appointment life cycle (issue 12): the published transition table
(docs/scheduling.md, fhir_server/workflows/scheduling/lifecycle.py) on every path, and
the minimum notice a patient must give to change or cancel.

R4 appointment.html#status defines the codes but leaves their transitions to the
implementation; an illegal one is a business rule violation, 422 (http.html#2.21.0.16:
"422 Unprocessable Entity - the proposed resource violated applicable FHIR profiles or
server business rules")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    assert_outcome,
    binary_patch,
    create,
    diagnostics,
    entry,
    expressions,
    patch,
    post_bundle,
    put,
    shared_client,
)
from scheduling_helpers import appointment, smart
from smart_helpers import TokenMint

from fhir_server.workflows.scheduling.lifecycle import STATUSES, TRANSITIONS

PAIRS = [(old, new) for old in STATUSES for new in STATUSES]


@pytest.fixture(scope="module")
def shared(mongo_url: str) -> Iterator[TestClient]:
    with shared_client(mongo_url) as client:
        yield client


def legal(old: str, new: str) -> bool:
    return old == new or new in TRANSITIONS[old]


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{o}->{n}" for o, n in PAIRS])
def test_every_status_transition(shared: TestClient, old: str, new: str) -> None:
    # no slot nor practitioner: only the life cycle decides
    made = create(shared, appointment(status=old, patient=f"p-{old}-{new}"))
    r = put(shared, {**made, "status": new})
    if legal(old, new):
        assert r.status_code == 200, r.text
        assert r.json()["status"] == new
    else:
        issues = assert_outcome(r, 422)
        assert issues[0]["code"] == "business-rule"
        assert expressions(issues) == ["Appointment.status"]
        assert repr(old) in diagnostics(issues) and repr(new) in diagnostics(issues)
        assert shared.get(f"/fhir/Appointment/{made['id']}").json()["status"] == old


def test_the_table_has_the_expected_shape() -> None:
    # the closed states only go to entered-in-error; entered-in-error is final
    for closed in ("fulfilled", "cancelled", "noshow"):
        assert TRANSITIONS[closed] == {"entered-in-error"}
    assert TRANSITIONS["entered-in-error"] == frozenset()
    assert sum(legal(o, n) for o, n in PAIRS) == 40


def test_fulfilled_back_to_booked_through_patch_is_422(shared: TestClient) -> None:
    made = create(shared, appointment(status="fulfilled"))
    ops = [{"op": "replace", "path": "/status", "value": "booked"}]
    issues = assert_outcome(patch(shared, f"/fhir/Appointment/{made['id']}", ops), 422)
    assert issues[0]["code"] == "business-rule"


def test_fulfilled_back_to_booked_in_a_transaction_is_422(shared: TestClient) -> None:
    made = create(shared, appointment(status="fulfilled"))
    ops = [{"op": "replace", "path": "/status", "value": "booked"}]
    r = post_bundle(shared, [entry("PATCH", f"Appointment/{made['id']}", binary_patch(ops))])
    assert assert_outcome(r, 422)[0]["code"] == "business-rule"
    r = post_bundle(
        shared, [entry("PUT", f"Appointment/{made['id']}", {**made, "status": "booked"})]
    )
    assert assert_outcome(r, 422)[0]["code"] == "business-rule"


def test_cancelled_in_a_batch_cannot_be_rebooked(shared: TestClient) -> None:
    made = create(shared, appointment(status="cancelled"))
    r = post_bundle(
        shared,
        [entry("PUT", f"Appointment/{made['id']}", {**made, "status": "booked"})],
        kind="batch",
    )
    assert r.status_code == 200, r.text
    (only,) = r.json()["entry"]
    assert only["response"]["status"].startswith("422"), only


# --- minimum notice ----------------------------------------------------------------------

SCOPE_PATIENT = "patient/Appointment.cruds"


def soon(hours: float) -> dict[str, Any]:
    """A booked appointment of patient pa with a doctor of its own, starting ``hours``
    from now."""
    start = datetime.now(UTC) + timedelta(hours=hours)
    found = appointment(practitioner=f"dr-{uuid.uuid4().hex[:8]}", patient="pa")
    found["start"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    found["end"] = (start + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return found


@pytest.fixture(scope="module")
def world(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    with smart(mongo_url) as found:
        yield found


def booked(world: tuple[TestClient, TokenMint], hours: float) -> dict[str, Any]:
    client, mint = world
    r = put(
        client, {**soon(hours), "id": f"a{uuid.uuid4().hex[:8]}"}, **mint.headers("system/*.cruds")
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


PATIENT_TOKENS = {
    "patient app": {"scope": SCOPE_PATIENT, "patient": "pa"},
    "patient user": {"scope": "user/Appointment.cruds", "fhir_user": "Patient/pa"},
}
STAFF_TOKENS = {
    "practitioner": {"scope": "user/Appointment.cruds", "fhir_user": "Practitioner/dr"},
    "practitioner app in patient context": {
        "scope": SCOPE_PATIENT,
        "patient": "pa",
        "fhir_user": "Practitioner/dr",
    },
    "admin user": {"scope": "user/*.cruds"},
    "backend service": {"scope": "system/*.cruds"},
}


def headers(mint: TokenMint, token: dict[str, Any]) -> dict[str, str]:
    options = dict(token)
    return mint.headers(options.pop("scope"), **options)


@pytest.mark.parametrize("who", list(PATIENT_TOKENS))
@pytest.mark.parametrize("how", ["cancel", "move", "delete", "patch"])
def test_patient_cannot_touch_an_appointment_within_the_notice(world, who: str, how: str) -> None:
    client, mint = world
    made = booked(world, hours=2)
    auth = headers(mint, PATIENT_TOKENS[who])
    url = f"/fhir/Appointment/{made['id']}"
    if how == "cancel":
        r = put(client, {**made, "status": "cancelled"}, **auth)
    elif how == "move":
        r = put(
            client, {**made, **{k: v for k, v in soon(72).items() if k in ("start", "end")}}, **auth
        )
    elif how == "delete":
        r = client.delete(url, headers=auth)
    else:
        ops = [{"op": "replace", "path": "/status", "value": "cancelled"}]
        r = patch(client, url, ops, **auth)
    issues = assert_outcome(r, 422)
    assert issues[0]["code"] == "business-rule"
    assert expressions(issues) == ["Appointment.start"]
    assert "24 h" in diagnostics(issues)
    admin = mint.headers("system/*.cruds")
    assert client.get(url, headers=admin).json()["status"] == "booked"


def test_patient_cannot_cancel_within_the_notice_in_a_transaction(world) -> None:
    client, mint = world
    made = booked(world, hours=2)
    auth = headers(mint, PATIENT_TOKENS["patient app"])
    body = {**made, "status": "cancelled"}
    r = post_bundle(client, [entry("PUT", f"Appointment/{made['id']}", body)], **auth)
    assert assert_outcome(r, 422)[0]["code"] == "business-rule"


@pytest.mark.parametrize("who", list(PATIENT_TOKENS))
def test_patient_may_cancel_ahead_of_the_notice(world, who: str) -> None:
    client, mint = world
    made = booked(world, hours=30)
    r = put(client, {**made, "status": "cancelled"}, **headers(mint, PATIENT_TOKENS[who]))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("who", list(STAFF_TOKENS))
def test_staff_may_cancel_within_the_notice(world, who: str) -> None:
    client, mint = world
    made = booked(world, hours=1)
    r = put(client, {**made, "status": "cancelled"}, **headers(mint, STAFF_TOKENS[who]))
    assert r.status_code == 200, r.text


def test_the_notice_is_configurable(mongo_url: str) -> None:
    with smart(mongo_url, appointment_min_notice=timedelta(hours=1)) as (client, mint):
        made = booked((client, mint), hours=2)
        auth = headers(mint, PATIENT_TOKENS["patient app"])
        r = put(client, {**made, "status": "cancelled"}, **auth)
        assert r.status_code == 200, r.text
        late = booked((client, mint), hours=0.5)
        issues = assert_outcome(put(client, {**late, "status": "cancelled"}, **auth), 422)
        assert "1 h" in diagnostics(issues)
