"""String and token search (search.html#string, #token, #modifiers, #missing,
#escaping, #combining). Every expected set below is worked out by hand from the
resources each test creates."""

from __future__ import annotations

import pytest
from fhir_helpers import create_with_id, found, observation, shared_client

MRN = "http://hospital.example/mrn"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"


def _patients(client) -> None:
    create_with_id(
        client,
        {
            "resourceType": "Patient",
            "active": True,
            "gender": "male",
            "birthDate": "1980-02-29",
            "name": [{"use": "official", "family": "Núñez", "given": ["José", "María"]}],
            "identifier": [
                {
                    "type": {
                        "coding": [{"system": V2_0203, "code": "MR"}],
                        "text": "Medical record",
                    },
                    "system": MRN,
                    "value": "446053",
                }
            ],
            "telecom": [{"system": "email", "value": "jose@example.org"}],
            "address": [
                {
                    "line": ["1 Bahnhofstrasse"],
                    "city": "Zürich",
                    "state": "ZH",
                    "postalCode": "8001",
                    "country": "Switzerland",
                }
            ],
        },
        "nunez",
    )
    create_with_id(
        client,
        {
            "resourceType": "Patient",
            "active": False,
            "gender": "female",
            "name": [{"family": "Nunes", "given": ["Ana"]}],
            "identifier": [
                {
                    "type": {"coding": [{"system": V2_0203, "code": "DL"}]},
                    "system": "http://dmv.example/dl",
                    "value": "446053",
                }
            ],
            "address": [{"city": "Lisboa", "country": "Portugal"}],
        },
        "nunes",
    )
    # No gender, no active, a comma in the family name, a pipe in an identifier value.
    create_with_id(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": "Smith,Jr", "given": ["Bob"]}],
            "identifier": [{"system": MRN, "value": "a|b"}, {"value": "446053"}],
        },
        "smith",
    )
    # Only a text name; a backslash and a dollar in its family-less text.
    create_with_id(
        client,
        {"resourceType": "Patient", "gender": "other", "name": [{"text": "Dr. Zé Ninguém"}]},
        "textonly",
    )
    create_with_id(
        client,
        {"resourceType": "Patient", "name": [{"family": "Back\\slash$Dollar"}]},
        "odd",
    )


@pytest.fixture(scope="module")
def people(mongo_url):
    with shared_client(mongo_url) as client:  # read-only tests share these
        _patients(client)
        yield client


# --- string ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # search.html#string: "By default, a field matches a string query if the value of
        # the field equals or starts with the supplied parameter value, after both have
        # been normalized by case and combining characters."
        ("nunez", {"nunez"}),
        ("NÚÑ", {"nunez", "nunes"}),  # accents ignored: "nun" starts "Nunes" too
        ("NÚÑE", {"nunez", "nunes"}),
        ("NÚÑEZ", {"nunez"}),
        ("Nu", {"nunez", "nunes"}),
        ("núñez", {"nunez"}),
        ("NUNE", {"nunez", "nunes"}),
        ("nunes", {"nunes"}),
        ("unez", set()),  # not at the start
        ("nunezz", set()),
        # an unescaped comma is an OR of "smith" and "jr"; "smith" starts "Smith,Jr"
        ("smith,jr", {"smith"}),
        ("jr", set()),
    ],
)
def test_string_default_is_case_and_accent_insensitive_prefix(people, query, expected):
    assert found(people, "Patient", {"family": query}) == expected


def test_string_exact_is_whole_value_case_and_accent_sensitive(people):
    # search.html#string: ":exact returns results that match the entire supplied
    # parameter, including casing and accents."
    assert found(people, "Patient", {"family:exact": "Núñez"}) == {"nunez"}
    for miss in ("nunez", "Nunez", "NÚÑEZ", "Núñ", "Núñez "):
        assert found(people, "Patient", {"family:exact": miss}) == set(), miss
    assert found(people, "Patient", {"given:exact": "María"}) == {"nunez"}
    assert found(people, "Patient", {"given:exact": "Maria"}) == set()


def test_string_contains_matches_anywhere_insensitively(people):
    # search.html#modifiers: ":contains (case insensitive and combining
    # character-insensitive, search text matched anywhere in the string)"
    assert found(people, "Patient", {"family:contains": "UÑE"}) == {"nunez", "nunes"}
    assert found(people, "Patient", {"family:contains": "nez"}) == {"nunez"}
    assert found(people, "Patient", {"family:contains": "ith\\,j"}) == {"smith"}
    assert found(people, "Patient", {"given:contains": "ari"}) == {"nunez"}
    assert found(people, "Patient", {"family:contains": "xyz"}) == set()


def test_human_name_parts(people):
    # search.html#string: a HumanName search "covers the elements of type string":
    # name matches family, given, prefix, suffix and text; family/given one part only.
    assert found(people, "Patient", {"name": "josé"}) == {"nunez"}
    assert found(people, "Patient", {"name": "maria"}) == {"nunez"}  # second given
    assert found(people, "Patient", {"name": "nun"}) == {"nunez", "nunes"}  # family
    assert found(people, "Patient", {"name": "dr. ze"}) == {"textonly"}  # text
    assert found(people, "Patient", {"given": "ana"}) == {"nunes"}
    assert found(people, "Patient", {"given": "nunez"}) == set()  # family is not a given
    assert found(people, "Patient", {"family": "jose"}) == set()
    assert found(people, "Patient", {"family": "dr"}) == set()  # text is no family


def test_address_parts(people):
    assert found(people, "Patient", {"address": "zurich"}) == {"nunez"}  # city
    assert found(people, "Patient", {"address": "1 bahnhof"}) == {"nunez"}  # line
    assert found(people, "Patient", {"address": "8001"}) == {"nunez"}  # postalCode
    assert found(people, "Patient", {"address": "portu"}) == {"nunes"}  # country
    assert found(people, "Patient", {"address-city": "ZÜR"}) == {"nunez"}
    assert found(people, "Patient", {"address-city": "lis"}) == {"nunes"}
    assert found(people, "Patient", {"address-city": "8001"}) == set()  # not a city
    assert found(people, "Patient", {"address-postalcode": "800"}) == {"nunez"}
    assert found(people, "Patient", {"address-state": "zh"}) == {"nunez"}
    assert found(people, "Patient", {"address-country": "switz"}) == {"nunez"}
    assert found(people, "Patient", {"address:contains": "hnhof"}) == {"nunez"}


def test_string_or_and(people):
    # search.html#combining: "," is OR within one parameter, repeating it is AND.
    assert found(people, "Patient", {"family": "nunez,smith"}) == {"nunez", "smith"}
    assert found(people, "Patient", [("given", "jose"), ("given", "maria")]) == {"nunez"}
    assert found(people, "Patient", [("given", "jose"), ("given", "ana")]) == set()
    assert found(people, "Patient", [("given", "jose,ana"), ("family", "nunes")]) == {"nunes"}


def test_string_escaping(people):
    # search.html#escaping: "\," is a literal comma, "\\" a literal backslash and "\$"
    # a literal dollar.
    assert found(people, "Patient", {"family:exact": "Smith\\,Jr"}) == {"smith"}
    assert found(people, "Patient", {"family:exact": "Smith,Jr"}) == set()  # "Smith" OR "Jr"
    assert found(people, "Patient", {"family": "smith\\,j"}) == {"smith"}
    assert found(people, "Patient", {"family:exact": "Back\\\\slash\\$Dollar"}) == {"odd"}
    assert found(people, "Patient", {"family": "back\\\\s"}) == {"odd"}


# --- token -----------------------------------------------------------------------------


def test_token_code_forms(people):
    # search.html#token: [code] any system; [system]|[code]; |[code] no system;
    # [system]| any code in the system.
    assert found(people, "Patient", {"identifier": "446053"}) == {"nunez", "nunes", "smith"}
    assert found(people, "Patient", {"identifier": f"{MRN}|446053"}) == {"nunez"}
    assert found(people, "Patient", {"identifier": "|446053"}) == {"smith"}
    assert found(people, "Patient", {"identifier": f"{MRN}|"}) == {"nunez", "smith"}
    assert found(people, "Patient", {"identifier": "http://other|446053"}) == set()
    assert found(people, "Patient", {"identifier": "44605"}) == set()  # no partial match
    assert found(people, "Patient", {"gender": "male"}) == {"nunez"}
    assert found(people, "Patient", {"email": "jose@example.org"}) == {"nunez"}
    assert found(people, "Patient", {"telecom": "jose@example.org"}) == {"nunez"}


def test_token_on_codeable_concept(client):
    create_with_id(client, observation(), "glucose")  # LOINC 2339-0, text "Glucose"
    create_with_id(
        client,
        observation(
            code={
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "2339-0"},
                    {"system": LOINC, "code": "4548-4", "display": "Hemoglobin A1c"},
                ]
            }
        ),
        "hba1c",
    )
    assert found(client, "Observation", {"code": "2339-0"}) == {"glucose", "hba1c"}
    assert found(client, "Observation", {"code": f"{LOINC}|2339-0"}) == {"glucose"}
    assert found(client, "Observation", {"code": "http://snomed.info/sct|2339-0"}) == {"hba1c"}
    assert found(client, "Observation", {"code": f"{LOINC}|"}) == {"glucose", "hba1c"}
    assert found(client, "Observation", {"code": "|2339-0"}) == set()
    assert found(client, "Observation", {"code": f"{LOINC}|4548-4,{LOINC}|2339-0"}) == {
        "glucose",
        "hba1c",
    }
    # :text "functions as a normal string search" on CodeableConcept.text and
    # Coding.display (search.html#token).
    assert found(client, "Observation", {"code:text": "GLUC"}) == {"glucose"}
    assert found(client, "Observation", {"code:text": "hemoglobin a"}) == {"hba1c"}
    assert found(client, "Observation", {"code:text": "ucose"}) == set()
    assert found(client, "Observation", {"code:text": "gluc,hemo"}) == {"glucose", "hba1c"}


def test_token_not_includes_resources_without_a_value(people):
    # search.html#token: ":not ... return all resources that do not have a matching
    # item. Note that this includes resources that have no value for the parameter"
    assert found(people, "Patient", {"gender:not": "male"}) == {"nunes", "smith", "textonly", "odd"}
    assert found(people, "Patient", {"gender:not": "male,female"}) == {"smith", "textonly", "odd"}
    assert found(people, "Patient", {"identifier:not": f"{MRN}|"}) == {"nunes", "textonly", "odd"}


def test_token_not_applies_to_the_set(client):
    # search.html#token: "the negation applies to the set, not each individual entry":
    # a resource with a matching category and another category is not returned.
    cat = "http://terminology.hl7.org/CodeSystem/observation-category"
    both = [
        {"coding": [{"system": cat, "code": "laboratory"}]},
        {"coding": [{"code": "vital-signs"}]},
    ]
    create_with_id(client, observation(category=both), "both")
    create_with_id(client, observation(category=[{"coding": [{"code": "vital-signs"}]}]), "vital")
    create_with_id(client, observation(), "none")
    assert found(client, "Observation", {"category:not": "laboratory"}) == {"vital", "none"}
    assert found(client, "Observation", {"category:not": f"{cat}|laboratory"}) == {"vital", "none"}
    assert found(client, "Observation", {"category:not": f"{cat}|"}) == {"vital", "none"}


def test_token_of_type(people):
    # search.html#token: ":of-type ... system|code|value, where the system and code
    # refer to a Identifier.type.coding.system and .code"
    assert found(people, "Patient", {"identifier:of-type": f"{V2_0203}|MR|446053"}) == {"nunez"}
    assert found(people, "Patient", {"identifier:of-type": f"{V2_0203}|DL|446053"}) == {"nunes"}
    assert found(people, "Patient", {"identifier:of-type": f"{V2_0203}|MR|a\\|b"}) == set()
    assert found(people, "Patient", {"identifier:of-type": f"{V2_0203}|MR|99"}) == set()
    assert found(people, "Patient", {"identifier:of-type": "http://x|MR|446053"}) == set()
    # Identifier.type.text is searchable with :text
    assert found(people, "Patient", {"identifier:text": "medical"}) == {"nunez"}


def test_boolean_token(people):
    assert found(people, "Patient", {"active": "true"}) == {"nunez"}
    assert found(people, "Patient", {"active": "false"}) == {"nunes"}
    assert found(people, "Patient", {"active:not": "true"}) == {"nunes", "smith", "textonly", "odd"}


def test_token_escaping(people):
    # search.html#escaping: "\|" is a literal pipe in a value.
    assert found(people, "Patient", {"identifier": f"{MRN}|a\\|b"}) == {"smith"}
    assert found(people, "Patient", {"identifier": "a\\|b"}) == {"smith"}
    assert found(people, "Patient", {"identifier": "a\\|b,446053"}) == {"nunez", "nunes", "smith"}


def test_token_or_and(people):
    assert found(people, "Patient", {"gender": "male,female"}) == {"nunez", "nunes"}
    assert found(people, "Patient", [("gender", "male,female"), ("active", "false")]) == {"nunes"}
    assert found(people, "Patient", [("gender", "male"), ("gender", "female")]) == set()
    two = [("identifier", f"{MRN}|a\\|b"), ("identifier", "|446053")]
    assert found(people, "Patient", two) == {"smith"}  # both on one patient


# --- :missing --------------------------------------------------------------------------


def test_missing_on_several_types(people):
    # search.html#modifiers: ":missing=true will return all the resources that don't
    # have a value for the parameter ... :missing=false ... all the resources that have"
    everyone = {"nunez", "nunes", "smith", "textonly", "odd"}
    cases = {
        "gender": {"smith", "odd"},  # token (code)
        "active": {"smith", "textonly", "odd"},  # token (boolean)
        "family": {"textonly"},  # string
        "birthdate": everyone - {"nunez"},  # date
        "address-city": everyone - {"nunez", "nunes"},  # string in Address
        "organization": everyone,  # reference
        "email": everyone - {"nunez"},
    }
    for code, missing in cases.items():
        assert found(people, "Patient", {f"{code}:missing": "true"}) == missing, code
        assert found(people, "Patient", {f"{code}:missing": "false"}) == everyone - missing, code


def test_missing_on_quantity_and_reference(client):
    create_with_id(
        client,
        observation(
            subject={"reference": "Patient/x"},
            valueQuantity={"value": 5, "system": "http://unitsofmeasure.org", "code": "mg"},
        ),
        "full",
    )
    create_with_id(client, observation(), "bare")
    assert found(client, "Observation", {"value-quantity:missing": "true"}) == {"bare"}
    assert found(client, "Observation", {"value-quantity:missing": "false"}) == {"full"}
    assert found(client, "Observation", {"subject:missing": "true"}) == {"bare"}
    assert found(client, "Observation", {"subject:missing": "false"}) == {"full"}
    assert found(client, "Observation", {"code:missing": "false"}) == {"full", "bare"}
    assert found(client, "Observation", {"date:missing": "true"}) == {"full", "bare"}


def test_missing_and_value_on_one_parameter_match_nothing(people):
    # search.html#missing: "This query will always return an empty list, as no resource
    # can satisfy both criteria at once"
    assert found(people, "Patient", [("gender", "male"), ("gender:missing", "true")]) == set()
