"""What a search returns: _sort, _count and paging, _total, _summary, _elements,
_include/_revinclude, the self link, POST _search, and the effect of deletes and
updates (search.html#return, #sort, #count, #total, #summary, #elements, #include)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fhir_helpers import (
    BASE,
    app_client,
    create,
    create_with_id,
    entries,
    found,
    has_subsetted_tag,
    ids,
    keys,
    link,
    observation,
    put,
    relative,
    search,
    shared_client,
)


def pages(client, path: str, params: Any) -> list[dict]:
    """Every page of a search, following next links."""
    out = [search(client, path, params)]
    while (nxt := link(out[-1], "next")) is not None:
        r = client.get(relative(nxt))
        assert r.status_code == 200, r.text
        out.append(r.json())
        assert len(out) < 200
    return out


def matches_in_order(client, path: str, params: Any) -> list[str]:
    return [i for page in pages(client, path, params) for i in ids(page)]


# --- _sort -----------------------------------------------------------------------------


def _sortable(client) -> None:
    def person(rid, family=None, given=None, born=None, gender=None, text=None):
        name = {k: v for k, v in (("family", family), ("given", given), ("text", text)) if v}
        resource = {"resourceType": "Patient", "name": [name]}
        if born:
            resource["birthDate"] = born
        if gender:
            resource["gender"] = gender
        create_with_id(client, resource, rid)

    person("s1", "Adams", ["Zed"], "1990-01-01", "male")
    person("s2", "baker", ["Bo"], "1985-06-15", "male")  # lower case sorts among upper
    person("s3", "Ćarter", ["Cy"], "1990-01-01", "female")  # accent ignored: a "c"
    person("s4", text="Nameless Person")  # no family, no birthDate, no gender
    person("s5", "Adams", ["Amy"], "2000-03-03", "female")


@pytest.fixture(scope="module")
def sortable(mongo_url):
    with shared_client(mongo_url) as client:
        _sortable(client)
        yield client


def _without_missing(order: list[str], missing: set[str]) -> list[str]:
    """The order with the resources lacking the sort value removed, after checking that
    those sit together at one end (search.html does not say which)."""
    n = len(missing)
    assert set(order[:n]) == missing or set(order[-n:]) == missing, order
    return [i for i in order if i not in missing]


@pytest.mark.parametrize(
    ("sort", "expected", "missing"),
    [
        # search.html#sort: "When sorting on string search parameters, sorting SHOULD be
        # performed on a case-insensitive basis. Accents may either be ignored or sorted
        # as per realm convention." (Ćarter sorts as Carter here, either way after baker)
        ("family,given", ["s5", "s1", "s2", "s3"], {"s4"}),
        ("-family,-given", ["s3", "s2", "s1", "s5"], {"s4"}),
        ("family,-given", ["s1", "s5", "s2", "s3"], {"s4"}),
        ("-birthdate,family", ["s5", "s1", "s3", "s2"], {"s4"}),
        ("birthdate,-family", ["s2", "s3", "s1", "s5"], {"s4"}),
        ("gender,-family", ["s3", "s5", "s2", "s1"], {"s4"}),  # female < male
        ("-gender,family,given", ["s1", "s2", "s5", "s3"], {"s4"}),
        ("_id", ["s1", "s2", "s3", "s4", "s5"], set()),
        ("-_id", ["s5", "s4", "s3", "s2", "s1"], set()),
    ],
)
def test_sort(sortable, sort, expected, missing):
    order = matches_in_order(sortable, "Patient", {"_sort": sort})
    assert _without_missing(order, missing) == expected
    # the same order when it comes in pages of two, forwards and then backwards
    got = pages(sortable, "Patient", {"_sort": sort, "_count": "2"})
    assert [i for page in got for i in ids(page)] == order
    back = [ids(got[-1])]
    page = got[-1]
    while (prev := link(page, "previous")) is not None:
        r = sortable.get(relative(prev))
        assert r.status_code == 200, r.text
        page = r.json()
        back.insert(0, ids(page))
        assert len(back) <= len(got), back
    assert back == [ids(p) for p in got]


def test_sort_on_repeating_values_uses_the_first_in_sort_order(client):
    # search.html#sort: "the sort is based on the item in the set of multiple parameters
    # that comes earliest in the specified sort order when ordering the returned
    # resources."
    def given(rid, names):
        create_with_id(client, {"resourceType": "Patient", "name": [{"given": names}]}, rid)

    given("many", ["Yan", "Al"])  # earliest ascending: Al; earliest descending: Yan
    given("bea", ["Bea"])
    given("xia", ["Xia"])
    assert matches_in_order(client, "Patient", {"_sort": "given"}) == ["many", "bea", "xia"]
    assert matches_in_order(client, "Patient", {"_sort": "-given"}) == ["many", "xia", "bea"]


def test_sort_on_last_updated(client):
    made = []
    for _ in range(4):
        made.append(create(client, {"resourceType": "Patient"})["id"])
        time.sleep(0.003)  # distinct lastUpdated instants (milliseconds)
    assert matches_in_order(client, "Patient", {"_sort": "_lastUpdated"}) == made
    assert (
        matches_in_order(client, "Patient", {"_sort": "-_lastUpdated", "_count": "3"}) == made[::-1]
    )
    put(client, {"resourceType": "Patient", "id": made[0], "active": True})
    assert matches_in_order(client, "Patient", {"_sort": "-_lastUpdated"})[0] == made[0]


def test_sort_is_in_the_self_link(sortable):
    bundle = search(sortable, "Patient", {"_sort": "-birthdate,family"})
    assert "_sort=-birthdate%2Cfamily" in link(bundle, "self")


# --- _count and paging -----------------------------------------------------------------


def _many(client, n: int, **extra) -> list[str]:
    return [create(client, {"resourceType": "Patient", **extra})["id"] for _ in range(n)]


def test_count_and_paging_see_every_match_once(client):
    made = set(_many(client, 7, gender="male"))
    _many(client, 2, gender="female")
    got = pages(client, "Patient", {"gender": "male", "_count": "3"})
    assert [len(entries(p)) for p in got] == [3, 3, 1]
    seen = [i for p in got for i in ids(p)]
    assert len(seen) == len(set(seen)) and set(seen) == made
    for page in got:
        assert page.get("total", 7) == 7
        # search.html#count: "The server should repeat the original _count parameter in
        # its returned page links"
        for relation in ("self", "next", "previous"):
            if (url := link(page, relation)) is not None:
                assert "_count=3" in url and "gender=male" in url, url
    assert link(got[-1], "next") is None


def test_previous_goes_back(client):
    _many(client, 5)
    first = search(client, "Patient", {"_count": "2"})
    second = client.get(relative(link(first, "next"))).json()
    third = client.get(relative(link(second, "next"))).json()
    assert link(third, "next") is None
    back = client.get(relative(link(third, "previous"))).json()
    assert ids(back) == ids(second)
    back = client.get(relative(link(back, "previous"))).json()
    assert ids(back) == ids(first)
    assert link(back, "previous") is None
    assert len(set(ids(first) + ids(second) + ids(third))) == 5


def test_pages_are_stable_when_resources_are_created_meanwhile(client):
    # search.html#count leaves ongoing updates to the server; this one promises that
    # the resources that existed at the start are each seen exactly once.
    before = set(_many(client, 6, gender="male"))
    page = search(client, "Patient", {"gender": "male", "_count": "2", "_sort": "_id"})
    seen = ids(page)
    while (nxt := link(page, "next")) is not None:
        _many(client, 2, gender="male")  # new matches, sorting anywhere among the ids
        page = client.get(relative(nxt)).json()
        seen += ids(page)
    assert len(seen) == len(set(seen)), seen
    assert before <= set(seen)


def test_paging_past_the_end(client):
    made = _many(client, 3)
    first = search(client, "Patient", {"_count": "2", "_sort": "_id"})
    assert ids(first) == sorted(made)[:2]
    client.delete(f"/fhir/Patient/{sorted(made)[2]}")  # the only one left for page 2
    last = client.get(relative(link(first, "next")))
    assert last.status_code == 200, last.text
    assert entries(last.json()) == [] and link(last.json(), "next") is None


def test_configured_maximum_count(settings):
    # search.html#count: "Servers SHALL NOT return more resources than requested ...
    # but may return less than the client requested."
    with app_client(settings, search_max_count=4, search_default_count=3) as c:
        made = set(_many(c, 9))
        assert len(entries(search(c, "Patient"))) == 3  # the default page size
        got = pages(c, "Patient", {"_count": "100"})
        assert all(len(entries(p)) <= 4 for p in got)
        assert {i for p in got for i in ids(p)} == made
        assert len(entries(search(c, "Patient", {"_count": "2"}))) == 2


def test_count_zero_is_a_count(client):
    # search.html#count: "if _count has the value 0, this shall be treated the same as
    # _summary=count: the server returns a bundle that reports the total number of
    # resources that match in Bundle.total, but with no entries, and no prev/next/last
    # links."
    _many(client, 3)
    bundle = search(client, "Patient", {"_count": "0"})
    assert bundle["total"] == 3
    assert not bundle.get("entry")
    assert {x["relation"] for x in bundle["link"]} <= {"self", "first"}


# --- _total and _summary=count ---------------------------------------------------------


def test_total(client):
    _many(client, 5, gender="male")
    _many(client, 1, gender="female")
    accurate = search(client, "Patient", {"gender": "male", "_count": "2", "_total": "accurate"})
    # search.html#total: Bundle.total is "the number of resources that match the search
    # parameters", not how many this page holds
    assert accurate["total"] == 5 and len(entries(accurate)) == 2
    # "none: There is no need to populate the total count" (the element stays optional)
    none = search(client, "Patient", {"gender": "male", "_count": "2", "_total": "none"})
    assert none.get("total", 5) == 5 and len(entries(none)) == 2
    assert "_total=none" in link(none, "self")


def test_summary_count(client):
    _many(client, 4, gender="male")
    _many(client, 2, gender="female")
    bundle = search(client, "Patient", {"gender": "male", "_summary": "count"})
    assert bundle["total"] == 4
    assert not bundle.get("entry")
    assert search(client, "Observation", {"_summary": "count"})["total"] == 0


# --- _summary and _elements ------------------------------------------------------------


def test_summary_true(client):
    create_with_id(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": "Summary"}],
            "gender": "female",
            "maritalStatus": {"text": "married"},  # not a summary element
            "photo": [{"title": "portrait"}],  # not a summary element
        },
        "p",
    )
    bundle = search(client, "Patient", {"_summary": "true"})
    resource = entries(bundle)[0]["resource"]
    assert resource["name"] == [{"family": "Summary"}] and resource["gender"] == "female"
    assert "maritalStatus" not in resource and "photo" not in resource
    # search.html#summary: "Servers SHOULD mark the resources with the tag SUBSETTED"
    assert has_subsetted_tag(resource)


def test_elements(client):
    create_with_id(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": "E"}],
            "gender": "male",
            "birthDate": "2000-01-01",
        },
        "p",
    )
    create_with_id(client, observation(subject={"reference": "Patient/p"}), "o")
    bundle = search(client, "Patient", {"_elements": "name,gender"})
    resource = entries(bundle)[0]["resource"]
    assert resource["name"] == [{"family": "E"}] and resource["gender"] == "male"
    assert "birthDate" not in resource and resource["id"] == "p"
    assert has_subsetted_tag(resource)
    # search.html#elements: "The list of elements does not apply to included resources."
    bundle = search(
        client, "Observation", {"_elements": "status", "_include": "Observation:subject"}
    )
    match = entries(bundle)[0]["resource"]
    assert "subject" not in match and match["status"] == "final" and has_subsetted_tag(match)
    included = entries(bundle, "include")[0]["resource"]
    assert included["birthDate"] == "2000-01-01" and not has_subsetted_tag(included)


# --- _include / _revinclude ------------------------------------------------------------


def _medication_world(client) -> None:
    def put_(resource, rid):
        create_with_id(client, resource, rid)

    put_({"resourceType": "Organization", "name": "Grand"}, "grand")
    put_(
        {
            "resourceType": "Organization",
            "name": "Parent",
            "partOf": {"reference": "Organization/grand"},
        },
        "parent",
    )
    put_(
        {
            "resourceType": "Organization",
            "name": "Child",
            "partOf": {"reference": "Organization/parent"},
        },
        "child",
    )
    put_(
        {"resourceType": "Patient", "managingOrganization": {"reference": "Organization/child"}},
        "pat",
    )
    put_({"resourceType": "Practitioner", "name": [{"family": "Who"}]}, "doc")
    put_(
        {
            "resourceType": "PractitionerRole",
            "practitioner": {"reference": "Practitioner/doc"},
            "organization": {"reference": "Organization/parent"},
        },
        "role",
    )
    put_({"resourceType": "Medication", "code": {"text": "aspirin"}}, "aspirin")
    put_({"resourceType": "Medication", "code": {"text": "gone"}}, "gone")

    def request(rid, medication, **extra):
        put_(
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationReference": {"reference": f"Medication/{medication}"},
                "subject": {"reference": "Patient/pat"},
                **extra,
            },
            rid,
        )

    request("mr1", "aspirin", requester={"reference": "PractitionerRole/role"})
    request("mr2", "aspirin")
    request("mr3", "gone")
    request("mr4", "nowhere")  # a reference to nothing: the include is just omitted
    assert client.delete("/fhir/Medication/gone").status_code in (200, 204)
    put_(observation(subject={"reference": "Patient/pat"}), "obs1")
    put_(observation(subject={"reference": "Patient/pat"}), "obs2")
    put_(observation(subject={"reference": "Patient/other"}), "obs3")
    put_(observation(subject={"reference": "Patient/pat"}), "obs-deleted")
    assert client.delete("/fhir/Observation/obs-deleted").status_code in (200, 204)
    put_({"resourceType": "Condition", "subject": {"reference": "Patient/pat"}}, "cond")
    put_(
        {
            "resourceType": "Provenance",
            "target": [{"reference": "Condition/cond"}],
            "recorded": "2020-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/doc"}}],
        },
        "prov",
    )


@pytest.fixture(scope="module")
def meds(mongo_url):
    with shared_client(mongo_url) as client:
        _medication_world(client)
        yield client


def included(bundle) -> set[str]:
    return set(keys(bundle, "include"))


def test_include(meds):
    bundle = search(
        meds, "MedicationRequest", {"_id": "mr1", "_include": "MedicationRequest:medication"}
    )
    assert keys(bundle) == ["MedicationRequest/mr1"]
    # search.html#include: included resources get entry.search.mode "include"
    assert keys(bundle, "include") == ["Medication/aspirin"]
    assert bundle["total"] == 1  # includes are not counted


def test_include_target_type_and_wildcard(meds):
    params = {"_id": "mr1", "_include": "MedicationRequest:requester:PractitionerRole"}
    assert included(search(meds, "MedicationRequest", params)) == {"PractitionerRole/role"}
    params = {"_id": "mr1", "_include": "MedicationRequest:requester:Practitioner"}
    assert included(search(meds, "MedicationRequest", params)) == set()
    # "the wild card '*' ... indicating that any search parameter of type=reference be
    # included"
    params = {"_id": "mr1", "_include": "MedicationRequest:*"}
    assert included(search(meds, "MedicationRequest", params)) == {
        "Medication/aspirin",
        "Patient/pat",
        "PractitionerRole/role",
    }


def test_include_iterate(meds):
    # search.html#include: "The inclusion process can be iterative, if (and only if) the
    # modifier :iterate is included."
    params = [
        ("_id", "mr2"),
        ("_include", "MedicationRequest:patient"),
        ("_include:iterate", "Patient:organization"),
        ("_include:iterate", "Organization:partof"),
    ]
    assert included(search(meds, "MedicationRequest", params)) == {
        "Patient/pat",
        "Organization/child",
        "Organization/parent",
        "Organization/grand",
    }
    params = [
        ("_id", "mr1"),
        ("_include", "MedicationRequest:requester"),
        ("_include:iterate", "PractitionerRole:practitioner"),
        ("_include:iterate", "PractitionerRole:organization"),
        ("_include:iterate", "Organization:partof"),
    ]
    assert included(search(meds, "MedicationRequest", params)) == {
        "PractitionerRole/role",
        "Practitioner/doc",
        "Organization/parent",
        "Organization/grand",
    }
    # without :iterate the includes stop at the matches
    params = [("_id", "child"), ("_include", "Organization:partof")]
    assert included(search(meds, "Organization", params)) == {"Organization/parent"}
    params = [("_id", "child"), ("_include:iterate", "Organization:partof")]
    assert included(search(meds, "Organization", params)) == {
        "Organization/parent",
        "Organization/grand",
    }


def test_a_match_that_is_also_included_appears_once(meds):
    # search.html#entries (Bundle): "entries are unique": parent is a match and the
    # partof target of child.
    params = [("_id", "child,parent"), ("_include", "Organization:partof")]
    bundle = search(meds, "Organization", params)
    assert sorted(keys(bundle)) == ["Organization/child", "Organization/parent"]
    assert keys(bundle, "include") == ["Organization/grand"]
    every = keys(bundle, None)
    assert len(every) == len(set(every)) == 3


def test_deleted_and_missing_targets_are_not_included(meds):
    params = {"_id": "mr3,mr4", "_include": "MedicationRequest:medication"}
    bundle = search(meds, "MedicationRequest", params)
    assert sorted(keys(bundle)) == ["MedicationRequest/mr3", "MedicationRequest/mr4"]
    assert included(bundle) == set()


def test_include_on_every_page(meds):
    # search.html#Paging: "all _include resources that are related to the primary
    # resources returned for the page SHOULD also be returned as part of that same page"
    params = {"_id": "mr1,mr2", "_include": "MedicationRequest:medication", "_count": "1"}
    got = pages(meds, "MedicationRequest", params)
    assert len(got) == 2
    for page in got:
        assert len(entries(page)) == 1  # _count counts matches only
        assert keys(page, "include") == ["Medication/aspirin"]


def test_revinclude(meds):
    bundle = search(meds, "Patient", {"_id": "pat", "_revinclude": "Observation:subject"})
    assert keys(bundle) == ["Patient/pat"]
    # obs3 refers to another patient; obs-deleted is deleted
    assert included(bundle) == {"Observation/obs1", "Observation/obs2"}
    bundle = search(meds, "Condition", {"_revinclude": "Provenance:target"})
    assert keys(bundle) == ["Condition/cond"] and included(bundle) == {"Provenance/prov"}
    params = [
        ("_id", "pat"),
        ("_revinclude", "Observation:subject"),
        ("_revinclude", "Condition:patient"),
        ("_include", "Patient:organization"),
    ]
    assert included(search(meds, "Patient", params)) == {
        "Observation/obs1",
        "Observation/obs2",
        "Condition/cond",
        "Organization/child",
    }


def test_revinclude_iterate(meds):
    params = [
        ("_id", "pat"),
        ("_revinclude", "Condition:subject"),
        ("_revinclude:iterate", "Provenance:target"),
    ]
    assert included(search(meds, "Patient", params)) == {"Condition/cond", "Provenance/prov"}


# --- deletes and updates ---------------------------------------------------------------


def test_deleted_resources_never_appear(client):
    """A search leaves out ``del: false`` when a condition requires an index value (a
    deleted resource keeps none; search.compile.excludes_deleted): each kind of
    condition, positive and negative, still never finds the deleted one."""
    ghost = {
        "resourceType": "Patient",
        "name": [{"family": "Ghost"}],
        "gender": "male",
        "birthDate": "1950-02-03",
    }
    create_with_id(client, ghost, "ghost")
    create_with_id(client, {"resourceType": "Patient", "name": [{"family": "Ghostly"}]}, "alive")
    create_with_id(client, observation(subject={"reference": "Patient/ghost"}), "haunt")
    create_with_id(client, observation(subject={"reference": "Patient/alive"}), "o-deleted")
    assert found(client, "Patient", {"family": "ghost"}) == {"ghost", "alive"}
    assert client.delete("/fhir/Patient/ghost").status_code in (200, 204)
    assert client.delete("/fhir/Observation/o-deleted").status_code in (200, 204)
    assert found(client, "Patient", {"family": "ghost"}) == {"alive"}
    assert found(client, "Patient", {"_id": "ghost"}) == set()
    for negative in ({"gender:missing": "true"}, {"birthdate:missing": "true"}):
        assert found(client, "Patient", negative) == {"alive"}, negative
    for positive in (
        {"gender": "male"},
        {"gender:not": "female"},
        {"birthdate": "ge1900"},
        {"birthdate": "1950-02-03"},
        {"family:exact": "Ghost"},
        {"name:missing": "false"},
        {"family": "ghost,nobody"},
    ):
        assert "ghost" not in found(client, "Patient", positive), positive
    counted = search(client, "Patient", {"family": "ghost", "_total": "accurate"})
    assert counted["total"] == 1
    assert search(client, "Patient", {"gender": "male", "_summary": "count"})["total"] == 0
    assert found(client, "Patient", {}) == {"alive"}
    assert search(client, "Patient", {"_summary": "count"})["total"] == 1
    assert found(client, "Observation", {"subject.family": "ghost"}) == set()
    assert found(client, "Patient", {"_has:Observation:subject:status": "final"}) == set()
    assert found(client, "Patient/alive/Observation", {}) == set()
    assert set(keys(search(client, "", {"_type": "Patient,Observation"}))) == {
        "Patient/alive",
        "Observation/haunt",
    }
    bundle = search(client, "Observation", {"_id": "haunt", "_include": "Observation:subject"})
    assert keys(bundle, "include") == []


def test_search_after_update_sees_new_values_only(client):
    create_with_id(
        client, {"resourceType": "Patient", "name": [{"family": "Old"}], "gender": "male"}, "p"
    )
    assert found(client, "Patient", {"family": "old"}) == {"p"}
    r = put(client, {"resourceType": "Patient", "id": "p", "name": [{"family": "New"}]})
    assert r.status_code == 200, r.text
    assert found(client, "Patient", {"family": "old"}) == set()
    assert found(client, "Patient", {"family": "new"}) == {"p"}
    assert found(client, "Patient", {"gender": "male"}) == set()
    assert found(client, "Patient", {"gender:missing": "true"}) == {"p"}
    bundle = search(client, "Patient", {"family": "new"})
    assert entries(bundle)[0]["resource"]["meta"]["versionId"] == "2"


# --- the bundle itself -----------------------------------------------------------------


def test_bundle_entries_and_self_link(client):
    create_with_id(client, {"resourceType": "Patient", "gender": "male"}, "p")
    bundle = search(client, "Patient", {"gender": "male"})
    entry = entries(bundle)[0]
    assert entry["fullUrl"] == f"{BASE}/Patient/p"
    assert entry["search"]["mode"] == "match"
    # search.html#conformance: "the server SHALL return the parameters that were
    # actually used to process the search ... encoded in the self link"
    assert link(bundle, "self") == f"{BASE}/Patient?gender=male"


def test_post_search_is_a_get_search(client):
    create_with_id(
        client, {"resourceType": "Patient", "gender": "male", "name": [{"family": "Post"}]}, "p"
    )
    create_with_id(client, {"resourceType": "Patient", "gender": "female"}, "q")
    r = client.post(
        "/fhir/Patient/_search",
        content="gender=male&family=po",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert ids(r.json()) == ["p"]
    # search.html#selflink (R4 #conformance): the self link is a GET with the parameters
    self_link = link(r.json(), "self")
    assert self_link.startswith(f"{BASE}/Patient?") and "gender=male" in self_link
    # parameters in the URL and in the body together
    r = client.post(
        "/fhir/Patient/_search?gender=male",
        content="family=nobody",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and ids(r.json()) == []
    r = client.post(
        "/fhir/_search?_type=Patient",
        content="gender=female",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and keys(r.json()) == ["Patient/q"]


def test_empty_parameters_are_ignored(client):
    # search.html#errors: "Note: Empty parameters are not an error - they are just
    # ignored by the server."
    create_with_id(client, {"resourceType": "Patient", "gender": "male"}, "p")
    assert found(client, "Patient", {"gender": ""}) == {"p"}
    assert found(client, "Patient", [("family", ""), ("gender", "male")]) == {"p"}
