"""Reference, chained and reverse-chained search, _id, uri, compartment and system
search (search.html#reference, #chaining, #has, #uri, #id, #_type;
compartmentdefinition-patient.html). Expected sets are worked out by hand from the
resources of the ``world`` fixture."""

from __future__ import annotations

import pytest
from fhir_helpers import (
    BASE,
    create_with_id,
    found,
    keys,
    observation,
    search,
    shared_client,
)

MRN = "http://hospital.example/mrn"
LOINC = "http://loinc.org"


def _seed(client) -> None:
    def put(resource: dict, rid: str) -> None:
        create_with_id(client, resource, rid)

    put({"resourceType": "Organization", "name": "Acme Health"}, "acme")
    put({"resourceType": "Organization", "name": "Other Clinic"}, "other")
    for rid, given, state in (("joe", "Joe", "CA"), ("jane", "Jane", "MN"), ("mike", "Mike", "MN")):
        put(
            {
                "resourceType": "Practitioner",
                "name": [{"family": "Doe", "given": [given]}],
                "address": [{"state": state}],
            },
            rid,
        )

    def person(family: str, given: str, mrn: str, **extra: object) -> dict:
        return {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "identifier": [{"system": MRN, "value": mrn}],
            **extra,
        }

    put(
        person(
            "Alpha",
            "Peter",
            "A1",
            managingOrganization={"reference": "Organization/acme"},
            generalPractitioner=[
                {"reference": "Practitioner/joe"},
                {"reference": "Practitioner/jane"},
            ],
        ),
        "pa",
    )
    put(
        person(
            "Beta",
            "Paula",
            "B1",
            managingOrganization={"reference": "Organization/other"},
            generalPractitioner=[{"reference": "Practitioner/mike"}],
        ),
        "pb",
    )
    put(person("Gamma", "Jack", "C1"), "pc")
    put({"resourceType": "Group", "type": "person", "actual": True, "name": "Peter's group"}, "grp")
    put({"resourceType": "Patient", "active": True}, "grp")  # same id, another type

    def obs(code: str, **extra: object) -> dict:
        return observation(code={"coding": [{"system": LOINC, "code": code}]}, **extra)

    put(obs("1234-5", subject={"reference": "Patient/pa"}), "o1")
    put(
        obs("1234-5", subject={"reference": "Patient/pb"}, performer=[{"reference": "Patient/pa"}]),
        "o2",
    )
    put(obs("9999-9", subject={"reference": f"{BASE}/Patient/pa"}), "o3")  # absolute, this server
    put(obs("1234-5", subject={"reference": "Group/grp"}), "o4")
    put(obs("1234-5", subject={"identifier": {"system": MRN, "value": "A1"}}), "o5")
    put(obs("5555-5", subject={"reference": "Patient/pc"}), "o7")
    put(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pa"},
        },
        "e1",
    )
    put(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pb"},
        },
        "e2",
    )
    for rid, target, agent in (("pv1", "o1", "joe"), ("pv2", "o2", "jane")):
        put(
            {
                "resourceType": "Provenance",
                "target": [{"reference": f"Observation/{target}"}],
                "recorded": "2020-01-01T00:00:00Z",
                "agent": [{"who": {"reference": f"Practitioner/{agent}"}}],
            },
            rid,
        )
    for rid, url in (
        ("vs1", "http://acme.org/fhir/ValueSet/123"),
        ("vs2", "http://acme.org/fhir/ValueSet/1234"),
        ("vs3", "http://acme.org/fhir/"),
        ("vs4", "http://acme.org/other/ValueSet/9"),
        ("vs5", "urn:oid:1.2.3.4.5"),
    ):
        put({"resourceType": "ValueSet", "status": "active", "url": url}, rid)


@pytest.fixture(scope="module")
def world(mongo_url):
    with shared_client(mongo_url) as client:  # read-only tests share these
        _seed(client)
        yield client


# --- plain references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # search.html#reference: [id], [type]/[id], and "A relative reference resolving
        # to the same value as a specified absolute URL, or vice versa, qualifies as a
        # match" (o3 refers to this server's Patient/pa by absolute URL).
        ({"subject": "Patient/pa"}, {"o1", "o3"}),
        ({"subject": "pa"}, {"o1", "o3"}),
        ({"subject": f"{BASE}/Patient/pa"}, {"o1", "o3"}),
        ({"subject": "Group/grp"}, {"o4"}),
        ({"subject": "grp"}, {"o4"}),
        # "subject:Patient=23 ... has the same effect as the previous search"
        ({"subject:Patient": "pa"}, {"o1", "o3"}),
        ({"subject:Group": "grp"}, {"o4"}),
        ({"subject:Patient": "grp"}, set()),
        # "patient ... is limited to only include references of type Patient"
        ({"patient": "pa"}, {"o1", "o3"}),
        ({"patient": "Patient/pa"}, {"o1", "o3"}),
        ({"patient": "grp"}, set()),
        ({"subject": "Patient/pa,Patient/pb"}, {"o1", "o2", "o3"}),
        ({"subject": "Patient/nobody"}, set()),
        ({"performer": "Patient/pa"}, {"o2"}),
        # ":identifier ... the search value works as a token search"
        ({"subject:identifier": f"{MRN}|A1"}, {"o5"}),
        ({"subject:identifier": "A1"}, {"o5"}),
        ({"subject:identifier": f"{MRN}|B1"}, set()),
        ({"_id": "o1"}, {"o1"}),
        ({"_id": "o1,o2,nope"}, {"o1", "o2"}),
        ({"_id": "O1"}, set()),  # "matches on _id are always case sensitive"
        ([("_id", "o1"), ("subject", "Patient/pb")], set()),
    ],
)
def test_reference(world, params, expected):
    assert found(world, "Observation", params) == expected


def test_reference_to_another_server_is_not_local(client):
    create_with_id(client, observation(subject={"reference": "Patient/pa"}), "local")
    far = "http://other.example/fhir/Patient/pa"
    create_with_id(client, observation(subject={"reference": far}), "remote")
    # search.html#reference: Patient/pa means this server's Patient/pa, whose full URL is
    # http://testserver/fhir/Patient/pa; another server's Patient/pa is another resource.
    assert found(client, "Observation", {"subject": far}) == {"remote"}
    assert found(client, "Observation", {"subject": "Patient/pa"}) == {"local"}


# --- chains ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        # search.html#chaining: "subject:Patient.name=peter ... lab reports that have a
        # subject which is a patient, whose name includes 'peter'"
        ("Observation", {"subject:Patient.name": "peter"}, {"o1", "o3"}),
        ("Observation", {"subject.name": "peter"}, {"o1", "o3"}),
        ("Observation", {"subject.name": "paula"}, {"o2"}),
        ("Observation", {"subject:Group.actual": "true"}, {"o4"}),
        ("Observation", {"subject:Patient.identifier": f"{MRN}|B1"}, {"o2"}),
        ("Observation", {"patient.family": "alpha,gamma"}, {"o1", "o3", "o7"}),
        ("Observation", {"subject:Patient.name": "nobody"}, set()),
        ("Observation", {"performer:Patient.name": "peter"}, {"o2"}),
        # two levels: Observation -> Patient -> Organization
        ("Observation", {"subject:Patient.organization.name": "acme"}, {"o1", "o3"}),
        ("Observation", {"subject:Patient.organization.name": "other"}, {"o2"}),
        ("Observation", {"subject:Patient.organization:Organization.name": "acme"}, {"o1", "o3"}),
        # Encounter -> Patient -> Practitioner (Group, the other subject type, has no
        # general-practitioner parameter)
        ("Encounter", {"subject.general-practitioner.name": "mike"}, {"e2"}),
        ("Encounter", {"subject:Patient.general-practitioner:Practitioner.name": "jane"}, {"e1"}),
        ("Encounter", {"subject.general-practitioner.address-state": "mn"}, {"e1", "e2"}),
        # "chained parameters are applied independently to the target resource ...
        # may return Patients cared for by Joe from CA and Jane from MN"
        (
            "Patient",
            [("general-practitioner.name", "joe"), ("general-practitioner.address-state", "MN")],
            {"pa"},
        ),
        (
            "Patient",
            [("general-practitioner.name", "mike"), ("general-practitioner.address-state", "CA")],
            set(),
        ),
        ("Patient", {"organization.name": "acme,other"}, {"pa", "pb"}),
        ("Patient", {"organization._id": "acme"}, {"pa"}),
    ],
)
def test_chain(world, path, params, expected):
    assert found(world, path, params) == expected


# --- reverse chains --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # search.html#has: "Patient resources, where the patient resource is referred to
        # by at least one Observation where the observation has a code of 1234"
        ({"_has:Observation:patient:code": "1234-5"}, {"pa", "pb"}),
        ({"_has:Observation:patient:code": f"{LOINC}|9999-9"}, {"pa"}),  # o3: absolute URL
        ({"_has:Observation:patient:code": "9999-9,5555-5"}, {"pa", "pc"}),
        (
            [
                ("_has:Observation:patient:code", "1234-5"),
                ("_has:Observation:patient:code", "9999-9"),
            ],
            {"pa"},
        ),
        ({"_has:Observation:performer:code": "1234-5"}, {"pa"}),
        ({"_has:Observation:subject:code": "0000-0"}, set()),
        # o4 refers to Group/grp, not to Patient/grp
        ({"_has:Observation:subject:code": "1234-5"}, {"pa", "pb"}),
        ({"_has:Encounter:subject:status": "finished"}, {"pa", "pb"}),
        # "The _has parameter can be chained"
        ({"_has:Observation:patient:_has:Provenance:target:agent": "Practitioner/joe"}, {"pa"}),
        ({"_has:Observation:patient:_has:Provenance:target:agent": "jane"}, {"pb"}),
        ({"_has:Observation:patient:_has:Provenance:target:agent": "mike"}, set()),
        # a reverse chain ending in a chain
        ({"_has:Observation:patient:patient.organization.name": "other"}, {"pb"}),
    ],
)
def test_reverse_chain(world, params, expected):
    assert found(world, "Patient", params) == expected


def test_reverse_chain_on_other_types(world):
    assert found(world, "Organization", {"_has:Patient:organization:name": "peter"}) == {"acme"}
    assert found(world, "Practitioner", {"_has:Patient:general-practitioner:family": "alpha"}) == {
        "joe",
        "jane",
    }
    assert found(world, "Group", {"_has:Observation:subject:code": "1234-5"}) == {"grp"}


# --- uri -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # search.html#uri: "By default, matches are precise (e.g. case, accent, and
        # escape) sensitive, and the entire URI must match."
        ({"url": "http://acme.org/fhir/ValueSet/123"}, {"vs1"}),
        ({"url": "http://ACME.org/fhir/ValueSet/123"}, set()),
        ({"url": "http://acme.org/fhir/ValueSet/12"}, set()),
        ({"url": "urn:oid:1.2.3.4.5"}, {"vs5"}),
        # ":below ... any value sets that have a URL that starts with http://acme.org/fhir/"
        ({"url:below": "http://acme.org/fhir/"}, {"vs1", "vs2", "vs3"}),
        ({"url:below": "http://acme.org/fhir/ValueSet/123"}, {"vs1", "vs2"}),  # "starts with"
        ({"url:below": "http://acme.org/fhir/ValueSet/123/"}, set()),
        # ":above ... any value set above a given specific URL": the stored URL is a
        # leading part of the search value
        ({"url:above": "http://acme.org/fhir/ValueSet/123/_history/5"}, {"vs1", "vs3"}),
        ({"url:above": "http://acme.org/other/ValueSet/9"}, {"vs4"}),
        ({"url:above": "http://acme.org/fhir/ValueSet/1234"}, {"vs1", "vs2", "vs3"}),
        ({"url:above": "http://acme.org/"}, set()),
        ({"url": "http://acme.org/fhir/ValueSet/123,urn:oid:1.2.3.4.5"}, {"vs1", "vs5"}),
    ],
)
def test_uri(world, params, expected):
    assert found(world, "ValueSet", params) == expected


# --- compartments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        # compartmentdefinition-patient.html: Observation is in a Patient's compartment
        # through subject OR performer.
        ("Patient/pa/Observation", {}, {"o1", "o2", "o3"}),
        ("Patient/pb/Observation", {}, {"o2"}),
        ("Patient/pc/Observation", {}, {"o7"}),
        ("Patient/pa/Observation", {"code": "1234-5"}, {"o1", "o2"}),
        ("Patient/pa/Observation", {"subject": "Patient/pb"}, {"o2"}),
        ("Patient/pb/Observation", {"code": "9999-9"}, set()),
        ("Patient/pa/Encounter", {}, {"e1"}),
        ("Patient/nobody/Observation", {}, set()),
        ("Patient/pa/Patient", {}, {"pa"}),
    ],
)
def test_compartment(world, path, params, expected):
    assert found(world, path, params) == expected


def test_compartment_self_link_keeps_the_compartment(world):
    bundle = search(world, "Patient/pa/Observation", {"code": "1234-5"})
    self_link = next(x["url"] for x in bundle["link"] if x["relation"] == "self")
    assert self_link.startswith(f"{BASE}/Patient/pa/Observation?")
    assert "code=1234-5" in self_link
    assert bundle["total"] == 2


# --- system search ---------------------------------------------------------------------


def test_system_search_over_types(world):
    # search.html#_type: "any search parameters shared across the entire set of
    # specified resources may be used"
    bundle = search(world, "", {"_type": "Patient,Practitioner", "name": "j"})
    assert set(keys(bundle)) == {"Patient/pc", "Practitioner/joe", "Practitioner/jane"}
    assert bundle["total"] == 3
    bundle = search(world, "", {"_type": "Patient,Practitioner", "name": "doe"})
    assert set(keys(bundle)) == {"Practitioner/joe", "Practitioner/jane", "Practitioner/mike"}
    bundle = search(world, "", {"_type": "Organization", "name": "acme"})
    assert keys(bundle) == ["Organization/acme"]


def test_system_search_common_parameters(world):
    # search.html#_type: "If no type is specified, the only search parameters that can
    # be used in global search like this are the base parameters"
    assert set(keys(search(world, "", {"_id": "pa"}))) == {"Patient/pa"}
    assert set(keys(search(world, "", {"_id": "acme,joe"}))) == {
        "Organization/acme",
        "Practitioner/joe",
    }


def test_system_search_pages_across_types(world):
    bundle = search(world, "", {"_type": "Patient,Practitioner", "_count": "2"})
    got = keys(bundle)
    while nxt := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None):
        r = world.get("/fhir" + nxt[len(BASE) :])
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert len(bundle.get("entry", [])) <= 2
        got += keys(bundle)
    expected = {"Patient/pa", "Patient/pb", "Patient/pc", "Patient/grp"} | {
        f"Practitioner/{p}" for p in ("joe", "jane", "mike")
    }
    assert sorted(got) == sorted(expected)
