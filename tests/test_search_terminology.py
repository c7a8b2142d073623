"""Token search modifiers answered by the terminology service (search.html#token):
:in and :not-in (ValueSet membership), :below and :above (subsumption in a hierarchical
code system), and :text on Coding.display and CodeableConcept.text. Over HTTP, on the
Spanish-designated hierarchy of terminology_helpers (trastorno > diabetes > dm1, dm2;
trastorno > hta; hallazgo > fiebre, tos)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from smart_helpers import ADMIN, TokenMint, smart_client
from terminology_helpers import CODE_SYSTEM, SYSTEM, VS_ALL, outcome, value_set

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.service.search import plan_stages
from terminology.concepts import CONCEPTS

OTHER = "http://example.org/fhir/CodeSystem/otro"
VS = "http://example.org/fhir/ValueSet/"
VS_DIABETES = VS + "diabetes"  # is-a diabetes: diabetes, dm1, dm2
VS_LISTED = VS + "listed"  # version 1: hta; version 2: fiebre


def condition(cid: str, *codings: tuple[str, str], text: str | None = None) -> dict[str, Any]:
    code: dict[str, Any] = {}
    if codings:
        code["coding"] = [{"system": s, "code": c} for s, c in codings]
    if text is not None:
        code["text"] = text
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p"},
        **({"code": code} if codings or text else {}),
    }


CONDITIONS = [
    condition("c-diabetes", (SYSTEM, "diabetes")),
    condition("c-dm1", (SYSTEM, "dm1")),
    condition("c-dm2", (SYSTEM, "dm2"), (OTHER, "x")),
    condition("c-hta", (SYSTEM, "hta")),
    condition("c-fiebre", (SYSTEM, "fiebre")),
    condition("c-other-dm1", (OTHER, "dm1")),  # the same code in another system
    condition("c-none"),
]


def definitions() -> list[dict[str, Any]]:
    diabetes = {
        "system": SYSTEM,
        "filter": [{"property": "concept", "op": "is-a", "value": "diabetes"}],
    }
    listed = [
        {**value_set(VS_LISTED, {"system": SYSTEM, "concept": [{"code": c}]}), "version": v}
        for v, c in (("1", "hta"), ("2", "fiebre"))
    ]
    return [
        CODE_SYSTEM,
        value_set(VS_ALL, {"system": SYSTEM}),
        value_set(VS_DIABETES, diabetes),
        *listed,
    ]


def put_all(client: TestClient, resources: list[dict[str, Any]], **headers: str) -> None:
    for r in resources:
        if "id" in r:
            got = client.put(f"/fhir/{r['resourceType']}/{r['id']}", json=r, headers=headers)
            assert got.status_code == 201, got.text
        else:
            got = client.post(f"/fhir/{r['resourceType']}", json=r, headers=headers)
            assert got.status_code == 201, got.text


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    put_all(client, [*definitions(), *CONDITIONS])
    return client


def found(client: TestClient, query: dict[str, str], **headers: str) -> set[str]:
    r = client.get("/fhir/Condition", params=query, headers=headers)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


# --- :below / :above ---------------------------------------------------------------------


def test_below_is_the_code_and_its_descendants_in_that_system(loaded: TestClient) -> None:
    # codesystem-search-modifier-code.html, below: "The search parameter tests whether
    # the value in a resource is subsumed by the specified value (is-a, or hierarchical
    # relationships)"; a code subsumes itself, so the concept matches too. Only codings
    # of the concept's own system match (c-other-dm1 has the code dm1 in another).
    below = {"c-diabetes", "c-dm1", "c-dm2"}
    assert found(loaded, {"code:below": f"{SYSTEM}|diabetes"}) == below
    assert found(loaded, {"code:below": f"{SYSTEM}|trastorno"}) == below | {"c-hta"}
    assert found(loaded, {"code:below": f"{SYSTEM}|dm1"}) == {"c-dm1"}
    # a list ORs: diabetes's subtree or fiebre
    assert found(loaded, {"code:below": f"{SYSTEM}|diabetes,{SYSTEM}|fiebre"}) == below | {
        "c-fiebre"
    }
    # AND with another criterion
    assert found(loaded, {"code:below": f"{SYSTEM}|diabetes", "_id": "c-dm1,c-hta"}) == {"c-dm1"}


def test_above_is_the_code_and_its_ancestors(loaded: TestClient) -> None:
    # above: "tests whether the value in a resource subsumes the specified value"
    assert found(loaded, {"code:above": f"{SYSTEM}|dm1"}) == {"c-dm1", "c-diabetes"}
    assert found(loaded, {"code:above": f"{SYSTEM}|hta"}) == {"c-hta"}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"code:below": "diabetes"}, 400, "invalid"),  # no system
        ({"code:above": f"{SYSTEM}|"}, 400, "invalid"),  # no code
        ({"code:below": "|diabetes"}, 400, "invalid"),
        ({"code:below": f"{OTHER}|dm1"}, 400, "not-found"),  # no such code system loaded
        ({"code:in": VS + "nope"}, 400, "not-found"),
        ({"code:not-in": VS + "nope"}, 400, "not-found"),
    ],
)
def test_errors_are_outcomes_naming_the_parameter(
    loaded: TestClient, query: dict[str, str], status: int, code: str
) -> None:
    r = loaded.get("/fhir/Condition", params=query)
    assert r.status_code == status, r.text
    issue = outcome(r)
    assert issue["code"] == code
    assert issue["expression"] == list(query)


# --- :in / :not-in ----------------------------------------------------------------------


def test_in_matches_members_of_the_expansion(loaded: TestClient) -> None:
    # codesystem-search-modifier-code.html, in: "The search parameter is a URI
    # (relative or absolute) that identifies a value set, and the search parameter
    # tests whether the coding is in the specified value set."
    assert found(loaded, {"code:in": VS_DIABETES}) == {"c-diabetes", "c-dm1", "c-dm2"}
    everything = {"c-diabetes", "c-dm1", "c-dm2", "c-hta", "c-fiebre"}
    assert found(loaded, {"code:in": VS_ALL}) == everything  # not c-other-dm1
    # url|version picks the version; without it, the newest
    assert found(loaded, {"code:in": f"{VS_LISTED}|1"}) == {"c-hta"}
    assert found(loaded, {"code:in": VS_LISTED}) == {"c-fiebre"}
    assert found(loaded, {"code:in": f"{VS_DIABETES},{VS_LISTED}|1"}) == {
        "c-diabetes",
        "c-dm1",
        "c-dm2",
        "c-hta",
    }


def test_in_on_a_code_element_whose_system_the_binding_implies(client: TestClient) -> None:
    """Observation.status is a ``code``: no system is stored with it, the value set's
    system (the binding's) is implied."""
    statuses = "http://hl7.org/fhir/observation-status"
    done = [{"code": "final"}, {"code": "amended"}]
    vs = value_set(VS + "done", {"system": statuses, "concept": done})
    observations = [
        {"resourceType": "Observation", "id": s, "status": s, "code": {"text": "x"}}
        for s in ("final", "amended", "preliminary")
    ]
    put_all(client, [vs, *observations])
    r = client.get("/fhir/Observation", params={"status:in": VS + "done"})
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {"final", "amended"}
    r = client.get("/fhir/Observation", params={"status:not-in": VS + "done"})
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {"preliminary"}


def test_not_in_is_the_complement_like_not(loaded: TestClient) -> None:
    # not-in: "tests whether the coding is not in the specified value set". Read as
    # :not is (search.html#token: "the negation applies to the set"): a resource
    # matches when none of its codings is in it (c-dm2's OTHER coding is not, but its
    # clinica coding is), and one without a code matches.
    assert found(loaded, {"code:not-in": VS_DIABETES}) == {
        "c-hta",
        "c-fiebre",
        "c-other-dm1",
        "c-none",
    }


def test_in_follows_an_updated_value_set(loaded: TestClient) -> None:
    assert found(loaded, {"code:in": VS_DIABETES}) == {"c-diabetes", "c-dm1", "c-dm2"}
    stored = loaded.get("/fhir/ValueSet", params={"url": VS_DIABETES}).json()["entry"][0]
    vs = stored["resource"]
    vs["compose"]["include"][0]["filter"][0]["op"] = "descendent-of"
    assert loaded.put(f"/fhir/ValueSet/{vs['id']}", json=vs).status_code == 200
    assert found(loaded, {"code:in": VS_DIABETES}) == {"c-dm1", "c-dm2"}


def test_in_and_below_follow_an_updated_code_system(loaded: TestClient) -> None:
    """Expansions and subtrees are cached (terminology/searching.py); a changed
    CodeSystem must show at once."""
    put_all(loaded, [condition("c-dm3", (SYSTEM, "dm3"))])
    diabetes = {"c-diabetes", "c-dm1", "c-dm2"}
    assert found(loaded, {"code:in": VS_DIABETES}) == diabetes
    assert found(loaded, {"code:below": f"{SYSTEM}|diabetes"}) == diabetes
    stored = loaded.get("/fhir/CodeSystem", params={"url": SYSTEM}).json()["entry"][0]
    cs = stored["resource"]
    cs["concept"][0]["concept"][0]["concept"].append({"code": "dm3", "display": "Type 3"})
    assert loaded.put(f"/fhir/CodeSystem/{cs['id']}", json=cs).status_code == 200
    assert found(loaded, {"code:in": VS_DIABETES}) == diabetes | {"c-dm3"}
    assert found(loaded, {"code:below": f"{SYSTEM}|diabetes"}) == diabetes | {"c-dm3"}
    assert found(loaded, {"code:above": f"{SYSTEM}|dm3"}) == {"c-dm3", "c-diabetes"}


def test_too_large_expansions_and_subtrees_are_too_costly(settings: Settings) -> None:
    small = settings.model_copy(update={"terminology_max_expansion": 3})
    with TestClient(create_app(small), base_url="http://testserver") as client:
        put_all(client, [*definitions(), *CONDITIONS])
        for query in ({"code:in": VS_ALL}, {"code:below": f"{SYSTEM}|trastorno"}):
            r = client.get("/fhir/Condition", params=query)
            assert r.status_code == 400, r.text
            issue = outcome(r)
            assert issue["code"] == "too-costly" and issue["expression"] == list(query)
        # within the limit: answered
        assert found(client, {"code:below": f"{SYSTEM}|diabetes"}) == {
            "c-diabetes",
            "c-dm1",
            "c-dm2",
        }
    with MongoClient(settings.mongo_url) as mc:
        mc.drop_database(settings.database)


# --- :text --------------------------------------------------------------------------------


def test_text_matches_display_and_text_without_accents(client: TestClient) -> None:
    # codesystem-search-modifier-code.html, text: "searches text associated with the
    # code/value - either CodeableConcept.text, Coding.display, or Identifier.type.text"
    hta = condition("t-hta", text="Hipertensión arterial")
    dm2 = condition("t-dm2", (SYSTEM, "dm2"))
    dm2["code"]["coding"][0]["display"] = "Diabetes mellitus tipo 2 con nefropatía"
    put_all(client, [hta, dm2])
    assert found(client, {"code:text": "hipertension"}) == {"t-hta"}
    assert found(client, {"code:text": "HIPERTENSIÓN art"}) == {"t-hta"}
    assert found(client, {"code:text": "nefropatia"}) == {"t-dm2"}
    assert found(client, {"code:text": "diabetes mellitus tipo"}) == {"t-dm2"}
    assert found(client, {"code:text": "tipo 1"}) == set()


# --- indexes, capability ------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [f"Condition?code:below={SYSTEM}|trastorno", f"Condition?code:in={VS_ALL}"],
)
def test_terminology_modifiers_use_indexes(loaded: TestClient, query: str) -> None:
    search = loaded.app.state.services.search  # type: ignore[attr-defined]
    plan = search.parser().parse_url(query)
    explained = loaded.portal.call(search.explain, plan)  # type: ignore[union-attr]
    assert explained and all("COLLSCAN" not in plan_stages(w) for _, w in explained)
    assert all("IXSCAN" in plan_stages(w) for _, w in explained)


def test_the_subtree_is_one_range_of_the_ancestor_index(
    loaded: TestClient, settings: Settings
) -> None:
    assert found(loaded, {"code:below": f"{SYSTEM}|trastorno"})  # loads the concepts
    with MongoClient(settings.mongo_url) as mc:
        concepts = mc[settings.database][CONCEPTS]
        key = concepts.find_one({"c": "trastorno"})["k"]  # type: ignore[index]
        explained = concepts.find({"k": key, "anc": "trastorno"}, {"_id": 0, "c": 1}).explain()
    stages = plan_stages(explained["queryPlanner"]["winningPlan"])
    assert "IXSCAN" in stages and "COLLSCAN" not in stages


def test_capability_statement_documents_the_token_modifiers(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    condition_type = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Condition")
    code = next(p for p in condition_type["searchParam"] if p["name"] == "code")
    for modifier in (":in", ":not-in", ":below", ":above", ":text", ":not"):
        assert modifier in code["documentation"]


# --- SMART --------------------------------------------------------------------------------


@pytest.fixture
def smart(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    with smart_client(mongo_url) as (client, mint):
        admin = mint.headers(ADMIN)
        mine = [dict(c, id=f"a-{c['id']}", subject={"reference": "Patient/pa"}) for c in CONDITIONS]
        theirs = [
            dict(c, id=f"b-{c['id']}", subject={"reference": "Patient/pb"}) for c in CONDITIONS
        ]
        draft = {**value_set(VS + "draft", {"system": SYSTEM}), "status": "draft"}
        put_all(client, [*definitions(), draft, *mine, *theirs], **admin)
        yield client, mint


def test_smart_results_stay_within_the_patient(smart: tuple[TestClient, TokenMint]) -> None:
    client, mint = smart
    headers = mint.headers("patient/*.rs", patient="pa")
    diabetes = {"a-c-diabetes", "a-c-dm1", "a-c-dm2"}
    assert found(client, {"code:in": VS_DIABETES}, **headers) == diabetes
    assert found(client, {"code:below": f"{SYSTEM}|diabetes"}, **headers) == diabetes
    assert found(client, {"code:above": f"{SYSTEM}|dm1"}, **headers) == {"a-c-dm1", "a-c-diabetes"}
    assert found(client, {"code:not-in": VS_ALL}, **headers) == {"a-c-other-dm1", "a-c-none"}
    # the same searches unrestricted see both patients
    assert len(found(client, {"code:in": VS_DIABETES}, **mint.headers(ADMIN))) == 6


def test_smart_definitions_must_be_readable(smart: tuple[TestClient, TokenMint]) -> None:
    """:in reads a ValueSet (and the code systems it draws on), :below a CodeSystem: a
    token that may not read them gets the 403 it would get from $expand or $subsumes,
    not an answer derived from them."""
    client, mint = smart
    conditions_only = mint.headers("patient/Condition.rs", patient="pa")
    for query in ({"code:in": VS_DIABETES}, {"code:below": f"{SYSTEM}|diabetes"}):
        r = client.get("/fhir/Condition", params=query, headers=conditions_only)
        assert r.status_code == 403, r.text
        assert outcome(r)["code"] == "forbidden"
    # the value set is read only within the token's ValueSet scope: active ones here,
    # so a draft value set is as unknown as a missing one
    active_only = mint.headers(
        "patient/Condition.rs patient/ValueSet.rs?status=active patient/CodeSystem.rs",
        patient="pa",
    )
    assert found(client, {"code:in": VS_DIABETES}, **active_only) == {
        "a-c-diabetes",
        "a-c-dm1",
        "a-c-dm2",
    }
    r = client.get("/fhir/Condition", params={"code:in": VS + "draft"}, headers=active_only)
    assert r.status_code == 400 and outcome(r)["code"] == "not-found"
    # the code systems a value set draws on are read within the CodeSystem scope too
    no_systems = mint.headers("patient/Condition.rs patient/ValueSet.rs", patient="pa")
    r = client.get("/fhir/Condition", params={"code:in": VS_DIABETES}, headers=no_systems)
    assert r.status_code == 403, r.text


def test_smart_scope_with_a_terminology_modifier_grants_nothing(
    smart: tuple[TestClient, TokenMint],
) -> None:
    """A granular scope is compiled outside every policy (authz/policy.py): one that
    needs the terminology would read definitions the token may not, so it grants
    nothing, like a chained one."""
    client, mint = smart
    headers = mint.headers(f"patient/Condition.rs?code:in={VS_DIABETES}", patient="pa")
    r = client.get("/fhir/Condition", headers=headers)
    assert r.status_code == 403, r.text
