"""The authorization rules of bulk export (fhir_server/bulk/access.py), decision by
decision, with real AccessTokens; test_bulk_export.py checks them over HTTP."""

from __future__ import annotations

import pytest

from fhir_server.bulk.access import authorize_kickoff, owner_of, owns
from fhir_server.outcome import FhirError
from smart_auth.scopes import ScopeSet
from smart_auth.tokens import AccessToken

TYPES = ("Patient", "Observation", "Condition", "Organization")


def token(
    scopes: str, patient: str | None = None, client_id: str = "c", subject: str = "u"
) -> AccessToken:
    return AccessToken(
        client_id=client_id,
        subject=subject,
        scopes=ScopeSet.parse(scopes),
        patient=patient,
        encounter=None,
        fhir_user=None,
        jti="j",
        expires_at=0,
        claims={},
    )


def status_of(fn: object, *args: object) -> int:
    with pytest.raises(FhirError) as exc:
        fn(*args)  # type: ignore[operator]
    return exc.value.status


def test_authorization_off_allows_everything() -> None:
    grant = authorize_kickoff(None, "system", None, TYPES, None)
    assert grant.client_id is None and grant.types == TYPES and grant.patients is None
    assert authorize_kickoff(None, "patient", ["Patient"], TYPES, ["a"]).patients == ("a",)


def test_v1_system_read_scopes_cover_read_and_search() -> None:
    grant = authorize_kickoff(token("system/*.read"), "system", None, TYPES, None)
    assert grant.types == TYPES and grant.client_id == "c"


def test_without_type_the_export_is_narrowed_to_allowed_types() -> None:
    grant = authorize_kickoff(token("user/Observation.rs"), "system", None, TYPES, None)
    assert grant.types == ("Observation",)


def test_a_requested_type_without_scope_is_403() -> None:
    access = token("system/Observation.rs")
    assert status_of(authorize_kickoff, access, "system", ["Patient"], TYPES, None) == 403
    assert status_of(authorize_kickoff, token("system/*.s"), "system", None, TYPES, None) == 403


def test_patient_bound_tokens() -> None:
    access = token("patient/*.rs", patient="p1")
    assert status_of(authorize_kickoff, access, "system", None, TYPES, None) == 403
    grant = authorize_kickoff(access, "patient", None, TYPES, None)
    assert grant.patients == ("p1",)
    assert status_of(authorize_kickoff, access, "group", None, TYPES, ["p2"]) == 403
    no_patient = token("patient/*.rs")
    assert status_of(authorize_kickoff, no_patient, "patient", None, TYPES, None) == 403


def test_jobs_belong_to_their_client_user_and_patient() -> None:
    open_job = {"client_id": None, "owner": None}
    assert owns(None, open_job) and owns(token("system/*.rs"), open_job)
    alice = token("patient/*.rs", patient="p1", client_id="a")
    job = {"client_id": "a", "owner": owner_of(alice)}
    assert owns(token("patient/*.rs", patient="p1", client_id="a"), job)
    assert not owns(token("patient/*.rs", patient="p1", client_id="b"), job)
    assert not owns(token("patient/*.rs", patient="p2", client_id="a"), job)
    assert not owns(token("patient/*.rs", patient="p1", client_id="a", subject="u2"), job)
    assert not owns(None, job)
    assert not owns(alice, {"client_id": "a"})  # stored before owners: nobody's
