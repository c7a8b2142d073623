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


def test_exclude_nested_is_accepted_and_expansion_is_flat(
    client: TestClient, loaded: dict[str, Any]
) -> None:
    out = get(client, "ValueSet/$expand", url=VS_ALL, excludeNested="true").json()
    assert all("contains" not in c for c in out["expansion"]["contains"])
    assert {"name": "excludeNested", "valueBoolean": True} in out["expansion"]["parameter"]


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
