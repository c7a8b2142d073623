"""SMART scopes on reads, searches, history and $everything (issue #5), table-driven
over scope forms, plus the compartment-leak paths: _include, _revinclude, chains,
_has, cursors, history, $everything.

SMART App Launch 2.2, scopes-and-launch-context: "patient/:resourceType.:permissions
... permission to access resources of the given type for the patient in context";
resources the token may not see answer 404 everywhere (never revealing existence),
interactions no scope covers answer 403."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import shipped_resources
from smart_helpers import TokenMint, ids, smart_client

# Conformance resources the server ships: shared definitions outside every
# compartment, so a wide patient/ scope reads them too.
SHIPPED = shipped_resources()

OBS_A = {"Observation/oa-lab", "Observation/oa-vital"}
OBS_B = {"Observation/ob-lab", "Observation/ob-vital"}

# name -> (scope, token options)
TOKENS: dict[str, tuple[str, dict[str, Any]]] = {
    "patient-all": ("patient/*.rs", {"patient": "pa"}),
    "patient-obs": ("patient/Observation.rs", {"patient": "pa"}),
    "patient-lab": ("patient/Observation.rs?category=laboratory", {"patient": "pa"}),
    "patient-lab-or-vital": (
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs",
        {"patient": "pa"},
    ),
    "patient-lab-and-all": (
        "patient/Observation.rs?category=laboratory patient/Observation.rs",
        {"patient": "pa"},
    ),
    "patient-v1-read": ("patient/*.read", {"patient": "pa"}),
    "patient-v1-star": ("patient/Observation.*", {"patient": "pa"}),
    "patient-v1-write": ("patient/Observation.write", {"patient": "pa"}),
    "patient-r": ("patient/Observation.r", {"patient": "pa"}),
    "patient-s": ("patient/Observation.s", {"patient": "pa"}),
    "patient-c": ("patient/Observation.c", {"patient": "pa"}),
    "patient-no-context": ("patient/*.rs", {}),
    "user-practitioner": ("user/*.rs", {"fhir_user": "Practitioner/dr"}),
    "user-patient": ("user/*.rs", {"fhir_user": "Patient/pb"}),
    "system-all": ("system/*.rs", {}),
    "system-obs-v1": ("system/Observation.read", {}),
    "openid-only": ("openid fhirUser", {}),
}


@pytest.fixture(scope="module")
def world(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    with smart_client(mongo_url) as found:
        yield found


def get(world: tuple[TestClient, TokenMint], token: str, url: str) -> Any:
    client, mint = world
    scope, options = TOKENS[token]
    return client.get(f"/fhir/{url}", headers=mint.headers(scope, **options))


# (token, url, status) for one resource's read/vread/instance history
READS = [
    ("patient-all", "Observation/oa-lab", 200),
    ("patient-all", "Observation/ob-lab", 404),
    ("patient-all", "Patient/pa", 200),
    ("patient-all", "Patient/pb", 404),
    ("patient-all", "Encounter/ea", 200),
    ("patient-all", "Encounter/eb", 404),
    ("patient-all", "Practitioner/dr", 200),  # shared reference data
    ("patient-all", "Observation/nope", 404),
    ("patient-obs", "Observation/oa-vital", 200),
    ("patient-obs", "Patient/pa", 403),
    ("patient-obs", "Practitioner/dr", 403),
    ("patient-lab", "Observation/oa-lab", 200),
    ("patient-lab", "Observation/oa-vital", 404),
    ("patient-lab", "Observation/ob-lab", 404),
    ("patient-lab-or-vital", "Observation/oa-vital", 200),
    ("patient-lab-and-all", "Observation/oa-vital", 200),
    ("patient-v1-read", "Observation/oa-lab", 200),
    ("patient-v1-read", "Observation/ob-vital", 404),
    ("patient-v1-star", "Observation/oa-lab", 200),
    ("patient-v1-write", "Observation/oa-lab", 403),
    ("patient-r", "Observation/oa-lab", 200),
    ("patient-s", "Observation/oa-lab", 403),
    ("patient-c", "Observation/oa-lab", 403),
    ("patient-no-context", "Observation/oa-lab", 403),
    ("user-practitioner", "Observation/ob-lab", 200),
    ("user-practitioner", "Patient/pa", 200),
    ("user-patient", "Observation/ob-lab", 200),
    ("user-patient", "Observation/oa-lab", 404),
    ("user-patient", "Patient/pa", 404),
    ("system-all", "Observation/ob-vital", 200),
    ("system-obs-v1", "Observation/ob-vital", 200),
    ("system-obs-v1", "Patient/pa", 403),
    ("openid-only", "Patient/pa", 403),
]


@pytest.mark.parametrize(("token", "url", "status"), READS)
def test_read_vread_and_instance_history(
    world: tuple[TestClient, TokenMint], token: str, url: str, status: int
) -> None:
    read = get(world, token, url)
    assert read.status_code == status, read.text
    if status == 403:
        issue = read.json()["issue"][0]
        assert issue["code"] == "forbidden"
        assert issue["expression"] == [url.split("/")[0]]
    if status == 200:
        assert read.json()["id"] == url.split("/")[1]
    vread = get(world, token, f"{url}/_history/1")
    assert vread.status_code == status, vread.text
    history = get(world, token, f"{url}/_history")
    assert history.status_code == status, history.text
    if status == 200:
        assert ids(history.json()) == {url}


# (token, search url, status, exact Type/id of the matches)
SEARCHES: list[tuple[str, str, int, set[str]]] = [
    ("patient-all", "Observation", 200, OBS_A),
    ("patient-all", "Observation?subject=Patient/pb", 200, set()),
    ("patient-all", "Observation?_id=ob-lab,oa-lab", 200, {"Observation/oa-lab"}),
    ("patient-all", "Patient", 200, {"Patient/pa"}),
    ("patient-all", "Encounter", 200, {"Encounter/ea"}),
    ("patient-all", "Practitioner", 200, {"Practitioner/dr"}),
    ("patient-obs", "Observation", 200, OBS_A),
    ("patient-obs", "Patient", 403, set()),
    ("patient-lab", "Observation", 200, {"Observation/oa-lab"}),
    ("patient-lab", "Observation?category=vital-signs", 200, set()),
    ("patient-lab-or-vital", "Observation", 200, OBS_A),
    ("patient-lab-and-all", "Observation", 200, OBS_A),
    ("patient-v1-read", "Observation", 200, OBS_A),
    ("patient-v1-star", "Observation", 200, OBS_A),
    ("patient-v1-write", "Observation", 403, set()),
    ("patient-r", "Observation", 403, set()),
    ("patient-s", "Observation", 200, OBS_A),
    ("patient-no-context", "Observation", 403, set()),
    ("user-practitioner", "Observation", 200, OBS_A | OBS_B),
    ("user-patient", "Observation", 200, OBS_B),
    ("system-all", "Observation", 200, OBS_A | OBS_B),
    ("system-obs-v1", "Observation", 200, OBS_A | OBS_B),
    ("system-obs-v1", "Encounter", 403, set()),
    # compartment search
    ("patient-all", "Patient/pa/Observation", 200, OBS_A),
    ("patient-all", "Patient/pb/Observation", 200, set()),
    ("patient-lab", "Patient/pa/Observation", 200, {"Observation/oa-lab"}),
    ("system-all", "Patient/pb/Observation", 200, OBS_B),
    # system search: only the types the token may search
    ("patient-obs", "?_type=Observation", 200, OBS_A),
    ("patient-obs", "?_type=Observation,Encounter", 403, set()),
    ("patient-obs", "", 200, OBS_A),
    ("patient-all", "?_type=Patient,Encounter", 200, {"Patient/pa", "Encounter/ea"}),
    ("openid-only", "", 403, set()),
    # chained parameters: the inner search is restricted too, or refused
    ("patient-all", "Observation?subject:Patient.name=Bravo", 200, set()),
    ("system-all", "Observation?subject:Patient.name=Bravo", 200, OBS_B),
    ("patient-obs", "Observation?subject:Patient.name=Alpha", 403, set()),
    ("patient-all", "Observation?encounter._id=eb", 200, set()),
    # _has: the Practitioner is visible, the other patient's Observations are not
    ("patient-all", "Practitioner?_has:Observation:performer:subject=Patient/pb", 200, set()),
    (
        "patient-all",
        "Practitioner?_has:Observation:performer:subject=Patient/pa",
        200,
        {"Practitioner/dr"},
    ),
    (
        "system-all",
        "Practitioner?_has:Observation:performer:subject=Patient/pb",
        200,
        {"Practitioner/dr"},
    ),
    ("patient-all", "Patient?_has:Observation:subject:_id=ob-lab", 200, set()),
]


@pytest.mark.parametrize(("token", "url", "status", "expected"), SEARCHES)
def test_search(
    world: tuple[TestClient, TokenMint], token: str, url: str, status: int, expected: set[str]
) -> None:
    r = get(world, token, url)
    assert r.status_code == status, r.text
    if status == 200:
        assert ids(r.json(), "match") == expected
        count = get(world, token, url + ("&" if "?" in url else "?") + "_summary=count")
        assert count.json()["total"] == len(expected)
    else:
        assert r.json()["issue"][0]["code"] == "forbidden"


INCLUDES: list[tuple[str, str, set[str]]] = [
    # pa's lab result has pb's as a member: never included for pa's token
    (
        "patient-all",
        "Observation?_id=oa-lab&_include=Observation:has-member&_include=Observation:performer",
        {"Practitioner/dr"},
    ),
    (
        "system-all",
        "Observation?_id=oa-lab&_include=Observation:has-member",
        {"Observation/ob-lab"},
    ),
    (
        "patient-all",
        "Observation?_id=oa-lab&_include=Observation:*",
        {"Patient/pa", "Encounter/ea", "Practitioner/dr"},
    ),
    (
        "system-all",
        "Observation?_id=oa-lab&_include=Observation:*",
        {"Patient/pa", "Encounter/ea", "Practitioner/dr", "Observation/ob-lab"},
    ),
    # the Practitioner's Observations: only the patient's own come back
    ("patient-all", "Practitioner?_revinclude=Observation:performer", {"Observation/oa-lab"}),
    (
        "system-all",
        "Practitioner?_revinclude=Observation:performer",
        {"Observation/oa-lab", "Observation/ob-lab"},
    ),
    ("patient-all", "Practitioner?_revinclude=Observation:*", {"Observation/oa-lab"}),
    # iterate: Practitioner -> lab Observations -> their subjects
    (
        "patient-all",
        "Practitioner?_revinclude=Observation:performer&_include:iterate=Observation:subject",
        {"Observation/oa-lab", "Patient/pa"},
    ),
    (
        "system-all",
        "Practitioner?_revinclude=Observation:performer&_include:iterate=Observation:subject",
        {"Observation/oa-lab", "Observation/ob-lab", "Patient/pa", "Patient/pb"},
    ),
    # a type the token may not read is dropped silently, not refused
    ("patient-obs", "Observation?_id=oa-lab&_include=Observation:performer", set()),
    (
        "patient-obs",
        "Observation?_id=oa-lab&_include=Observation:has-member",
        set(),
    ),
]


@pytest.mark.parametrize(("token", "url", "included"), INCLUDES)
def test_include_and_revinclude_are_filtered(
    world: tuple[TestClient, TokenMint], token: str, url: str, included: set[str]
) -> None:
    r = get(world, token, url)
    assert r.status_code == 200, r.text
    assert ids(r.json(), "include") == included


def test_cursor_from_a_wider_token_does_not_widen_access(
    world: tuple[TestClient, TokenMint],
) -> None:
    wide = get(world, "system-all", "Observation?_sort=_id&_count=2")
    assert ids(wide.json()) == OBS_A  # oa-lab, oa-vital sort first
    next_url = next(link["url"] for link in wide.json()["link"] if link["relation"] == "next")
    narrow = get(world, "patient-all", next_url.split("/fhir/", 1)[1])
    assert narrow.status_code == 200
    assert ids(narrow.json()) == set()  # ob-* stay invisible on the page after
    assert ids(get(world, "system-all", next_url.split("/fhir/", 1)[1]).json()) == OBS_B


HISTORIES: list[tuple[str, str, int, set[str]]] = [
    ("patient-all", "Observation/_history", 200, OBS_A),
    ("patient-lab", "Observation/_history", 200, {"Observation/oa-lab"}),
    ("patient-obs", "Patient/_history", 403, set()),
    (
        "patient-all",
        "_history",
        200,
        {"Patient/pa", "Encounter/ea", "Practitioner/dr"} | OBS_A | SHIPPED,
    ),
    ("patient-obs", "_history", 200, OBS_A),
    ("user-patient", "Observation/_history", 200, OBS_B),
    ("system-all", "Observation/_history", 200, OBS_A | OBS_B),
    ("openid-only", "_history", 403, set()),
]


@pytest.mark.parametrize(("token", "url", "status", "expected"), HISTORIES)
def test_type_and_system_history(
    world: tuple[TestClient, TokenMint], token: str, url: str, status: int, expected: set[str]
) -> None:
    r = get(world, token, url)
    assert r.status_code == status, r.text
    if status == 200:
        assert ids(r.json()) == expected
        count = get(world, token, f"{url}?_summary=count")
        assert count.json()["total"] == len(expected)


EVERYTHING: list[tuple[str, str, int, set[str]]] = [
    (
        "patient-all",
        "Patient/pa/$everything",
        200,
        {"Patient/pa", "Encounter/ea", "Practitioner/dr"} | OBS_A,
    ),
    ("patient-all", "Patient/pb/$everything", 404, set()),
    (
        "patient-all",
        "Patient/$everything",
        200,
        {"Patient/pa", "Encounter/ea", "Practitioner/dr"} | OBS_A,
    ),
    (
        "user-patient",
        "Patient/$everything",
        200,
        {"Patient/pb", "Encounter/eb", "Practitioner/dr"} | OBS_B,
    ),
    ("patient-obs", "Patient/pa/$everything", 403, set()),
    (
        "system-all",
        "Patient/pb/$everything",
        200,
        {"Patient/pb", "Encounter/eb", "Practitioner/dr"} | OBS_B,
    ),
]


@pytest.mark.parametrize(("token", "url", "status", "expected"), EVERYTHING)
def test_everything(
    world: tuple[TestClient, TokenMint], token: str, url: str, status: int, expected: set[str]
) -> None:
    r = get(world, token, url)
    assert r.status_code == status, r.text
    if status == 200:
        assert ids(r.json()) == expected


def test_everything_leaves_out_types_and_references_the_token_may_not_read(
    world: tuple[TestClient, TokenMint],
) -> None:
    client, mint = world
    headers = mint.headers("patient/Patient.rs patient/Observation.rs", patient="pa")
    r = client.get("/fhir/Patient/pa/$everything", headers=headers)
    assert r.status_code == 200, r.text
    assert ids(r.json()) == {"Patient/pa"} | OBS_A  # no Encounter, no Practitioner


@pytest.mark.parametrize(
    ("scope", "query"),
    [
        ("patient/*.rs", "Observation"),
        ("patient/*.rs", "Observation?code=http://loinc.org|code-oa-lab"),
        ("patient/Observation.rs?category=laboratory", "Observation"),
        ("patient/*.rs", "Observation?subject:Patient.name=Alpha"),
        ("patient/*.rs", "Patient?_has:Observation:subject:code=code-oa-lab"),
        ("user/*.rs", "Observation?category=laboratory"),
    ],
)
def test_restricted_queries_use_indexes(
    world: tuple[TestClient, TokenMint], scope: str, query: str
) -> None:
    """The policy's filter is ANDed into every query the search issues (chained and
    _has sub-queries too) and keeps them on indexes: no COLLSCAN anywhere."""
    from fhir_server.authz.policy import Policy
    from fhir_server.service.search import plan_stages
    from smart_auth.scopes import ScopeSet
    from smart_auth.tokens import AccessToken

    client, _ = world
    search = client.app.state.services.search  # type: ignore[attr-defined]
    access = AccessToken("app", None, ScopeSet.parse(scope), "pa", None, "Patient/pa", "j", 0, {})
    policy = Policy(access, search)
    plan = search.parser().parse_url(query)
    explained = client.portal.call(search.explain, plan, policy)  # type: ignore[union-attr]
    assert explained
    for collection, winning in explained:
        stages = plan_stages(winning)
        assert "COLLSCAN" not in stages, (collection, winning)
        assert "IXSCAN" in stages
