"""ValueSet/$expand and ValueSet/$validate-code over HTTP (valueset-operations.html),
on a small hierarchical CodeSystem with Spanish designations posted by the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from terminology_helpers import (
    ALL_CODES,
    CODE_SYSTEM,
    SYSTEM,
    VS_ALL,
    codes,
    create,
    get,
    outcome,
    post,
    value_set,
    values,
)

from fhir_server.app import create_app
from fhir_server.config import Settings

VS = "http://example.org/fhir/ValueSet/"


@pytest.fixture
def loaded(client: TestClient) -> dict[str, Any]:
    create(client, CODE_SYSTEM)
    return create(client, value_set(VS_ALL, {"system": SYSTEM}))


def expand_inline(client: TestClient, vs: dict[str, Any], *more: dict[str, Any]) -> Any:
    r = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": vs}, *more)
    assert r.status_code == 200, r.text
    return r.json()


def with_filter(prop: str, op: str, value: str) -> dict[str, Any]:
    return value_set(
        VS + "f", {"system": SYSTEM, "filter": [{"property": prop, "op": op, "value": value}]}
    )


# --- input: url, valueSetVersion, id, inline ---------------------------------------------


def test_expand_by_url_id_and_version(client: TestClient, loaded: dict[str, Any]) -> None:
    by_url = get(client, "ValueSet/$expand", url=VS_ALL).json()
    assert codes(by_url) == ALL_CODES  # definition order
    assert by_url["expansion"]["total"] == 8
    by_id = get(client, f"ValueSet/{loaded['id']}/$expand").json()
    assert codes(by_id) == ALL_CODES
    v2 = {**value_set(VS_ALL, {"system": SYSTEM, "concept": [{"code": "hta"}]}), "version": "2"}
    create(client, v2)
    assert codes(get(client, "ValueSet/$expand", url=VS_ALL, valueSetVersion="2").json()) == ["hta"]
    assert codes(get(client, "ValueSet/$expand", url=f"{VS_ALL}|2").json()) == ["hta"]
    missing = get(client, "ValueSet/$expand", url=VS + "none")
    assert missing.status_code == 404 and outcome(missing)["expression"] == ["url"]
    nothing = get(client, "ValueSet/$expand")
    assert nothing.status_code == 400 and outcome(nothing)["expression"] == ["url"]


def test_expand_inline_value_set_with_concept_list(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    vs = value_set(
        VS + "list",
        {"system": SYSTEM, "concept": [{"code": "hta"}, {"code": "dm1", "display": "DM tipo 1"}]},
    )
    out = expand_inline(client, vs)
    assert [(c["code"], c["display"]) for c in out["expansion"]["contains"]] == [
        ("hta", "Hypertension"),
        ("dm1", "DM tipo 1"),  # the value set's own display wins
    ]


# --- expansion parameters ---------------------------------------------------------------


def test_filter_text_matches_word_starts_accent_insensitive(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    assert codes(get(client, "ValueSet/$expand", url=VS_ALL, filter="type diab").json()) == [
        "dm1",
        "dm2",
    ]
    # "hipertension" finds the Spanish designation "Hipertensión arterial"
    assert codes(get(client, "ValueSet/$expand", url=VS_ALL, filter="hipertension").json()) == [
        "hta"
    ]


def test_paging_with_count_and_offset(client: TestClient, loaded: dict[str, Any]) -> None:
    pages = []
    for offset in (0, 3, 6):
        out = get(client, "ValueSet/$expand", url=VS_ALL, count=3, offset=offset).json()
        assert out["expansion"]["total"] == 8 and out["expansion"]["offset"] == offset
        pages += codes(out)
    assert pages == ALL_CODES
    empty = get(client, "ValueSet/$expand", url=VS_ALL, count=3, offset=9).json()
    assert codes(empty) == []
    # paging an expansion evaluated in memory (two includes) works the same way
    two = value_set(
        VS + "two",
        {"system": SYSTEM, "concept": [{"code": "hta"}]},
        {"system": SYSTEM, "concept": [{"code": "tos"}, {"code": "dm1"}]},
    )
    out = expand_inline(
        client, two, {"name": "count", "valueInteger": 2}, {"name": "offset", "valueInteger": 1}
    )
    assert codes(out) == ["tos", "dm1"] and out["expansion"]["total"] == 3
    bad = get(client, "ValueSet/$expand", url=VS_ALL, count=-1)
    assert bad.status_code == 400 and outcome(bad)["expression"] == ["count"]


def test_active_only_drops_inactive(client: TestClient, loaded: dict[str, Any]) -> None:
    full = get(client, "ValueSet/$expand", url=VS_ALL).json()
    tos = next(c for c in full["expansion"]["contains"] if c["code"] == "tos")
    assert tos["inactive"] is True
    hallazgo = next(c for c in full["expansion"]["contains"] if c["code"] == "hallazgo")
    assert hallazgo["abstract"] is True  # notSelectable
    active = get(client, "ValueSet/$expand", url=VS_ALL, activeOnly="true").json()
    assert "tos" not in codes(active) and len(codes(active)) == 7


def test_designations_and_spanish_display(client: TestClient, loaded: dict[str, Any]) -> None:
    out = get(
        client, "ValueSet/$expand", url=VS_ALL, includeDesignations="true", displayLanguage="es"
    ).json()
    hta = next(c for c in out["expansion"]["contains"] if c["code"] == "hta")
    assert hta["display"] == "Hipertensión arterial"
    assert hta["designation"] == [{"language": "es", "value": "Hipertensión arterial"}]
    plain = get(client, "ValueSet/$expand", url=VS_ALL).json()
    assert "designation" not in plain["expansion"]["contains"][0]


def test_exclude_not_for_ui_include_definition_and_designation(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    """excludeNotForUI: a value set 'not generated for UI use might be flat, and only
    contain the selectable codes'; includeDefinition keeps the compose; designation
    ('a use or a language') picks the designations shown."""
    selectable = get(client, "ValueSet/$expand", url=VS_ALL, excludeNotForUI="true").json()
    assert "hallazgo" not in codes(selectable) and len(codes(selectable)) == 7  # notSelectable
    paged = get(client, "ValueSet/$expand", url=VS_ALL, excludeNotForUI="true", count=10)
    assert "hallazgo" not in codes(paged.json()) and paged.json()["expansion"]["total"] == 7
    plain = get(client, "ValueSet/$expand", url=VS_ALL).json()
    assert "compose" not in plain
    defined = get(client, "ValueSet/$expand", url=VS_ALL, includeDefinition="true").json()
    assert defined["compose"] == {"include": [{"system": SYSTEM}]}
    spanish = get(client, "ValueSet/$expand", url=VS_ALL, designation="urn:ietf:bcp:47|es").json()
    hta = next(c for c in spanish["expansion"]["contains"] if c["code"] == "hta")
    assert hta["designation"] == [{"language": "es", "value": "Hipertensión arterial"}]
    english = get(client, "ValueSet/$expand", url=VS_ALL, designation="en").json()
    assert all("designation" not in c for c in english["expansion"]["contains"])
    assert {"name": "designation", "valueString": "en"} in english["expansion"]["parameter"]


def test_expansion_is_flat_by_default_and_with_exclude_nested(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    for params in ({}, {"excludeNested": "true"}):
        out = get(client, "ValueSet/$expand", url=VS_ALL, **params).json()
        assert codes(out) == ALL_CODES
        assert all("contains" not in c for c in out["expansion"]["contains"])
        assert {"name": "excludeNested", "valueBoolean": True} in out["expansion"]["parameter"]


def tree(contains: list[dict[str, Any]]) -> list[Any]:
    """expansion.contains as [code, [children...]] pairs, order kept."""
    return [[c["code"], tree(c.get("contains", []))] for c in contains]


def test_exclude_nested_false_nests_the_hierarchy(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    """excludeNested: 'Controls whether or not the value set expansion nests codes or
    not (i.e. ValueSet.expansion.contains.contains)'. With false, each concept sits under
    its nearest ancestor in the expansion; the total still counts every concept."""
    out = get(client, f"ValueSet/{loaded['id']}/$expand", excludeNested="false").json()
    assert out["expansion"]["total"] == 8
    assert {"name": "excludeNested", "valueBoolean": False} in out["expansion"]["parameter"]
    assert tree(out["expansion"]["contains"]) == [
        ["trastorno", [["diabetes", [["dm1", []], ["dm2", []]]], ["hta", []]]],
        ["hallazgo", [["fiebre", []], ["tos", []]]],
    ]
    tos = out["expansion"]["contains"][1]["contains"][1]
    assert tos["inactive"] is True and tos["display"] == "Cough"
    # a concept whose parent is not in the expansion goes under the nearest ancestor that is
    listed = value_set(
        VS + "skip",
        {"system": SYSTEM, "concept": [{"code": "trastorno"}, {"code": "dm1"}, {"code": "tos"}]},
    )
    skipped = expand_inline(client, listed, {"name": "excludeNested", "valueBoolean": False})
    assert tree(skipped["expansion"]["contains"]) == [["trastorno", [["dm1", []]]], ["tos", []]]
    # with a text filter only the matches are nested, among themselves
    found = get(client, "ValueSet/$expand", url=VS_ALL, filter="diabetes", excludeNested="false")
    assert tree(found.json()["expansion"]["contains"]) == [["diabetes", [["dm1", []], ["dm2", []]]]]
    # a page is nested within itself: the first three concepts in definition order
    page = get(client, "ValueSet/$expand", url=VS_ALL, count=3, excludeNested="false").json()
    assert page["expansion"]["total"] == 8
    assert tree(page["expansion"]["contains"]) == [["trastorno", [["diabetes", [["dm1", []]]]]]]


def test_exclude_nested_false_in_a_polyhierarchy(client: TestClient) -> None:
    """A concept with two parents in the expansion appears once, under the deeper one
    (here c is-a a directly and is-a b, itself an a)."""
    poly = {
        "resourceType": "CodeSystem",
        "url": VS + "poly-cs",
        "status": "active",
        "content": "complete",
        "hierarchyMeaning": "is-a",
        "concept": [
            {"code": "a"},
            {"code": "b", "property": [{"code": "parent", "valueCode": "a"}]},
            {
                "code": "c",
                "property": [
                    {"code": "parent", "valueCode": "a"},
                    {"code": "parent", "valueCode": "b"},
                ],
            },
            {"code": "d"},
        ],
    }
    create(client, poly)
    vs = value_set(VS + "poly", {"system": poly["url"]})
    out = expand_inline(client, vs, {"name": "excludeNested", "valueBoolean": False})
    assert tree(out["expansion"]["contains"]) == [["a", [["b", [["c", []]]]]], ["d", []]]


def test_exclude_nested_false_keeps_a_stored_expansions_hierarchy(client: TestClient) -> None:
    """A value set defined only by its expansion (no compose) nests as it is stored."""
    vs = {
        "resourceType": "ValueSet",
        "url": VS + "stored",
        "status": "active",
        "expansion": {
            "timestamp": "2026-01-01T00:00:00Z",
            "contains": [
                {
                    "system": SYSTEM,
                    "code": "grupo",
                    "abstract": True,
                    "contains": [{"system": SYSTEM, "code": "x"}, {"system": SYSTEM, "code": "y"}],
                }
            ],
        },
    }
    nested = expand_inline(client, vs, {"name": "excludeNested", "valueBoolean": False})
    assert tree(nested["expansion"]["contains"]) == [["grupo", [["x", []], ["y", []]]]]
    assert nested["expansion"]["contains"][0]["abstract"] is True
    flat = expand_inline(client, vs)
    assert codes(flat) == ["grupo", "x", "y"]


# --- compose: filters, excludes, nested value sets ---------------------------------------


@pytest.mark.parametrize(
    ("prop", "op", "value", "expected"),
    [
        ("concept", "=", "hta", ["hta"]),
        ("concept", "is-a", "diabetes", ["diabetes", "dm1", "dm2"]),
        ("concept", "descendent-of", "trastorno", ["diabetes", "dm1", "dm2", "hta"]),
        ("concept", "is-not-a", "trastorno", ["hallazgo", "fiebre", "tos"]),
        ("concept", "regex", "dm[0-9]", ["dm1", "dm2"]),
        ("concept", "in", "hta,fiebre", ["hta", "fiebre"]),
        (
            "concept",
            "not-in",
            "hta,fiebre,tos",
            ["trastorno", "diabetes", "dm1", "dm2", "hallazgo"],
        ),
        ("concept", "generalizes", "dm2", ["trastorno", "diabetes", "dm2"]),
        ("grupo", "=", "cardio", ["hta"]),
        ("grupo", "exists", "true", ["diabetes", "dm1", "dm2", "hta"]),
        ("grupo", "exists", "false", ["trastorno", "hallazgo", "fiebre", "tos"]),
        ("grupo", "in", "cardio,metabolico", ["diabetes", "dm1", "dm2", "hta"]),
        ("display", "regex", ".*mellitus", ["diabetes", "dm1", "dm2"]),
        ("status", "=", "retired", ["tos"]),
    ],
)
def test_filter_operators(
    client: TestClient, loaded: dict[str, Any], prop: str, op: str, value: str, expected: list[str]
) -> None:
    """valueset-filter-operator: =, is-a (the code and its descendants), descendent-of
    (descendants only), is-not-a, regex ('the entire value' must match), in, not-in,
    generalizes (the code and its ancestors), exists."""
    assert codes(expand_inline(client, with_filter(prop, op, value))) == expected


def test_filter_errors_point_at_the_filter(client: TestClient, loaded: dict[str, Any]) -> None:
    r = post(
        client,
        "ValueSet/$expand",
        {"name": "valueSet", "resource": with_filter("concept", "regex", "(")},
    )
    assert r.status_code == 400
    assert outcome(r)["expression"] == ["ValueSet.compose.include[0].filter[0].value"]
    r = post(
        client,
        "ValueSet/$expand",
        {"name": "valueSet", "resource": with_filter("concept", "exists", "x")},
    )
    assert r.status_code == 422
    assert outcome(r)["expression"] == ["ValueSet.compose.include[0].filter[0].op"]


def test_exclude_and_nested_value_sets(client: TestClient, loaded: dict[str, Any]) -> None:
    create(
        client,
        value_set(
            VS + "trastornos",
            {
                "system": SYSTEM,
                "filter": [{"property": "concept", "op": "is-a", "value": "trastorno"}],
            },
        ),
    )
    nested = value_set(
        VS + "nested",
        {"valueSet": [VS + "trastornos"]},
        exclude=[{"system": SYSTEM, "concept": [{"code": "diabetes"}]}],
    )
    assert codes(expand_inline(client, nested)) == ["trastorno", "dm1", "dm2", "hta"]
    # a system part and a valueSet in one include: their intersection (valueset.html#compose)
    both = value_set(
        VS + "both",
        {
            "system": SYSTEM,
            "concept": [{"code": "hta"}, {"code": "fiebre"}],
            "valueSet": [VS + "trastornos"],
        },
    )
    assert codes(expand_inline(client, both)) == ["hta"]
    cyclic = value_set(VS + "trastornos", {"valueSet": [VS + "loop"]})
    create(client, {**value_set(VS + "loop", {"valueSet": [VS + "loop"]})})
    r = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": cyclic})
    assert r.status_code == 422 and outcome(r)["code"] == "processing"
    unknown = value_set(VS + "u", {"valueSet": [VS + "absent"]})
    r = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": unknown})
    assert r.status_code == 422 and outcome(r)["expression"] == [
        "ValueSet.compose.include[0].valueSet[0]"
    ]


def test_unknown_system_with_concept_list_expands_the_list(client: TestClient) -> None:
    vs = value_set(
        VS + "loinc",
        {"system": "http://loinc.org", "concept": [{"code": "2339-0", "display": "Glucose"}]},
    )
    assert codes(expand_inline(client, vs)) == ["2339-0"]
    whole = value_set(VS + "loinc-all", {"system": "http://loinc.org"})
    r = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": whole})
    assert r.status_code == 422 and outcome(r)["expression"] == [
        "ValueSet.compose.include[0].system"
    ]


@pytest.fixture
def small_limit_client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"terminology_max_expansion": 5})
    with TestClient(create_app(limited)) as c:
        yield c


def test_too_large_expansion_is_too_costly(small_limit_client: TestClient) -> None:
    client = small_limit_client
    create(client, CODE_SYSTEM)
    create(client, value_set(VS_ALL, {"system": SYSTEM}))
    r = get(client, "ValueSet/$expand", url=VS_ALL)
    assert r.status_code == 422
    assert outcome(r)["code"] == "too-costly"
    assert outcome(r)["expression"] == ["ValueSet.compose.include[0]"]
    # with a count, a one-include value set pages straight from the concept store
    page = get(client, "ValueSet/$expand", url=VS_ALL, count=3, offset=3).json()
    assert page["expansion"]["total"] == 8 and codes(page) == ALL_CODES[3:6]
    # narrowed by a filter it fits
    assert codes(get(client, "ValueSet/$expand", url=VS_ALL, filter="diabetes").json()) == [
        "diabetes",
        "dm1",
        "dm2",
    ]


# --- $validate-code -----------------------------------------------------------------------


def test_validate_code_by_code_system_and_display(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    ok = values(
        get(client, "ValueSet/$validate-code", url=VS_ALL, system=SYSTEM, code="dm1").json()
    )
    assert ok["result"] is True and ok["display"] == "Type 1 diabetes mellitus"
    wrong = values(
        get(
            client,
            "ValueSet/$validate-code",
            url=VS_ALL,
            system=SYSTEM,
            code="dm1",
            display="Sugar",
        ).json()
    )
    assert wrong["result"] is True  # a wrong display is a warning, with the right one
    assert wrong["message"].startswith("Warning") and wrong["display"] == "Type 1 diabetes mellitus"
    absent = values(
        get(client, "ValueSet/$validate-code", url=VS_ALL, system=SYSTEM, code="zz").json()
    )
    assert absent["result"] is False and "not a code of" in absent["message"]


def test_validate_code_outside_the_value_set(client: TestClient, loaded: dict[str, Any]) -> None:
    vs = value_set(
        VS + "dm",
        {"system": SYSTEM, "filter": [{"property": "concept", "op": "is-a", "value": "diabetes"}]},
    )
    created = create(client, vs)
    inside = get(client, f"ValueSet/{created['id']}/$validate-code", system=SYSTEM, code="dm2")
    assert values(inside.json())["result"] is True
    outside = values(
        get(client, f"ValueSet/{created['id']}/$validate-code", system=SYSTEM, code="hta").json()
    )
    assert outside["result"] is False and "is not in" in outside["message"]


def test_validate_code_reports_inactive(client: TestClient, loaded: dict[str, Any]) -> None:
    out = values(
        get(client, "ValueSet/$validate-code", url=VS_ALL, system=SYSTEM, code="tos").json()
    )
    assert out["result"] is True and out["inactive"] is True and "inactive" in out["message"]


def test_validate_coding_and_codeable_concept(client: TestClient, loaded: dict[str, Any]) -> None:
    coding = post(
        client,
        "ValueSet/$validate-code",
        {"name": "url", "valueUri": VS_ALL},
        {
            "name": "coding",
            "valueCoding": {"system": SYSTEM, "code": "fiebre", "display": "Fiebre"},
        },
    )
    assert values(coding.json())["result"] is True and "message" not in values(coding.json())
    cc = {
        "coding": [{"system": "http://loinc.org", "code": "1"}, {"system": SYSTEM, "code": "hta"}]
    }
    r = post(
        client,
        "ValueSet/$validate-code",
        {"name": "url", "valueUri": VS_ALL},
        {"name": "codeableConcept", "valueCodeableConcept": cc},
    )
    assert values(r.json())["result"] is True
    bad = post(
        client,
        "ValueSet/$validate-code",
        {"name": "url", "valueUri": VS_ALL},
        {"name": "codeableConcept", "valueCodeableConcept": {"text": "x"}},
    )
    assert bad.status_code == 400
    assert outcome(bad)["expression"] == ["Parameters.parameter[1].valueCodeableConcept.coding"]


def test_validate_code_in_a_listed_value_set_of_an_unknown_system(client: TestClient) -> None:
    vs = value_set(
        VS + "loinc",
        {"system": "http://loinc.org", "concept": [{"code": "2339-0", "display": "Glucose"}]},
    )
    r = post(
        client,
        "ValueSet/$validate-code",
        {"name": "valueSet", "resource": vs},
        {
            "name": "coding",
            "valueCoding": {"system": "http://loinc.org", "code": "2339-0", "display": "Glucosa?"},
        },
    )
    out = values(r.json())
    assert out["result"] is True and out["display"] == "Glucose" and "Warning" in out["message"]


def test_regex_mongodb_refuses_is_a_400_not_a_500(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    """Python's re accepts \\N{...} escapes; MongoDB's PCRE does not."""
    vs = with_filter("concept", "regex", "\\N{DIGIT ONE}")
    r = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": vs})
    assert r.status_code == 400 and outcome(r)["code"] == "invalid"


def test_a_changed_or_deleted_definition_is_seen_by_the_next_request(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    """The server runs an operation on what a canonical named last time while it looks
    the canonical up again (terminology/resolve.py); an update or delete in between is
    still seen by the very next request, and an error of the outdated definition is
    not reported."""
    broken = value_set(
        VS + "changing",
        {"system": SYSTEM, "filter": [{"property": "concept", "op": "regex", "value": "("}]},
    )
    created = create(client, broken)
    for path, params in (
        ("ValueSet/$expand", {"url": VS + "changing"}),
        (f"ValueSet/{created['id']}/$expand", {}),
    ):
        assert get(client, path, **params).status_code == 400  # remembered, with its error
    fixed = {**broken, "id": created["id"], "compose": {"include": [{"system": SYSTEM}]}}
    fixed["compose"]["include"][0]["concept"] = [{"code": "hta"}]
    assert client.put(f"/fhir/ValueSet/{created['id']}", json=fixed).status_code == 200
    assert codes(get(client, "ValueSet/$expand", url=VS + "changing").json()) == ["hta"]
    assert codes(get(client, f"ValueSet/{created['id']}/$expand").json()) == ["hta"]
    check = {"url": VS + "changing", "system": SYSTEM}
    assert values(get(client, "ValueSet/$validate-code", code="hta", **check).json())["result"]
    fixed["compose"]["include"][0]["concept"] = [{"code": "dm1"}]
    assert client.put(f"/fhir/ValueSet/{created['id']}", json=fixed).status_code == 200
    out = values(get(client, "ValueSet/$validate-code", code="hta", **check).json())
    assert out["result"] is False
    assert client.delete(f"/fhir/ValueSet/{created['id']}").status_code in (200, 204)
    gone = get(client, "ValueSet/$validate-code", code="dm1", **check)
    assert gone.status_code == 404 and outcome(gone)["expression"] == ["url"]
    assert get(client, f"ValueSet/{created['id']}/$expand").status_code in (404, 410)


def test_a_deleted_code_system_is_seen_by_the_next_request(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    cs_id = get(client, "CodeSystem", url=SYSTEM).json()["entry"][0]["resource"]["id"]
    for _ in range(2):  # the second one runs on the remembered code system
        assert get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1").status_code == 200
        assert get(client, f"CodeSystem/{cs_id}/$lookup", code="dm1").status_code == 200
        assert values(
            get(client, "ValueSet/$validate-code", url=VS_ALL, system=SYSTEM, code="dm1").json()
        )["result"]
    assert client.delete(f"/fhir/CodeSystem/{cs_id}").status_code in (200, 204)
    gone = get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1")
    assert gone.status_code == 404 and outcome(gone)["expression"] == ["system"]
    assert get(client, f"CodeSystem/{cs_id}/$lookup", code="dm1").status_code in (404, 410)
    vs = get(client, "ValueSet/$validate-code", url=VS_ALL, system=SYSTEM, code="dm1")
    assert vs.status_code == 422 and outcome(vs)["expression"] == [
        "ValueSet.compose.include[0].system"
    ]
