"""The compiled FHIRPath chains of views (fhir_server/views/fastpath.py) against
fhirpathpy's interpreter: every expression of the official SQL on FHIR suite, and the
usual column shapes, over the suite's resources and resources made to hit each special
case (primitive extensions, nulls in lists, choice types, contained resources). Both must
give the same values with the same types, and the foci they give must lead nested
expressions to the same results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path as FilePath
from typing import Any

import pytest
from fhirpathpy.engine.nodes import ResourceNode

from fhir_server.views.engine import compile_view
from fhir_server.views.fhirpath import Path, to_value

SUITE = FilePath(__file__).parent / "sql_on_fhir"

# Column shapes of real views (benchmarks/views.py, docs/views.md, the clinics' reports).
EXPRESSIONS = [
    "id",
    "getResourceKey()",
    "subject.getReferenceKey(Patient)",
    "subject.getReferenceKey()",
    "subject.getReferenceKey(Group)",
    "status",
    "category.coding.code.first()",
    "code.coding.code.first()",
    "code.coding.system",
    "code.coding.exists()",
    "code.text.exists()",
    "effective.ofType(dateTime)",
    "effective.ofType(Period).start",
    "value.ofType(Quantity).value",
    "value.ofType(Quantity).unit",
    "value.ofType(Quantity)",
    "value.ofType(string)",
    "value.ofType(CodeableConcept).coding.code",
    "value",
    "component",
    "component.value.ofType(Quantity).value",
    "component.code.coding.code.first()",
    "name",
    "name.given",
    "name.given.first()",
    "name.family",
    "name.use",
    "birthDate",
    "deceased.ofType(boolean)",
    "deceased",
    "multipleBirth.ofType(integer)",
    "telecom.value",
    "extension",
    "extension.url",
    "extension.value.ofType(Coding).code",
    "contained",
    "contained.id",
    "contained.name.family",
    "address.line",
    "address.period.start",
    "identifier.value.first()",
    "managingOrganization.reference",
    "link.other.getReferenceKey(Patient)",
    "active",
    "active.exists()",
    "meta.lastUpdated",
    "quantity.value",
    "medication.ofType(CodeableConcept).coding.code.first()",
    "valueQuantity.value",
    "item.item.linkId",
]

SPECIAL_CASES: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "ext",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://x/time", "valueTime": "10:00:00"}]},
        "name": [{"given": ["Ana", None, "Luz"], "_given": [None, {"id": "g2"}, None]}],
        "active": True,
        "deceasedBoolean": False,
        "multipleBirthInteger": 2,
        "extension": [{"url": "http://x/race", "valueCoding": {"code": "2106-3"}}],
    },
    {
        "resourceType": "Patient",
        "id": "contained",
        "contained": [{"resourceType": "Patient", "id": "c1", "name": [{"family": "Inner"}]}],
        "name": [{"family": "Outer", "_family": {"extension": [{"url": "u"}]}}],
        "link": [{"other": {"reference": "Patient/c1"}, "type": "seealso"}],
        "managingOrganization": {"reference": "Organization/o1"},
    },
    {
        "resourceType": "Observation",
        "id": "choices",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2020-01-01", "end": "2020-01-02"},
        "_valueString": {"extension": [{"url": "http://x/reason"}]},
        "component": [
            {
                "code": {"coding": [{"code": "8480-6"}]},
                "valueQuantity": {"value": Decimal("120.5"), "unit": "mm[Hg]"},
            },
            {"code": {"coding": [{"code": "8462-4"}]}, "valueString": "n/a"},
            {"code": {"coding": [{"code": "x"}]}},
        ],
    },
    {
        "resourceType": "Observation",
        "id": "age",
        "status": "final",
        "code": {"coding": [{"code": "x"}]},
        "valueQuantity": {"value": 3, "unit": "a", "system": "http://unitsofmeasure.org"},
        "effectiveDateTime": "2021-03-04T05:06:07+00:00",
        "subject": {"reference": "https://other.example/fhir/Patient/p1"},
    },
    {
        "resourceType": "MedicationDispense",
        "id": "d1",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"code": "313782"}]},
        "quantity": {"value": 2.5, "unit": "tab"},
        "subject": {"reference": "Patient/p1/_history/3"},
    },
    {
        "resourceType": "Questionnaire",
        "id": "q1",
        "status": "active",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}],
    },
]


def _suite() -> tuple[list[dict[str, Any]], list[str]]:
    resources: list[dict[str, Any]] = []
    expressions: list[str] = []
    for path in sorted(SUITE.glob("*.json")):
        suite = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        resources.extend(suite["resources"])
        for test in suite["tests"]:
            expressions.extend(_paths(test["view"]))
    return resources, expressions


def _paths(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key in ("path", "forEach", "forEachOrNull"):
            if isinstance(node.get(key), str):
                yield node[key]
        for value in node.values():
            yield from _paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _paths(value)


def _typed(items: list[Any]) -> list[tuple[Any, Any]]:
    """Each result's value and, for nodes, its type path (what ofType and the nested
    navigation go by)."""
    return [
        (repr(to_value(item)), item.path if isinstance(item, ResourceNode) else type(item))
        for item in items
    ]


def _values(path: Path, focus: Any) -> Any:
    try:
        return repr(path.values(focus, {"resource": focus, "rowIndex": 0}))
    except Exception as exc:
        return ("error", type(exc).__name__)


def _outcome(path: Path, focus: Any) -> Any:
    try:
        return _typed(path(focus, {"resource": focus, "rowIndex": 0}))
    except Exception as exc:
        return ("error", type(exc).__name__)


RESOURCES, SUITE_EXPRESSIONS = _suite()
ALL_RESOURCES = RESOURCES + SPECIAL_CASES


def _parses(expression: str) -> bool:
    try:
        Path(expression, fast=False)
    except ValueError:
        return False  # the suite's syntax-error cases: views, tested in test_views_spec
    return True


ALL_EXPRESSIONS = sorted(e for e in set(EXPRESSIONS + SUITE_EXPRESSIONS) if _parses(e))


@pytest.mark.parametrize("expression", ALL_EXPRESSIONS)
def test_fast_chain_equals_interpreter(expression: str) -> None:
    fast, slow = Path(expression), Path(expression, fast=False)
    for resource in ALL_RESOURCES:
        assert _outcome(fast, resource) == _outcome(slow, resource), resource.get("id")
        assert _values(fast, resource) == _values(slow, resource), resource.get("id")
        # Nested navigation from each focus the expression gives (a forEach's rows).
        try:
            found = slow(resource, {"resource": resource, "rowIndex": 0})
        except ValueError:
            continue  # an expression needing a view's constant: compared above as errors
        foci = [f for f in found if isinstance(f, ResourceNode)]
        for nested in ("code.coding.code", "value.ofType(Quantity).value", "family", "id"):
            for focus in foci:
                assert _outcome(Path(nested), focus) == _outcome(Path(nested, fast=False), focus), (
                    resource.get("id"),
                    expression,
                    nested,
                )


def test_the_usual_columns_are_compiled() -> None:
    """Not a silent fallback: the column shapes of the benchmark view compile, and on
    clean data they are answered without the interpreter."""
    for expression in (
        "getResourceKey()",
        "subject.getReferenceKey(Patient)",
        "category.coding.code.first()",
        "effective.ofType(dateTime)",
        "value.ofType(Quantity).value",
        "code.coding.exists()",
    ):
        path = Path(expression)
        assert path._fast is not None, expression
        resource = SPECIAL_CASES[3]
        assert _typed(path._fast(resource)) == _outcome(Path(expression, fast=False), resource)
    # What is not a simple chain is left to the interpreter.
    for expression in ("name.where(use = 'official').family", "Patient.name", "%resource.id"):
        assert Path(expression)._fast is None, expression


def test_special_data_falls_back() -> None:
    """A primitive's extension (``_given``) or a null in a list: the interpreter answers."""
    from fhir_server.views.fastpath import Fallback

    with pytest.raises(Fallback):
        Path("name.given")._fast(SPECIAL_CASES[0])  # type: ignore[misc]
    assert [to_value(v) for v in Path("name.given")(SPECIAL_CASES[0], {})] == ["Ana", "Luz"]


def test_a_view_gives_the_same_rows_either_way() -> None:
    view = {
        "resourceType": "ViewDefinition",
        "status": "active",
        "resource": "Observation",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "effective", "path": "effective.ofType(dateTime)"},
                    {"name": "value", "path": "value.ofType(Quantity).value"},
                ]
            },
            {
                "forEachOrNull": "component",
                "column": [
                    {"name": "ccode", "path": "code.coding.code.first()"},
                    {"name": "cvalue", "path": "value.ofType(Quantity).value"},
                    {"name": "cstring", "path": "value.ofType(string)"},
                ],
            },
        ],
    }
    rows = list(compile_view(view).run(ALL_RESOURCES))
    assert {
        "id": "choices",
        "patient": "p1",
        "effective": None,
        "value": None,
        "ccode": "8480-6",
        "cvalue": Decimal("120.5"),
        "cstring": None,
    } in rows
    assert {
        "id": "age",
        "patient": None,
        "effective": "2021-03-04T05:06:07+00:00",
        "value": 3,
        "ccode": None,
        "cvalue": None,
        "cstring": None,
    } in rows
    assert sum(1 for r in rows if r["id"] == "choices") == 3
