"""A QuestionnaireResponse is checked against its ``questionnaire`` on create, update,
patch, in transactions and batches and by $validate (issue #14), over HTTP.

questionnaireresponse.html (R4): "The QuestionnaireResponse ... contains enough
information about the questions asked and their organization that it can be interpreted
somewhat independently from the Questionnaire it is based on" -- but it answers that
Questionnaire, and the reference validator checks it against it:

- QuestionnaireResponse.item.linkId: "Pointer to specific item from Questionnaire";
  items are "ordered and grouped into coherent subsets, corresponding to the structure
  of the grouping of the questionnaire being responded to";
- qrs-1: "Nested item can't be beneath both item and answer"; answer.item: "Nested
  groups and questions" (the children of a question), item.item: the children of a group;
- Questionnaire.item.required: "An indication, if true, that the item must be present
  in a 'completed' QuestionnaireResponse. If false, the item may be skipped when
  answering the questionnaire.";
- Questionnaire.item.repeats: "An indication, if true, that the item may occur
  multiple times in the response, collecting multiple answers for questions or
  multiple sets of answers for groups.";
- Questionnaire.item.enableWhen: "A constraint indicating that this item should only be
  enabled (displayed/allow answers to be captured) when the specified condition is true.";
- Questionnaire.item.maxLength: "The maximum number of characters that are permitted in
  the answer to be considered a 'valid' QuestionnaireResponse.";
- Questionnaire.item.answerOption / answerValueSet: "One of the permitted answers for a
  'choice' or 'open-choice' question" / "A reference to a value set containing a list
  of codes representing permitted answers".

The base specification's failures are 400; these are a profile's rules (the
Questionnaire acts as one), so a write breaking them is 422 (http.html: "422
Unprocessable Entity - the proposed resource violated applicable FHIR profiles or
server business rules"). A Questionnaire the server does not hold is a warning, as the
reference validator reports it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    binary_patch,
    bundle_response,
    entry,
    expressions,
    patch_request,
    post_bundle,
    shared_client,
    urn,
    validation_issues,
    without_best_practice,
)

QR = "QuestionnaireResponse"
Q_URL = "http://clinica.example.org/fhir/Questionnaire/intake"
SYSTEM = "http://clinica.example.org/fhir/CodeSystem/intake"
VS_URL = "http://clinica.example.org/fhir/ValueSet/severity"
SEVERITY = "http://clinica.example.org/fhir/CodeSystem/severity"


def coding(code: str, system: str = SYSTEM) -> dict[str, str]:
    return {"system": system, "code": code}


QUESTIONNAIRE: dict[str, Any] = {
    "resourceType": "Questionnaire",
    "url": Q_URL,
    "version": "2",
    "status": "active",
    "item": [
        {"linkId": "smoker", "type": "boolean", "required": True},
        {
            "linkId": "packs",
            "type": "integer",
            "enableWhen": [{"question": "smoker", "operator": "=", "answerBoolean": True}],
        },
        {"linkId": "weight", "type": "decimal"},
        {"linkId": "visit", "type": "date"},
        {"linkId": "seen", "type": "dateTime"},
        {"linkId": "wake", "type": "time"},
        {"linkId": "name", "type": "string", "maxLength": 10},
        {"linkId": "notes", "type": "text", "maxLength": 20},
        {"linkId": "site", "type": "url"},
        {
            "linkId": "blood",
            "type": "choice",
            "answerOption": [{"valueCoding": coding("A")}, {"valueCoding": coding("B")}],
        },
        {
            "linkId": "color",
            "type": "choice",
            "answerOption": [{"valueString": "red"}, {"valueString": "blue"}],
        },
        {"linkId": "pet", "type": "open-choice", "answerOption": [{"valueCoding": coding("dog")}]},
        {"linkId": "scan", "type": "attachment"},
        {"linkId": "gp", "type": "reference"},
        {"linkId": "height", "type": "quantity"},
        {"linkId": "allergies", "type": "string", "repeats": True},
        {"linkId": "info", "type": "display", "text": "Gracias"},
        {
            "linkId": "contact",
            "type": "group",
            "repeats": True,
            "item": [
                {"linkId": "phone", "type": "string", "required": True},
                {"linkId": "relation", "type": "string"},
            ],
        },
        {"linkId": "pain", "type": "boolean", "item": [{"linkId": "where", "type": "string"}]},
        {"linkId": "severity", "type": "choice", "answerValueSet": VS_URL},
        {
            "linkId": "unchecked",
            "type": "choice",
            "answerValueSet": "http://clinica.example.org/fhir/ValueSet/not-here",
        },
        {"linkId": "home", "type": "group", "item": [{"linkId": "city", "type": "string"}]},
    ],
}

CODE_SYSTEM = {
    "resourceType": "CodeSystem",
    "url": SEVERITY,
    "status": "active",
    "content": "complete",
    "concept": [{"code": "mild", "display": "Leve"}, {"code": "severe", "display": "Grave"}],
}
VALUE_SET = {
    "resourceType": "ValueSet",
    "url": VS_URL,
    "status": "active",
    "compose": {"include": [{"system": SEVERITY}]},
}


@pytest.fixture(scope="module")
def client(mongo_url: str) -> Iterator[TestClient]:
    """One server for the module: the Questionnaire and the value set, stored once."""
    with shared_client(mongo_url) as c:
        for resource in (QUESTIONNAIRE, CODE_SYSTEM, VALUE_SET):
            r = post(c, resource)
            assert r.status_code == 201, r.text
        yield c


def post(client: TestClient, resource: dict[str, Any]) -> Any:
    return client.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON},
    )


def validate(client: TestClient, resource: dict[str, Any]) -> list[dict[str, Any]]:
    return validation_issues(client, resource)


def item(link_id: str, *answers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"linkId": link_id, **extra}
    if answers:
        out["answer"] = list(answers)
    return out


def response(
    *items: dict[str, Any], status: str = "completed", questionnaire: str = Q_URL
) -> dict[str, Any]:
    """A response answering ``smoker`` (required) first, then ``items``."""
    out: dict[str, Any] = {
        "resourceType": QR,
        "questionnaire": questionnaire,
        "status": status,
        "item": [item("smoker", {"valueBoolean": False}), *items],
    }
    return out


def accepted(client: TestClient, resource: dict[str, Any]) -> None:
    r = post(client, resource)
    assert r.status_code == 201, r.text
    errors = [i for i in validate(client, resource) if i["severity"] in ("error", "fatal")]
    assert not errors, errors


def refused(client: TestClient, resource: dict[str, Any], code: str, expression: str) -> None:
    """A create answers 422 with the issue; $validate lists the same issue (200)."""
    issues = assert_outcome(post(client, resource), 422)
    assert (code, expression) in [(i["code"], e) for i in issues for e in i["expression"]], issues
    found = validate(client, resource)
    assert any(
        i["severity"] == "error" and i["code"] == code and expression in i["expression"]
        for i in found
    ), found


def warned(client: TestClient, resource: dict[str, Any], code: str, expression: str) -> None:
    """Accepted (201), and $validate warns."""
    r = post(client, resource)
    assert r.status_code == 201, r.text
    found = without_best_practice(validate(client, resource))
    assert [(i["severity"], i["code"], i["expression"]) for i in found] == [
        ("warning", code, [expression])
    ], found


# --- the whole form ------------------------------------------------------------------------


def full_response() -> dict[str, Any]:
    return {
        "resourceType": QR,
        "questionnaire": f"{Q_URL}|2",
        "status": "completed",
        "item": [
            item("smoker", {"valueBoolean": True}),
            item("packs", {"valueInteger": 2}),
            item("weight", {"valueDecimal": 71.5}),
            item("visit", {"valueDate": "2024-05-01"}),
            item("seen", {"valueDateTime": "2024-05-01T10:00:00-05:00"}),
            item("wake", {"valueTime": "06:30:00"}),
            item("name", {"valueString": "José"}),
            item("notes", {"valueString": "sin novedad"}),
            item("site", {"valueUri": "http://example.org"}),
            item("blood", {"valueCoding": coding("B")}),
            item("color", {"valueString": "blue"}),
            item("pet", {"valueString": "iguana"}),
            item("scan", {"valueAttachment": {"contentType": "image/png", "url": "http://x/1"}}),
            item("gp", {"valueReference": {"reference": "Practitioner/p1"}}),
            item("height", {"valueQuantity": {"value": 170, "unit": "cm"}}),
            item("allergies", {"valueString": "polen"}, {"valueString": "maní"}),
            item("info"),
            item("contact", item=[item("phone", {"valueString": "0991234567"})]),
            item("contact", item=[item("phone", {"valueString": "022345678"})]),
            item(
                "pain", {"valueBoolean": True, "item": [item("where", {"valueString": "espalda"})]}
            ),
            item("severity", {"valueCoding": coding("severe", SEVERITY)}),
            item("home", item=[item("city", {"valueString": "Quito"})]),
        ],
    }


def test_a_response_that_follows_its_questionnaire_is_accepted(client: TestClient) -> None:
    qr = full_response()
    r = post(client, qr)
    assert r.status_code == 201, r.text
    issues = without_best_practice(validate(client, qr))
    assert [i for i in issues if i["severity"] != "information"] == [], issues
    stored = r.json()
    r = client.put(
        f"/fhir/{QR}/{stored['id']}",
        content=json.dumps({**qr, "id": stored["id"]}),
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 200, r.text


# --- linkIds and nesting ------------------------------------------------------------------


def test_an_unknown_link_id_is_refused(client: TestClient) -> None:
    accepted(client, response(item("weight", {"valueDecimal": 70})))
    refused(client, response(item("shoe-size", {"valueInteger": 42})), "structure", f"{QR}.item[1]")


def test_a_link_id_at_another_level_is_refused(client: TestClient) -> None:
    """'where' is a child of the question 'pain': it belongs in pain.answer.item."""
    refused(client, response(item("where", {"valueString": "x"})), "structure", f"{QR}.item[1]")
    accepted(client, response(item("pain", {"valueBoolean": True, "item": [item("where")]})))


def test_children_of_a_question_belong_in_answer_item(client: TestClient) -> None:
    """qrs-1 and answer.item: a question's children are nested in its answer."""
    wrong = item("pain", {"valueBoolean": True})
    wrong["item"] = [item("where", {"valueString": "x"})]
    # qrs-1 is the base specification's (400); answer + item on one item. Without the
    # answer the item is only the Questionnaire's concern:
    no_answer = item("pain", item=[item("where", {"valueString": "x"})])
    refused(client, response(no_answer), "structure", f"{QR}.item[1].item[0]")
    issues = assert_outcome(post(client, response(wrong)), (400, 422))
    assert any(e.startswith(f"{QR}.item[1]") for e in expressions(issues)), issues


def test_the_issues_stop_at_the_configured_limit(mongo_url: str) -> None:
    """FHIR_VALIDATION_MAX_ISSUES bounds this check as it bounds the structural one."""
    with shared_client(mongo_url, validation_max_issues=3) as c:
        assert post(c, QUESTIONNAIRE).status_code == 201
        qr = response(*[item(f"unknown-{i}", {"valueString": "x"}) for i in range(10)])
        issues = assert_outcome(post(c, qr), 422)
        assert [i["code"] for i in issues] == ["structure"] * 3 + ["too-costly"]


def test_children_of_a_group_belong_in_item_item(client: TestClient) -> None:
    accepted(client, response(item("home", item=[item("city", {"valueString": "Quito"})])))
    refused(
        client,
        response(item("home", {"valueString": "Quito"})),
        "structure",
        f"{QR}.item[1].answer[0]",
    )
    refused(
        client,
        response(item("home", item=[item("phone", {"valueString": "1"})])),
        "structure",
        f"{QR}.item[1].item[0]",
    )


def test_items_follow_the_questionnaires_order(client: TestClient) -> None:
    accepted(
        client, response(item("weight", {"valueDecimal": 1}), item("name", {"valueString": "a"}))
    )
    refused(
        client,
        response(item("name", {"valueString": "a"}), item("weight", {"valueDecimal": 1})),
        "structure",
        f"{QR}.item[2]",
    )


# --- answer types ----------------------------------------------------------------------------

TYPES = [
    ("packs", {"valueInteger": 1}, {"valueDecimal": 1.5}, "decimal"),
    ("weight", {"valueDecimal": 1.5}, {"valueString": "1.5"}, "string"),
    ("visit", {"valueDate": "2024-01-01"}, {"valueDateTime": "2024-01-01T10:00:00Z"}, "dateTime"),
    ("seen", {"valueDateTime": "2024-01-01T10:00:00Z"}, {"valueDate": "2024-01-01"}, "date"),
    ("wake", {"valueTime": "07:00:00"}, {"valueString": "7am"}, "string"),
    ("name", {"valueString": "Ana"}, {"valueInteger": 3}, "integer"),
    ("notes", {"valueString": "ok"}, {"valueCoding": coding("A")}, "Coding"),
    ("site", {"valueUri": "http://a.org"}, {"valueString": "http://a.org"}, "string"),
    ("blood", {"valueCoding": coding("A")}, {"valueString": "A"}, "string"),
    ("scan", {"valueAttachment": {"url": "http://x"}}, {"valueUri": "http://x"}, "uri"),
    ("gp", {"valueReference": {"reference": "Patient/1"}}, {"valueUri": "Patient/1"}, "uri"),
    ("height", {"valueQuantity": {"value": 1}}, {"valueDecimal": 1}, "decimal"),
    ("smoker", {"valueBoolean": True}, {"valueString": "yes"}, "string"),
]


@pytest.mark.parametrize(("link_id", "good", "bad", "bad_type"), TYPES)
def test_the_answer_has_the_items_type(
    client: TestClient, link_id: str, good: dict[str, Any], bad: dict[str, Any], bad_type: str
) -> None:
    """questionnaire.html item.type: boolean -> valueBoolean, text -> valueString,
    url -> valueUri, choice -> valueCoding, ..."""
    smoker_yes = item("smoker", {"valueBoolean": True})  # packs is enabled by it
    base = response(status="in-progress")
    base["item"] = [smoker_yes] if link_id != "smoker" else []
    ok = {**base, "item": [*base["item"], item(link_id, good)]}
    bad_qr = {**base, "item": [*base["item"], item(link_id, bad)]}
    at = len(base["item"])
    accepted(client, ok)
    refused(client, bad_qr, "structure", f"{QR}.item[{at}].answer[0].value.ofType({bad_type})")


def test_open_choice_takes_a_coding_or_free_text(client: TestClient) -> None:
    accepted(client, response(item("pet", {"valueCoding": coding("dog")})))
    accepted(client, response(item("pet", {"valueString": "iguana"})))
    refused(
        client,
        response(item("pet", {"valueInteger": 1})),
        "structure",
        f"{QR}.item[1].answer[0].value.ofType(integer)",
    )


def test_display_and_group_items_have_no_answers(client: TestClient) -> None:
    accepted(client, response(item("info")))
    refused(
        client, response(item("info", {"valueString": "x"})), "structure", f"{QR}.item[1].answer[0]"
    )


# --- required --------------------------------------------------------------------------------


def test_required_items_are_answered_in_a_completed_response(client: TestClient) -> None:
    missing = response()
    missing["item"] = [item("weight", {"valueDecimal": 70})]
    refused(client, missing, "required", QR)
    accepted(client, {**missing, "status": "in-progress"})  # not claimed complete
    unanswered = response()
    unanswered["item"] = [item("smoker")]
    refused(client, unanswered, "required", f"{QR}.item[0]")


def test_required_items_within_a_group(client: TestClient) -> None:
    accepted(client, response(item("contact", item=[item("phone", {"valueString": "1"})])))
    refused(
        client,
        response(item("contact", item=[item("relation", {"valueString": "hija"})])),
        "required",
        f"{QR}.item[1]",
    )


# --- repeats ---------------------------------------------------------------------------------


def test_a_question_that_does_not_repeat_has_one_answer(client: TestClient) -> None:
    accepted(client, response(item("allergies", {"valueString": "a"}, {"valueString": "b"})))
    refused(
        client,
        response(item("name", {"valueString": "a"}, {"valueString": "b"})),
        "structure",
        f"{QR}.item[1].answer[1]",
    )


def test_only_a_repeating_group_repeats_its_item(client: TestClient) -> None:
    phone = item("phone", {"valueString": "1"})
    accepted(client, response(item("contact", item=[phone]), item("contact", item=[phone])))
    city = item("city", {"valueString": "Quito"})
    refused(
        client,
        response(item("home", item=[city]), item("home", item=[city])),
        "structure",
        f"{QR}.item[2]",
    )
    # a repeating question repeats its answers, not its item
    refused(
        client,
        response(item("allergies", {"valueString": "a"}), item("allergies", {"valueString": "b"})),
        "structure",
        f"{QR}.item[2]",
    )


# --- enableWhen --------------------------------------------------------------------------------


def test_an_item_not_enabled_has_no_answers(client: TestClient) -> None:
    """packs is enabled when smoker = true."""
    yes = response()
    yes["item"] = [item("smoker", {"valueBoolean": True}), item("packs", {"valueInteger": 3})]
    accepted(client, yes)
    refused(client, response(item("packs", {"valueInteger": 3})), "business-rule", f"{QR}.item[1]")


ENABLE_CASES = [
    # (operator, answer[x] of the condition, the age given (None: not answered), enabled)
    ("exists", {"answerBoolean": True}, 30, True),
    ("exists", {"answerBoolean": True}, None, False),
    ("exists", {"answerBoolean": False}, None, True),
    ("=", {"answerInteger": 30}, 30, True),
    ("=", {"answerInteger": 30}, 31, False),
    ("!=", {"answerInteger": 30}, 31, True),
    ("!=", {"answerInteger": 30}, 30, False),
    (">", {"answerInteger": 30}, 31, True),
    (">", {"answerInteger": 30}, 30, False),
    ("<", {"answerInteger": 30}, 29, True),
    ("<", {"answerInteger": 30}, 30, False),
    (">=", {"answerInteger": 30}, 30, True),
    (">=", {"answerInteger": 30}, 29, False),
    ("<=", {"answerInteger": 30}, 30, True),
    ("<=", {"answerInteger": 30}, 31, False),
    ("<", {"answerDecimal": 30.5}, 30, True),
]


def gated(client: TestClient, conditions: list[dict[str, Any]], behavior: str | None) -> str:
    """A Questionnaire: 'age' (integer), 'sex' (choice) and 'gated', enabled by
    ``conditions``; its url."""
    url = f"http://clinica.example.org/fhir/Questionnaire/{uuid.uuid4().hex}"
    gate: dict[str, Any] = {"linkId": "gated", "type": "string", "enableWhen": conditions}
    if behavior is not None:
        gate["enableBehavior"] = behavior
    q = {
        "resourceType": "Questionnaire",
        "url": url,
        "status": "active",
        "item": [
            {"linkId": "age", "type": "integer"},
            {"linkId": "sex", "type": "choice", "answerOption": [{"valueCoding": coding("f")}]},
            gate,
        ],
    }
    r = post(client, q)
    assert r.status_code == 201, r.text
    return url


def answers_gate(url: str, age: int | None, sex: bool = False) -> dict[str, Any]:
    items = []
    if age is not None:
        items.append(item("age", {"valueInteger": age}))
    if sex:
        items.append(item("sex", {"valueCoding": coding("f")}))
    items.append(item("gated", {"valueString": "respuesta"}))
    return {"resourceType": QR, "questionnaire": url, "status": "completed", "item": items}


@pytest.mark.parametrize(("op", "answer", "age", "enabled"), ENABLE_CASES)
def test_enable_when_operators(
    client: TestClient, op: str, answer: dict[str, Any], age: int | None, enabled: bool
) -> None:
    """questionnaire-enable-operator: exists, =, !=, >, <, >=, <= ("True if at least one
    answer has a value that is greater than the enableWhen answer", and so on)."""
    url = gated(client, [{"question": "age", "operator": op, **answer}], None)
    qr = answers_gate(url, age)
    if enabled:
        accepted(client, qr)
    else:
        refused(client, qr, "business-rule", f"{QR}.item[{len(qr['item']) - 1}]")


@pytest.mark.parametrize(
    ("behavior", "sex", "enabled"),
    [("all", True, True), ("all", False, False), ("any", False, True), ("any", True, True)],
)
def test_enable_behavior_all_and_any(
    client: TestClient, behavior: str, sex: bool, enabled: bool
) -> None:
    """enableBehavior: "all: Enable the question when all the enableWhen criteria are
    satisfied. any: Enable the question when any of the enableWhen criteria are
    satisfied." Here: age >= 18 (met) and sex = f."""
    conditions = [
        {"question": "age", "operator": ">=", "answerInteger": 18},
        {"question": "sex", "operator": "=", "answerCoding": coding("f")},
    ]
    url = gated(client, conditions, behavior)
    qr = answers_gate(url, 40, sex)
    if enabled:
        accepted(client, qr)
    else:
        refused(client, qr, "business-rule", f"{QR}.item[1]")


# --- answerOption, answerValueSet, maxLength --------------------------------------------------


def test_a_choice_answer_is_one_of_the_options(client: TestClient) -> None:
    accepted(client, response(item("blood", {"valueCoding": coding("A")})))
    refused(
        client,
        response(item("blood", {"valueCoding": coding("O")})),
        "value",
        f"{QR}.item[1].answer[0].value.ofType(Coding)",
    )
    accepted(client, response(item("color", {"valueString": "red"})))
    refused(
        client,
        response(item("color", {"valueString": "green"})),
        "value",
        f"{QR}.item[1].answer[0].value.ofType(string)",
    )


def test_an_open_choice_coding_outside_the_options_is_a_warning(client: TestClient) -> None:
    """open-choice: "Answer is a Coding drawn from a list of possible answers (as with the
    choice type) or a free-text entry in a string" -- a Coding from elsewhere is noted."""
    warned(
        client,
        response(item("pet", {"valueCoding": coding("cat")})),
        "value",
        f"{QR}.item[1].answer[0].value.ofType(Coding)",
    )


def test_an_answer_value_set_is_checked_through_the_terminology(client: TestClient) -> None:
    accepted(client, response(item("severity", {"valueCoding": coding("mild", SEVERITY)})))
    refused(
        client,
        response(item("severity", {"valueCoding": coding("fatal", SEVERITY)})),
        "code-invalid",
        f"{QR}.item[1].answer[0].value.ofType(Coding)",
    )


def test_an_answer_value_set_the_server_cannot_expand_is_a_warning(client: TestClient) -> None:
    warned(
        client,
        response(item("unchecked", {"valueCoding": coding("x")})),
        "not-found",
        f"{QR}.item[1].answer[0].value.ofType(Coding)",
    )


def test_a_contained_answer_value_set(client: TestClient) -> None:
    q = {
        "resourceType": "Questionnaire",
        "url": "http://clinica.example.org/fhir/Questionnaire/contained-vs",
        "status": "active",
        "contained": [
            {
                "resourceType": "ValueSet",
                "id": "yn",
                "status": "active",
                "compose": {"include": [{"system": SYSTEM, "concept": [{"code": "y"}]}]},
            }
        ],
        "item": [{"linkId": "q", "type": "choice", "answerValueSet": "#yn"}],
    }
    assert post(client, q).status_code == 201
    qr = {"resourceType": QR, "questionnaire": q["url"], "status": "completed"}
    accepted(client, {**qr, "item": [item("q", {"valueCoding": coding("y")})]})
    refused(
        client,
        {**qr, "item": [item("q", {"valueCoding": coding("n")})]},
        "code-invalid",
        f"{QR}.item[0].answer[0].value.ofType(Coding)",
    )


def test_max_length_of_string_and_text_answers(client: TestClient) -> None:
    accepted(client, response(item("name", {"valueString": "0123456789"})))
    refused(
        client,
        response(item("name", {"valueString": "0123456789X"})),
        "value",
        f"{QR}.item[1].answer[0].value.ofType(string)",
    )
    refused(
        client,
        response(item("notes", {"valueString": "x" * 21})),
        "value",
        f"{QR}.item[1].answer[0].value.ofType(string)",
    )


# --- finding the Questionnaire --------------------------------------------------------------


def test_an_unknown_questionnaire_is_a_warning(client: TestClient) -> None:
    qr = response(item("anything", {"valueString": "x"}), questionnaire="http://nowhere.org/Q/1")
    warned(client, qr, "not-found", f"{QR}.questionnaire")


def test_a_contained_questionnaire(client: TestClient) -> None:
    contained = {
        "resourceType": "Questionnaire",
        "id": "q",
        "status": "active",
        "item": [{"linkId": "ok", "type": "boolean"}],
    }
    qr: dict[str, Any] = {
        "resourceType": QR,
        "contained": [contained],
        "questionnaire": "#q",
        "status": "completed",
    }
    accepted(client, {**qr, "item": [item("ok", {"valueBoolean": True})]})
    refused(
        client,
        {**qr, "item": [item("ok", {"valueInteger": 1})]},
        "structure",
        f"{QR}.item[0].answer[0].value.ofType(integer)",
    )


def test_the_version_in_the_canonical_chooses_the_questionnaire(client: TestClient) -> None:
    """Version 1 of the intake form had 'weight' as an integer; without a version the
    newest (2, decimal) applies."""
    v1 = {**QUESTIONNAIRE, "version": "1", "item": [{"linkId": "weight", "type": "integer"}]}
    assert post(client, v1).status_code == 201
    qr = {"resourceType": QR, "status": "in-progress"}
    integer = [item("weight", {"valueInteger": 70})]
    accepted(client, {**qr, "questionnaire": f"{Q_URL}|1", "item": integer})
    refused(
        client,
        {**qr, "questionnaire": Q_URL, "item": integer},
        "structure",
        f"{QR}.item[0].answer[0].value.ofType(integer)",
    )


# --- update, patch, transaction, batch --------------------------------------------------------


def test_update_and_patch_are_checked(client: TestClient) -> None:
    r = post(client, response(item("name", {"valueString": "Ana"})))
    assert r.status_code == 201, r.text
    stored = r.json()
    bad = {**stored, "item": [*stored["item"][:1], item("name", {"valueInteger": 1})]}
    issues = assert_outcome(
        client.put(
            f"/fhir/{QR}/{stored['id']}",
            content=json.dumps(bad),
            headers={"Content-Type": FHIR_JSON},
        ),
        422,
    )
    assert expressions(issues) == [f"{QR}.item[1].answer[0].value.ofType(integer)"]
    ops = [{"op": "add", "path": "/item/1/answer/-", "value": {"valueString": "Eva"}}]
    issues = assert_outcome(client.patch(f"/fhir/{QR}/{stored['id']}", **patch_request(ops)), 422)
    assert expressions(issues) == [f"{QR}.item[1].answer[1]"]
    ops = [{"op": "replace", "path": "/item/1/answer/0/valueString", "value": "Eva"}]
    assert client.patch(f"/fhir/{QR}/{stored['id']}", **patch_request(ops)).status_code == 200


def test_a_transaction_checks_its_responses_with_its_own_questionnaire(client: TestClient) -> None:
    url = f"http://clinica.example.org/fhir/Questionnaire/{uuid.uuid4().hex}"
    q = {
        "resourceType": "Questionnaire",
        "url": url,
        "status": "active",
        "item": [{"linkId": "ok", "type": "boolean", "required": True}],
    }
    good = {"resourceType": QR, "questionnaire": url, "status": "completed"}
    good["item"] = [item("ok", {"valueBoolean": True})]
    r = post_bundle(
        client, [entry("POST", "Questionnaire", q, urn()), entry("POST", QR, good, urn())]
    )
    assert [e["response"]["status"][:3] for e in bundle_response(r)] == ["201", "201"]
    bad = {**good, "item": [item("ok", {"valueString": "sí"})]}
    r = post_bundle(
        client,
        [
            entry("POST", "Patient", {"resourceType": "Patient"}, urn()),
            entry("POST", QR, bad, urn()),
        ],
    )
    issues = assert_outcome(r, 422)
    assert expressions(issues) == [
        "Bundle.entry[1].resource.item[0].answer[0].value.ofType(string)"
    ]
    missing = {**good, "item": []}
    del missing["item"]
    issues = assert_outcome(post_bundle(client, [entry("POST", QR, missing, urn())]), 422)
    assert [(i["code"], i["expression"]) for i in issues] == [
        ("required", ["Bundle.entry[0].resource"])
    ]


def test_a_batch_entry_is_checked(client: TestClient) -> None:
    bad = response(item("name", {"valueBoolean": True}))
    good = response(item("name", {"valueString": "Ana"}))
    entries = bundle_response(
        post_bundle(client, [entry("POST", QR, good), entry("POST", QR, bad)], "batch"),
        "batch-response",
    )
    assert [e["response"]["status"][:3] for e in entries] == ["201", "422"]
    outcome = entries[1]["response"]["outcome"]
    assert expressions(outcome["issue"]) == [f"{QR}.item[1].answer[0].value.ofType(boolean)"]


def test_a_patch_in_a_transaction_and_a_conditional_update_are_checked(
    client: TestClient,
) -> None:
    tag = uuid.uuid4().hex
    qr = {**response(item("name", {"valueString": "Ana"})), "identifier": {"value": tag}}
    r = client.put(
        f"/fhir/{QR}?identifier={tag}", content=json.dumps(qr), headers={"Content-Type": FHIR_JSON}
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    bad = {**qr, "item": [*qr["item"], item("blood", {"valueCoding": coding("Z")})]}
    issues = assert_outcome(
        client.put(
            f"/fhir/{QR}?identifier={tag}",
            content=json.dumps(bad),
            headers={"Content-Type": FHIR_JSON},
        ),
        422,
    )
    assert expressions(issues) == [f"{QR}.item[2].answer[0].value.ofType(Coding)"]
    ops = [{"op": "add", "path": "/item/-", "value": item("site", {"valueString": "x.org"})}]
    r = post_bundle(client, [entry("PATCH", f"{QR}/{rid}", binary_patch(ops))])
    issues = assert_outcome(r, 422)
    assert expressions(issues) == [
        "Bundle.entry[0].resource.item[2].answer[0].value.ofType(string)"
    ]
    ops = [{"op": "add", "path": "/item/-", "value": item("site", {"valueUri": "http://x.org"})}]
    r = post_bundle(client, [entry("PATCH", f"{QR}/{rid}", binary_patch(ops))])
    assert [e["response"]["status"][:3] for e in bundle_response(r)] == ["200"]
