"""The FHIRPath invariants of the R4 base definitions, over HTTP (create and $validate).

conformance-rules.html#constraints: "Invariants [...] are rules that SHALL be met by
the element(s) that they are attached to". A failed invariant of severity error refuses
a write (400) with an issue of code ``invariant``, diagnostics "<key>: <human>" and the
FHIRPath of the element instance the invariant sits on; a warning one (dom-6) is a
$validate warning. Each nested resource (contained, Bundle.entry.resource) is checked as a
resource of its own, at its own path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client, assert_outcome, post, validation_issues

from fhir_server.config import Settings

DIV = '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'
NARRATIVE = {"status": "generated", "div": DIV}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """FHIR_VALIDATE_INVARIANTS on (it is opt-in: README, Validation)."""
    return settings.model_copy(update={"validate_invariants": True})


def patient(**extra: Any) -> dict[str, Any]:
    """A Patient with a narrative (dom-6 stays out of the way)."""
    return {"resourceType": "Patient", "text": NARRATIVE, "active": True, **extra}


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "text": NARRATIVE,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        **extra,
    }


def validate(client: TestClient, resource: dict[str, Any]) -> list[dict[str, Any]]:
    return validation_issues(client, resource)


def invariants(issues: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(severity, key, expression) of the invariant issues."""
    return [
        (i["severity"], i["diagnostics"].split(":", 1)[0], i["expression"][0])
        for i in issues
        if i["code"] == "invariant"
    ]


def refused(client: TestClient, resource: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The invariant issues of a create refused with 400; $validate reports the same."""
    found = invariants(assert_outcome(post(client, resource), 400))
    assert found and all(severity == "error" for severity, _, _ in found)
    assert [f for f in invariants(validate(client, resource)) if f[1] != "dom-6"] == found
    return found


def accepted(client: TestClient, resource: dict[str, Any]) -> None:
    """Created (201), and $validate finds no invariant failed."""
    r = post(client, resource)
    assert r.status_code == 201, r.text
    assert invariants(validate(client, resource)) == []


# --- DomainResource (domainresource.html#invs) ---------------------------------------------


ORG = {"resourceType": "Organization", "id": "org", "name": "Acme"}


def test_dom2_contained_resources_do_not_contain_resources(client: TestClient) -> None:
    # dom-2: "If the resource is contained in another resource, it SHALL NOT contain
    # nested Resources" (reported on the container)
    accepted(client, patient(contained=[ORG], managingOrganization={"reference": "#org"}))
    nested = {**ORG, "contained": [{"resourceType": "Basic", "id": "b", "code": {"text": "x"}}]}
    found = refused(client, patient(contained=[nested], managingOrganization={"reference": "#org"}))
    assert ("error", "dom-2", "Patient") in found


def test_dom3_contained_resources_are_referenced(client: TestClient) -> None:
    # dom-3: "If the resource is contained in another resource, it SHALL be referred to
    # from elsewhere in the resource or SHALL refer to the containing resource"
    assert refused(client, patient(contained=[ORG])) == [("error", "dom-3", "Patient")]
    back = {**ORG, "partOf": {"reference": "#"}}  # refers to its container
    accepted(client, patient(contained=[back]))


def test_dom4_contained_resources_have_no_version(client: TestClient) -> None:
    # dom-4: "If a resource is contained in another resource, it SHALL NOT have a
    # meta.versionId or a meta.lastUpdated"
    ref = {"managingOrganization": {"reference": "#org"}}
    accepted(client, patient(contained=[{**ORG, "meta": {"tag": [{"code": "t"}]}}], **ref))
    for meta in ({"versionId": "1"}, {"lastUpdated": "2020-01-01T00:00:00Z"}):
        versioned = {**ORG, "meta": meta}
        found = refused(client, patient(contained=[versioned], **ref))
        assert found == [("error", "dom-4", "Patient")]


def test_dom5_contained_resources_have_no_security_label(client: TestClient) -> None:
    # dom-5: "If a resource is contained in another resource, it SHALL NOT have a
    # security label"
    labelled = {**ORG, "meta": {"security": [{"code": "R"}]}}
    found = refused(
        client, patient(contained=[labelled], managingOrganization={"reference": "#org"})
    )
    assert found == [("error", "dom-5", "Patient")]


def test_dom6_narrative_is_a_best_practice_warning(client: TestClient) -> None:
    # dom-6 (a best-practice guideline): "A resource should have narrative for robust
    # management"; a warning, so the write is accepted
    bare = {"resourceType": "Patient", "active": True}
    assert post(client, bare).status_code == 201
    issues = validate(client, bare)
    assert invariants(issues) == [("warning", "dom-6", "Patient")]
    assert "narrative" in issues[0]["diagnostics"]
    assert invariants(validate(client, patient())) == []
    # a contained resource is covered by its container's narrative
    wrapped = patient(contained=[ORG], managingOrganization={"reference": "#org"})
    assert invariants(validate(client, wrapped)) == []


# --- resources and datatypes ---------------------------------------------------------------


def test_obs6_data_absent_reason_only_without_value(client: TestClient) -> None:
    # observation.html#invs obs-6: "dataAbsentReason SHALL only be present if
    # Observation.value[x] is not present"
    absent = {"text": "not asked"}
    accepted(client, observation(dataAbsentReason=absent))
    accepted(client, observation(valueString="x"))
    found = refused(client, observation(valueString="x", dataAbsentReason=absent))
    assert found == [("error", "obs-6", "Observation")]


def test_obs7_component_code_differs_from_the_code_with_a_value(client: TestClient) -> None:
    # obs-7: "If Observation.code is the same as an Observation.component.code then the
    # value element associated with the code SHALL NOT be present"
    same = {"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}}
    other = {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}}
    accepted(client, observation(valueString="x", component=[other]))
    accepted(client, observation(component=[same]))  # no value
    found = refused(client, observation(valueString="x", component=[other, same]))
    assert found == [("error", "obs-7", "Observation")]


def test_obs3_each_reference_range_has_bounds_or_text(client: TestClient) -> None:
    # obs-3, on Observation.referenceRange: "Must have at least a low or a high or text"
    good = [{"low": {"value": 1}}, {"text": "normal"}]
    accepted(client, observation(referenceRange=good))
    bad = [{"text": "normal"}, {"appliesTo": [{"text": "adults"}]}]
    found = refused(client, observation(referenceRange=bad))
    assert found == [("error", "obs-3", "Observation.referenceRange[1]")]


def test_pat1_contact_has_details_or_organization(client: TestClient) -> None:
    # patient.html#invs pat-1: "SHALL at least contain a contact's details or a
    # reference to an organization"
    accepted(client, patient(contact=[{"name": {"family": "Doe"}}]))
    found = refused(client, patient(contact=[{"name": {"family": "Doe"}}, {"gender": "male"}]))
    assert found == [("error", "pat-1", "Patient.contact[1]")]


def test_per1_period_start_not_after_end(client: TestClient) -> None:
    # datatypes.html#Period per-1: "If present, start SHALL have a lower value than end"
    ok = {"start": "2020-01-01T10:00:00+02:00", "end": "2020-01-01T09:00:00Z"}  # 08:00Z
    accepted(client, patient(name=[{"family": "A", "period": ok}]))
    accepted(client, patient(name=[{"family": "A", "period": {"start": "2021"}}]))
    bad = {"start": "2020-01-02", "end": "2020-01-01"}
    found = refused(client, patient(name=[{"family": "A", "period": bad}]))
    assert found == [("error", "per-1", "Patient.name[0].period")]
    # different precisions: compared where FHIRPath can (2021 is after 2020-06)
    mixed = {"start": "2021", "end": "2020-06-01T00:00:00Z"}
    found = refused(client, patient(name=[{"family": "A", "period": mixed}]))
    assert found == [("error", "per-1", "Patient.name[0].period")]


def test_qty3_unit_code_needs_a_system(client: TestClient) -> None:
    # datatypes.html#Quantity qty-3: "If a code for the unit is present, the system SHALL
    # also be present"
    ucum = "http://unitsofmeasure.org"
    accepted(client, observation(valueQuantity={"value": 1, "code": "mg", "system": ucum}))
    found = refused(client, observation(valueQuantity={"value": 1, "code": "mg"}))
    assert found == [("error", "qty-3", "Observation.value.ofType(Quantity)")]


def test_ref1_local_reference_needs_the_contained_resource(client: TestClient) -> None:
    # references.html#Reference ref-1: "SHALL have a contained resource if a local
    # reference is provided"
    accepted(client, observation(contained=[ORG], performer=[{"reference": "#org"}]))
    found = refused(client, observation(performer=[{"reference": "#nope"}]))
    assert found == [("error", "ref-1", "Observation.performer[0]")]


def test_cpt2_evaluated_by_fhirpath(client: TestClient) -> None:
    # datatypes.html#ContactPoint cpt-2 (left to the FHIRPath engine): "A system is
    # required if a value is provided."
    accepted(client, patient(telecom=[{"system": "phone", "value": "555"}]))
    found = refused(client, patient(telecom=[{"system": "phone", "value": "1"}, {"value": "2"}]))
    assert found == [("error", "cpt-2", "Patient.telecom[1]")]


# --- nested resources ---------------------------------------------------------------------


def test_contained_resource_is_checked_at_its_own_path(client: TestClient) -> None:
    org = {**ORG, "telecom": [{"value": "555"}]}
    found = refused(client, patient(contained=[org], managingOrganization={"reference": "#org"}))
    assert found == [("error", "cpt-2", "Patient.contained[0].telecom[0]")]


def test_bundle_entries_are_checked_as_resources(client: TestClient) -> None:
    # bundle.html#invs bdl-1: "total only when a search or history" (on the Bundle), and
    # obs-6 on the entry, at its path
    bad = observation(valueString="x", dataAbsentReason={"text": "n/a"})
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "total": 1,
        "entry": [{"fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "resource": bad}],
    }
    found = invariants(validate(client, bundle))
    assert ("error", "bdl-1", "Bundle.total") in found
    assert ("error", "obs-6", "Bundle.entry[0].resource") in found


# --- the setting ----------------------------------------------------------------------------


@pytest.fixture
def lax(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, validate_invariants=False) as c:
        yield c


def test_invariants_can_be_switched_off_for_writes_not_for_validate(lax: TestClient) -> None:
    """FHIR_VALIDATE_INVARIANTS=false: a write gets only the structural pass, while
    $validate, asked for a full answer as the HL7 validator gives one, still evaluates
    the invariants (obs-6: dataAbsentReason only when there is no value)."""
    both = observation(valueString="x", dataAbsentReason={"text": "n/a"})
    r = post(lax, both)
    assert r.status_code == 201, r.text
    assert ("error", "obs-6", "Observation") in invariants(validate(lax, both))
    assert invariants(validate(lax, observation(valueString="x"))) == []


# --- the server's own resources --------------------------------------------------------------


def test_the_servers_own_resources_meet_the_invariants(client: TestClient) -> None:
    """The CapabilityStatement (cpb-1..cpb-16) and a searchset Bundle (bdl-1..bdl-9,
    with its entries) as the server writes them fail no invariant."""
    capabilities = client.get("/fhir/metadata").json()
    assert capabilities["resourceType"] == "CapabilityStatement"
    assert [f for f in invariants(validate(client, capabilities)) if f[0] == "error"] == []
    assert post(client, patient()).status_code == 201
    bundle = client.get("/fhir/Patient").json()
    assert bundle["type"] == "searchset" and bundle["entry"]
    assert [f for f in invariants(validate(client, bundle)) if f[0] == "error"] == []


def test_ext1_an_extension_has_a_value_or_extensions(client: TestClient) -> None:
    # extensibility.html#invs ext-1: "Must have either extensions or value[x], not both";
    # both is a structural error, neither is found by the invariants
    url = "http://example.org/x"
    accepted(client, patient(extension=[{"url": url, "valueString": "a"}]))
    found = refused(client, patient(extension=[{"url": url}]))
    assert found == [("error", "ext-1", "Patient.extension[0]")]
    both = [{"url": url, "valueString": "a", "extension": [{"url": "b", "valueCode": "c"}]}]
    assert refused(client, patient(extension=both)) == [("error", "ext-1", "Patient.extension[0]")]
