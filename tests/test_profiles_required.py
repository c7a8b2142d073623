"""Required profiles per type (FHIR_REQUIRED_PROFILES) and per-profile enforcement
(FHIR_PROFILE_ENFORCEMENT_OVERRIDES), over HTTP (issue #14, profiles/enforcement.py).

http.html#2.21.0.16: "422 Unprocessable Entity - the proposed resource violated
applicable FHIR profiles or server business rules". A required profile applies whether
or not the resource's ``meta.profile`` names it; a required profile the server does not
hold refuses the writes of its type (a clear 422, never a 500).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir_helpers import (
    app_client,
    assert_outcome,
    binary_patch,
    bundle_response,
    constraint_profile,
    entry,
    location_key,
    observation,
    patch,
    patient,
    post,
    post_bundle,
    put,
    stored_document_count,
)
from pydantic import ValidationError

from fhir_server.config import Settings

REQUIRED = "http://clinic.example/StructureDefinition/required-patient"
SOFT = "http://clinic.example/StructureDefinition/soft-patient"
HARD = "http://clinic.example/StructureDefinition/hard-patient"
SYSTEM = "http://clinic.example/cedula"


def profile(url: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    """A differential-only Patient profile."""
    return constraint_profile(url, "Patient", elements)


# the identifier with the clinic's system is required
REQUIRED_PROFILE = profile(
    REQUIRED,
    [{"path": "Patient.identifier", "min": 1}, {"path": "Patient.identifier.system", "min": 1}],
)
SOFT_PROFILE = profile(SOFT, [{"path": "Patient.gender", "min": 1}])
HARD_PROFILE = profile(HARD, [{"path": "Patient.birthDate", "min": 1}])


def good() -> dict[str, Any]:
    return patient(identifier=[{"system": SYSTEM, "value": "1710034065"}])


def test_required_profile_applies_without_meta_profile(settings: Settings) -> None:
    with app_client(settings, required_profiles=f"Patient={REQUIRED}") as client:
        assert post(client, REQUIRED_PROFILE).status_code == 201
        before = stored_document_count(client.app.state.services.settings)  # type: ignore[attr-defined]
        # create: no identifier, no meta.profile -> refused
        issues = assert_outcome(post(client, patient()), 422)
        assert REQUIRED in issues[0]["diagnostics"]
        assert issues[0]["expression"] == ["Patient.identifier"]
        assert stored_document_count(client.app.state.services.settings) == before  # type: ignore[attr-defined]
        # conforming: accepted
        r = post(client, good())
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        # update breaking it
        assert_outcome(put(client, patient(id=rid), rid), 422)
        assert put(client, {**good(), "id": rid, "active": False}, rid).status_code == 200
        # patch removing the identifier
        ops = [{"op": "remove", "path": "/identifier"}]
        assert_outcome(patch(client, f"/fhir/Patient/{rid}", ops), 422)
        # other types are not affected
        assert post(client, observation()).status_code == 201


def test_required_profile_in_transactions_and_batches(settings: Settings) -> None:
    with app_client(settings, required_profiles=f"Patient={REQUIRED}") as client:
        assert post(client, REQUIRED_PROFILE).status_code == 201
        bad = [entry("POST", "Patient", good()), entry("POST", "Patient", patient())]
        issues = assert_outcome(post_bundle(client, bad), 422)
        assert issues[0]["expression"] == ["Bundle.entry[1].resource.identifier"]
        assert client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"] == 0
        entries = bundle_response(post_bundle(client, bad, "batch"), "batch-response")
        assert entries[0]["response"]["status"].startswith("201")
        assert entries[1]["response"]["status"].startswith("422")
        # a PATCH entry of a transaction
        rid = location_key(entries[0]["response"]["location"])[1]
        ops = binary_patch([{"op": "remove", "path": "/identifier"}])
        assert_outcome(post_bundle(client, [entry("PATCH", f"Patient/{rid}", ops)]), 422)


def test_required_profile_not_held_refuses_its_type_only(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with app_client(settings, required_profiles=f"Patient={REQUIRED}") as client:
        assert any(REQUIRED in r.getMessage() for r in caplog.records)  # the start-up warning
        issues = assert_outcome(post(client, good()), 422)
        assert "does not hold it" in issues[0]["diagnostics"], issues
        assert issues[0]["expression"] == ["Patient"]
        assert post(client, observation()).status_code == 201
        # $validate says the same, as an error
        r = client.post("/fhir/Patient/$validate", json=good())
        assert any(REQUIRED in i["diagnostics"] for i in r.json()["issue"])
        # once installed, conforming writes go through (the registry sees new profiles)
        assert post(client, REQUIRED_PROFILE).status_code == 201
        assert post(client, good()).status_code == 201


def test_validate_reports_required_profiles(settings: Settings) -> None:
    with app_client(settings, required_profiles=f"Patient={REQUIRED},Patient={SOFT}") as client:
        assert post(client, REQUIRED_PROFILE).status_code == 201
        assert post(client, SOFT_PROFILE).status_code == 201
        r = client.post("/fhir/Patient/$validate", json=patient(gender=None))
        errors = [i for i in r.json()["issue"] if i["severity"] == "error"]
        assert {REQUIRED in i["diagnostics"] for i in errors} == {True, False}
        assert any("Patient.gender" in i["diagnostics"] for i in errors), errors
        r = client.post("/fhir/Patient/$validate", json=good())
        assert not [i for i in r.json()["issue"] if i["severity"] == "error"]


def test_per_profile_override(settings: Settings) -> None:
    overrides = f"{SOFT}=warn"
    with app_client(settings, profile_enforcement_overrides=overrides) as client:
        for sd in (SOFT_PROFILE, HARD_PROFILE):
            assert post(client, sd).status_code == 201
        # soft: warn -> accepted though it breaks the profile (no gender)
        soft = patient(meta={"profile": [SOFT]})
        del soft["gender"]
        assert post(client, soft).status_code == 201
        r = client.post("/fhir/Patient/$validate", json=soft)
        severities = {i["severity"] for i in r.json()["issue"] if SOFT in i["diagnostics"]}
        assert severities == {"warning"}
        # hard: the server-wide default, reject
        hard = patient(meta={"profile": [HARD]})
        del hard["birthDate"]
        assert_outcome(post(client, hard), 422)
    # the other way round: default warn, one profile rejected
    with app_client(
        settings, profile_enforcement="warn", profile_enforcement_overrides=f"{HARD}=reject"
    ) as client:
        for sd in (SOFT_PROFILE, HARD_PROFILE):
            assert post(client, sd).status_code == 201
        assert post(client, soft).status_code == 201
        assert_outcome(post(client, hard), 422)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("required_profiles", "Nope=http://x/p", "not an R4 resource type"),
        ("required_profiles", "Patient", "not a valid required profile pair"),
        ("profile_enforcement_overrides", "http://x/p=maybe", "not reject or warn"),
        ("profile_enforcement_overrides", "http://x/p", "not a valid override pair"),
    ],
)
def test_malformed_settings_refused_at_start(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]
    Settings(**{field: ""})  # type: ignore[arg-type]
