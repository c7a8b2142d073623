"""Ordered searches: date, number, quantity and composite (search.html#prefix, #date,
#number, #quantity, #composite).

Every expected set is worked out by hand from the prefix table of search.html#prefix:

    eq  the range of the search value fully contains the range of the target value
    ne  the range of the search value does not fully contain the range of the target value
    gt  the range above the search value intersects (i.e. overlaps) with the range of the
        target value
    lt  the range below the search value intersects (i.e. overlaps) with the range of the
        target value
    ge  gt, or the range of the search value fully contains the range of the target value
    le  lt, or the range of the search value fully contains the range of the target value
    sa  the range of the search value does not overlap with the range of the target value,
        and the range above the search value contains the range of the target value
    eb  the range of the search value does [not] overlap with the range of the target
        value, and the range below the search value contains the range of the target value
    ap  the range of the search value overlaps with the range of the target value
        (widened by about 10%: "for a date, 10% of the gap between now and the date")
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from fhir_helpers import create, create_with_id, found, observation, search, shared_client

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


# --- date ------------------------------------------------------------------------------

# Observation.effective[x] targets and the [low, high) range each one covers (UTC).
# Stored dateTimes carry their precision (search.html#date: "the date 2013-01-10 specifies
# all the time from 00:00 on 10-Jan 2013 to immediately before 00:00 on 11-Jan 2013");
# a Period with a missing end is open ("A missing upper boundary is 'greater than' any
# actual date").
EFFECTIVE = {
    "year": {"effectiveDateTime": "2020"},  # [2020-01-01, 2021-01-01)
    "month": {"effectiveDateTime": "2020-03"},  # [2020-03-01, 2020-04-01)
    "day": {"effectiveDateTime": "2020-03-04"},  # [03-04, 03-05)
    "utc": {"effectiveDateTime": "2020-03-04T10:00:00Z"},  # [03-04T10:00:00, +1s)
    "zoned": {"effectiveDateTime": "2020-03-04T10:00:00+05:00"},  # [03-04T05:00:00Z, +1s)
    "prior": {"effectiveDateTime": "2020-03-03T23:59:59Z"},  # ends at 03-04T00:00 exactly
    "late": {"effectiveDateTime": "2020-03-05T00:00:00Z"},  # starts at 03-05T00:00 exactly
    "near": {"effectiveDateTime": "2020-05-01"},  # [05-01, 05-02)
    "far": {"effectiveDateTime": "2024-01-01"},
    "open-end": {"effectivePeriod": {"start": "2020-03-04T12:00:00Z"}},  # [03-04T12, +inf)
    "open-start": {"effectivePeriod": {"end": "2020-03-03"}},  # (-inf, 03-04T00:00)
    # straddles the start of the day: [03-03T12:00, 03-04T12:00:01)
    "span": {"effectivePeriod": {"start": "2020-03-03T12:00:00Z", "end": "2020-03-04T12:00:00Z"}},
    "instant": {"effectiveInstant": "2020-03-04T10:00:00.123Z"},
}
ALL = set(EFFECTIVE) | {"none"}


@pytest.fixture(scope="module")
def dated(mongo_url):
    with shared_client(mongo_url) as client:  # read-only tests share these
        for name, effective in EFFECTIVE.items():
            create_with_id(client, observation(**effective), name)
        create_with_id(client, observation(), "none")  # no date at all
        yield client


# search value 2020-03-04: range [2020-03-04T00:00Z, 2020-03-05T00:00Z)
DAY_EQ = {"day", "utc", "zoned", "instant"}
DAY_GT = {"year", "month", "open-end", "late", "near", "far"}  # reach past 03-05T00:00
DAY_LT = {"year", "month", "open-start", "span", "prior"}  # reach before 03-04T00:00
DAY_EXPECTED = {
    "eq": DAY_EQ,
    "ne": set(EFFECTIVE) - DAY_EQ,  # resources without a date have nothing to compare
    "gt": DAY_GT,
    "lt": DAY_LT,
    "ge": DAY_GT | DAY_EQ,
    "le": DAY_LT | DAY_EQ,
    "sa": {"late", "near", "far"},  # start at or after 03-05T00:00
    "eb": {"open-start", "prior"},  # end at or before 03-04T00:00
}


@pytest.mark.parametrize("prefix", list(DAY_EXPECTED))
def test_date_prefixes_on_a_day(dated, prefix):
    assert found(dated, "Observation", {"date": f"{prefix}2020-03-04"}) == DAY_EXPECTED[prefix]


def test_no_prefix_means_eq(dated):
    assert found(dated, "Observation", {"date": "2020-03-04"}) == DAY_EQ


def test_date_ap(dated):
    # "ap ... 10% of the gap between now and the date": now is years after 2020-03-04,
    # so the window reaches well past 2020-05-01 but not to 2024; overlap is enough.
    expected = set(EFFECTIVE) - {"far"}
    assert found(dated, "Observation", {"date": "ap2020-03-04"}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # The search value's own precision sets its range (search.html#date).
        (
            "2020",
            {"year", "month", "day", "utc", "zoned", "prior", "late", "near", "span", "instant"},
        ),
        ("2020-03", {"month", "day", "utc", "zoned", "prior", "late", "span", "instant"}),
        ("2020-03-04", DAY_EQ),
        # the second [10:00:00, 10:00:01) holds the instant 10:00:00.123 too
        ("2020-03-04T10:00:00Z", {"utc", "instant"}),
        ("2020-03-04T10:00Z", {"utc", "instant"}),  # the minute [10:00, 10:01)
        ("2020-03-04T10:00:00.123Z", {"instant"}),
        # time zones: +05:00 is 5 hours ahead of UTC
        ("2020-03-04T10:00:00+05:00", {"zoned"}),
        ("2020-03-04T05:00:00Z", {"zoned"}),
        ("2020-03-04T15:00:00+05:00", {"utc", "instant"}),
        ("2020-03-04T00:00:00-05:00", {"zoned"}),  # 05:00:00Z
        ("2020-03-04T00:00-05:00", {"zoned"}),  # the minute from 05:00Z
        ("2021", set()),
    ],
)
def test_date_precision_and_time_zones(dated, value, expected):
    assert found(dated, "Observation", {"date": value}) == expected


def test_date_prefix_with_time_against_day_precision(dated):
    # search.html#date: "lt2013-01-14T10:00: 2013-01-14 matches, because it includes the
    # part of 14-Jan 2013 before 10am"; likewise gt.
    lt = found(dated, "Observation", {"date": "lt2020-03-04T10:00Z"})
    gt = found(dated, "Observation", {"date": "gt2020-03-04T10:00Z"})
    assert "day" in lt and "day" in gt
    # [10:00, 10:01) is the search range: "utc" (10:00:00) is inside it, so neither
    # strictly below nor above; "instant" too; "zoned" (05:00Z) is below only.
    assert "utc" not in lt and "utc" not in gt
    assert "zoned" in lt and "zoned" not in gt
    assert "open-end" in gt and "open-end" not in lt  # starts 12:00
    assert "open-start" in lt and "open-start" not in gt
    assert "span" in lt and "span" in gt  # 03-03T12:00 .. 03-04T12:00


def test_period_open_ends(dated):
    # search.html#date, the ge/le/sa/eb examples with "from 21-Jan 2013 onwards":
    # an open end is included by ge and le of a date inside it, never by eq.
    assert "open-end" in found(dated, "Observation", {"date": "ge2030-01-01"})
    assert "open-end" in found(dated, "Observation", {"date": "le2020-03-05"})
    assert "open-end" not in found(dated, "Observation", {"date": "2020-03-04"})
    assert "open-end" not in found(dated, "Observation", {"date": "le2020-03-03"})
    assert "open-end" in found(dated, "Observation", {"date": "sa2020-03-03"})
    assert "open-end" not in found(dated, "Observation", {"date": "sa2020-03-04"})
    assert "open-start" in found(dated, "Observation", {"date": "lt1900"})
    assert "open-start" in found(dated, "Observation", {"date": "eb2020-03-04"})
    assert "open-start" not in found(dated, "Observation", {"date": "eb2020-03-03"})


def test_date_and_range(dated):
    # Two dates ANDed make a window: ge2020-03-04 and lt2020-03-05
    window = [("date", "ge2020-03-04"), ("date", "lt2020-03-05")]
    # ge: DAY_GT | DAY_EQ; lt2020-03-05 reaches before 03-05T00:00: everything but
    # late/near/far/none
    lt_05 = set(EFFECTIVE) - {"late", "near", "far"}
    assert found(dated, "Observation", window) == (DAY_GT | DAY_EQ) & lt_05


def test_date_or(dated):
    assert found(dated, "Observation", {"date": "2020-03-04T10:00:00Z,2024"}) == {
        "utc",
        "instant",
        "far",
    }


def test_dates_past_the_representable_range_are_indexed_at_its_limits(client):
    """datatypes.html#dateTime: "If hours and minutes are specified, a time zone SHALL
    be populated", and the R4 regex allows any year 0001-9999 with an offset up to
    "(Z|(\\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))", so "9999-12-31T23:59:59-14:00"
    (10000-01-01T13:59:59Z) and "0001-01-01T00:00:00+14:00" (0000-12-31T10:00:00Z) are
    valid and stored. They were indexed as no date at all,
    so date searches missed them; now they are indexed at the last (first) instant the
    server represents, and the prefixes that reach that far find them."""
    create_with_id(client, observation(effectiveDateTime="9999-12-31T23:59:59-14:00"), "last")
    create_with_id(client, observation(effectiveDateTime="0001-01-01T00:00:00+14:00"), "first")
    starts = {"start": "9999-12-31T20:00:00-10:00", "end": "9999-12-31T23:00:00-12:00"}
    create_with_id(client, observation(effectivePeriod=starts), "period")
    create_with_id(client, observation(effectiveDateTime="2020-03-04"), "mid")
    assert found(client, "Observation", {"date": "ge9999-12-31"}) == {"last", "period"}
    assert found(client, "Observation", {"date": "sa9999-12-30"}) == {"last", "period"}
    assert found(client, "Observation", {"date": "lt9999-12-31"}) == {"first", "mid"}
    assert found(client, "Observation", {"date": "le0001-01-01"}) == {"first"}
    assert found(client, "Observation", {"date": "gt0001-01-01"}) == {"last", "period", "mid"}
    ordered = search(client, "Observation", {"_sort": "date"})
    assert [e["resource"]["id"] for e in ordered["entry"]][:2] == ["first", "mid"]


def test_date_on_patient_birthdate(client):
    for rid, born in (("a", "1980-02-29"), ("b", "1980-03"), ("c", "1981")):
        create_with_id(client, {"resourceType": "Patient", "birthDate": born}, rid)
    assert found(client, "Patient", {"birthdate": "1980"}) == {"a", "b"}
    assert found(client, "Patient", {"birthdate": "1980-02"}) == {"a"}
    assert found(client, "Patient", {"birthdate": "ge1980-03-01"}) == {"b", "c"}
    assert found(client, "Patient", {"birthdate": "lt1980-03-15"}) == {"a", "b"}
    assert found(client, "Patient", {"birthdate": "sa1980-03-15"}) == {"c"}
    assert found(client, "Patient", {"birthdate": "eb1980-03"}) == {"a"}


def test_last_updated(client):
    first = create(client, {"resourceType": "Patient"})
    time.sleep(0.01)
    second = create(client, {"resourceType": "Patient"})
    a, b = first["id"], second["id"]
    t1, t2 = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    assert t1 < t2
    assert found(client, "Patient", {"_lastUpdated": t1}) == {a}
    assert found(client, "Patient", {"_lastUpdated": f"ge{t2}"}) == {b}
    assert found(client, "Patient", {"_lastUpdated": f"lt{t2}"}) == {a}
    assert found(client, "Patient", {"_lastUpdated": f"gt{t1}"}) == {b}
    assert found(client, "Patient", {"_lastUpdated": f"le{t1}"}) == {a}
    assert found(client, "Patient", {"_lastUpdated": f"ne{t1}"}) == {b}
    today = datetime.now(UTC).date()
    both = {a, b}
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    assert found(client, "Patient", {"_lastUpdated": f"gt{yesterday.isoformat()}"}) == both
    assert found(client, "Patient", {"_lastUpdated": f"sa{tomorrow.isoformat()}"}) == set()
    assert found(client, "Patient", {"_lastUpdated": "lt2000"}) == set()


# --- number ----------------------------------------------------------------------------


def risk(probability: object) -> dict:
    prediction = (
        {"probabilityRange": probability}
        if isinstance(probability, dict)
        else {"probabilityDecimal": probability}
    )
    return {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/x"},
        "prediction": [prediction],
    }


@pytest.fixture(scope="module")
def risks(mongo_url):
    with shared_client(mongo_url) as client:
        values = {"r50": 0.5, "r75": 0.75, "r80": 0.8, "r85": 0.85, "r90": 0.9, "r1": 1}
        for rid, p in values.items():
            create_with_id(client, risk(p), rid)
        create_with_id(client, risk({"low": {"value": 0.2}, "high": {"value": 0.4}}), "range")
        yield client


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # search.html#number: "100 ... searching for values in the range [99.5 ... 100.5)"
        ("0.8", {"r75", "r80"}),  # [0.75, 0.85): 0.75 in, 0.85 out
        ("0.80", {"r80"}),  # [0.795, 0.805)
        ("0.9", {"r85", "r90"}),  # [0.85, 0.95)
        ("1", {"r50", "r75", "r80", "r85", "r90", "r1"}),  # 1 significant figure: [0.5, 1.5)
        ("1.0", {"r1"}),  # [0.95, 1.05)
        ("8e-1", {"r75", "r80"}),  # exponential form, 1 significant figure like 0.8
        ("0.3", set()),  # inside the Range [0.2, 0.4], but the range is not contained
        # "lt100 Values that are less than exactly 100" etc.; "When a comparison prefix in
        # the set lgt, lt, ge, le, sa & eb is provided, the implicit precision of the
        # number is ignored, and they are treated as if they have arbitrarily high
        # precision"
        ("gt0.8", {"r85", "r90", "r1"}),
        ("ge0.8", {"r80", "r85", "r90", "r1"}),
        ("lt0.8", {"r50", "r75", "range"}),
        ("le0.8", {"r50", "r75", "r80", "range"}),
        ("sa0.8", {"r85", "r90", "r1"}),
        ("eb0.8", {"r50", "r75", "range"}),
        ("sa0.75", {"r80", "r85", "r90", "r1"}),
        ("eb0.85", {"r50", "r75", "r80", "range"}),
        ("gt0.3", {"r50", "r75", "r80", "r85", "r90", "r1", "range"}),  # the Range reaches 0.4
        ("lt0.3", {"range"}),  # and starts at 0.2
        ("sa0.3", {"r50", "r75", "r80", "r85", "r90", "r1"}),
        ("eb0.3", set()),
        # "ne100 Values that are not equal to 100 (actually, in the range 99.5 to 100.5)"
        ("ne0.8", {"r50", "r85", "r90", "r1", "range"}),
    ],
)
def test_number(risks, value, expected):
    assert found(risks, "RiskAssessment", {"probability": value}) == expected


def test_number_ap(risks):
    # search.html#prefix: "the recommended value for the approximation is 10% of the
    # stated value ... but systems may choose other values": 0.72..0.88 for ap0.8 is
    # surely in, and 0.5 and 1 (25% away) surely out; 0.9 is left to the server.
    got = found(risks, "RiskAssessment", {"probability": "ap0.8"})
    assert {"r75", "r80", "r85"} <= got
    assert not got & {"r50", "r1", "range"}
    got = found(risks, "RiskAssessment", {"probability": "ap1.0"})
    assert {"r1"} <= got and not got & {"r50", "r75", "range"}


def test_number_or_and(risks):
    assert found(risks, "RiskAssessment", {"probability": "0.50,0.90"}) == {"r50", "r90"}
    window = [("probability", "gt0.5"), ("probability", "lt0.9")]
    assert found(risks, "RiskAssessment", window) == {"r75", "r80", "r85"}


# --- quantity --------------------------------------------------------------------------


def quantity(value, system=UCUM, code="mg", unit=None) -> dict:
    q = {"value": value}
    if system:
        q["system"] = system
    if code:
        q["code"] = code
    if unit:
        q["unit"] = unit
    return q


@pytest.fixture(scope="module")
def quantities(mongo_url):
    values = {
        "mg54": quantity(5.4, unit="mg"),
        "mg535": quantity(5.35),
        "mg5449": quantity(5.449),
        "mg545": quantity(5.45),
        "mg540": quantity(5.40),
        "g54": quantity(5.4, code="g"),
        "unit-only": quantity(5.4, system=None, code=None, unit="mg"),
        "other-sys": quantity(5.4, system="http://other.example/units"),
        "big": quantity(120, system=UCUM, code="mm[Hg]"),
    }
    with shared_client(mongo_url) as client:
        for rid, q in values.items():
            create_with_id(client, observation(valueQuantity=q), rid)
        create_with_id(client, observation(valueString="n/a"), "none")
        yield client


FIVE_FOUR = {"mg54", "mg535", "mg5449", "mg540", "g54", "unit-only", "other-sys"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # search.html#quantity: "value-quantity=5.4 ... a value of 5.4(+/-0.05)
        # irrespective of the unit": [5.35, 5.45)
        ("5.4", FIVE_FOUR),
        ("5.40", {"mg54", "mg540", "g54", "unit-only", "other-sys"}),  # [5.395, 5.405)
        # "5.4|http://unitsofmeasure.org|mg ... where mg is understood as a UCUM unit
        # (system/code)"
        (f"5.4|{UCUM}|mg", {"mg54", "mg535", "mg5449", "mg540"}),
        (f"5.4|{UCUM}|g", {"g54"}),
        # "5.40e-3|http://unitsofmeasure.org|g" is 0.0054 g: no unit conversion here
        (f"5.4e-3|{UCUM}|g", set()),
        # "5.4||mg ... where the unit - either the code (code) or the stated human unit
        # (unit) are 'mg'"
        ("5.4||mg", {"mg54", "mg535", "mg5449", "mg540", "unit-only", "other-sys"}),
        # "le5.4|http://unitsofmeasure.org|mg ... less than 5.4 mg exactly"
        (f"le5.4|{UCUM}|mg", {"mg54", "mg535", "mg540"}),
        (f"lt5.4|{UCUM}|mg", {"mg535"}),
        (f"gt5.4|{UCUM}|mg", {"mg5449", "mg545"}),
        (f"ge5.45|{UCUM}|mg", {"mg545"}),
        (f"ne5.4|{UCUM}|mg", {"mg545"}),
        (f"gt100|{UCUM}|mm[Hg]", {"big"}),
        (f"gt100|{UCUM}|mg", set()),
        ("gt100", {"big"}),
        # about 10% of 5.4 either side
        (f"ap5.4|{UCUM}|mg", {"mg54", "mg535", "mg5449", "mg545", "mg540"}),
        (f"5.4|{UCUM}|", {"mg54", "mg535", "mg5449", "mg540", "g54"}),  # system, any code
    ],
)
def test_quantity(quantities, value, expected):
    assert found(quantities, "Observation", {"value-quantity": value}) == expected


# --- composite -------------------------------------------------------------------------


def bp(systolic: float, diastolic: float) -> dict:
    def component(code: str, value: float) -> dict:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "system": UCUM, "code": "mm[Hg]"},
        }

    return observation(
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        component=[component("8480-6", systolic), component("8462-4", diastolic)],
    )


def test_code_value_quantity(client):
    systolic = {"coding": [{"system": LOINC, "code": "8480-6"}]}
    high = {"value": 150, "system": UCUM, "code": "mm[Hg]"}
    low = {"value": 90, "system": UCUM, "code": "mm[Hg]"}
    create_with_id(client, observation(code=systolic, valueQuantity=high), "high")
    create_with_id(client, observation(code=systolic, valueQuantity=low), "low")
    create_with_id(client, observation(valueQuantity=high), "other-code")  # glucose 150
    param = "code-value-quantity"
    assert found(client, "Observation", {param: f"{LOINC}|8480-6$gt100"}) == {"high"}
    assert found(client, "Observation", {param: "8480-6$lt100"}) == {"low"}
    assert found(client, "Observation", {param: f"{LOINC}|8480-6$gt100|{UCUM}|mm[Hg]"}) == {"high"}
    assert found(client, "Observation", {param: f"{LOINC}|8480-6$gt100|{UCUM}|mg"}) == set()
    assert found(client, "Observation", {param: f"{LOINC}|2339-0$150"}) == {"other-code"}
    # OR of two composite values
    both = f"{LOINC}|8480-6$gt100,{LOINC}|2339-0$gt100"
    assert found(client, "Observation", {param: both}) == {"high", "other-code"}


def test_component_code_value_quantity_matches_within_one_component(client):
    create_with_id(client, bp(120, 80), "normal")
    create_with_id(client, bp(170, 110), "crisis")
    create_with_id(client, bp(95, 140), "inverted")  # impossible, but tells the pairs apart
    param = "component-code-value-quantity"
    # search.html#composite: "component-code-value-quantity=http://loinc.org|8480-6$lt60
    # Search for all the observations with a systolic blood pressure < 60"
    assert found(client, "Observation", {param: f"{LOINC}|8480-6$gt100"}) == {"normal", "crisis"}
    assert found(client, "Observation", {param: f"{LOINC}|8462-4$gt100"}) == {"crisis", "inverted"}
    # "normal": the systolic component is > 100 and a diastolic component exists, but
    # the diastolic one is 80: the code and the value must be on the SAME component.
    assert found(client, "Observation", {param: f"{LOINC}|8462-4$gt90"}) == {"crisis", "inverted"}
    assert found(client, "Observation", {param: f"{LOINC}|8480-6$lt90"}) == set()
    assert found(client, "Observation", {param: f"{LOINC}|8480-6$lt100"}) == {"inverted"}
    # Two composite criteria ANDed: each may match a different component.
    both = [(param, f"{LOINC}|8480-6$gt150"), (param, f"{LOINC}|8462-4$gt100")]
    assert found(client, "Observation", both) == {"crisis"}
    # The non-composite parameters do not pair: code 8462-4 and a value > 100 anywhere
    pair = [("component-code", f"{LOINC}|8462-4"), ("component-value-quantity", "gt100")]
    assert found(client, "Observation", pair) == {"normal", "crisis", "inverted"}


def test_sort_on_quantity(quantities):
    def values(sort: str) -> list[float | None]:
        bundle = search(quantities, "Observation", {"_sort": sort, "_count": "50"})
        return [e["resource"].get("valueQuantity", {}).get("value") for e in bundle["entry"]]

    ascending = values("value-quantity")
    assert ascending[0] is None or ascending[-1] is None  # "none" sits at one end
    numbers = [v for v in ascending if v is not None]
    assert numbers == sorted(numbers) and numbers[0] == 5.35 and numbers[-1] == 120
    descending = [v for v in values("-value-quantity") if v is not None]
    assert descending == sorted(numbers, reverse=True)
