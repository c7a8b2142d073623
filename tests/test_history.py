"""The history interaction (http.html#history): instance, type and system level,
paging, _since, _at, _summary=count and parameter errors."""

from __future__ import annotations

import time

import pytest
from fhir_helpers import (
    BASE,
    all_pages,
    assert_outcome,
    create,
    create_with_id,
    entry_versions,
    expressions,
    link,
    observation,
    patch,
    patient,
    put,
    relative,
    shipped_resources,
)


def history(client, url: str, **params: str) -> dict:
    r = client.get(url, params=params) if params else client.get(url)  # {} drops ?query
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "history"
    return body  # type: ignore[no-any-return]


def make_versions(client, count: int) -> str:
    """A patient with ``count`` versions (one create and count-1 updates)."""
    created = create(client, patient(multipleBirthInteger=1))
    for n in range(2, count + 1):
        r = put(client, {**created, "multipleBirthInteger": n})
        assert r.status_code == 200
    return created["id"]  # type: ignore[no-any-return]


# --- contents --------------------------------------------------------------------------


def test_instance_history_records_every_interaction(client):
    created = create(client, patient())
    rid = created["id"]
    assert put(client, {**created, "gender": "female"}).status_code == 200
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    assert patch(client, f"/fhir/Patient/{rid}", ops).status_code == 200
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 200
    revived = put(client, {**created, "gender": "unknown"})
    assert revived.status_code in (200, 201)

    bundle = history(client, f"/fhir/Patient/{rid}/_history")
    assert bundle["total"] == 5
    entries = bundle["entry"]
    # "sorted with oldest versions last, and including deleted resources"
    assert [e["response"]["etag"] for e in entries] == [f'W/"{v}"' for v in (5, 4, 3, 2, 1)]
    assert [e["request"]["method"] for e in entries] == ["PUT", "DELETE", "PATCH", "PUT", "POST"]
    assert [e["request"]["url"] for e in entries] == [f"Patient/{rid}"] * 4 + ["Patient"]
    for e in entries:
        assert e["fullUrl"] == f"{BASE}/Patient/{rid}"
        assert "lastModified" in e["response"]
    statuses = [e["response"]["status"].split()[0] for e in entries]
    assert statuses[1] in ("200", "204")  # the delete
    assert statuses[2:] == ["200", "200", "201"]
    assert statuses[0] == str(revived.status_code)  # what the revival answered
    # A deletion is "a special kind of history entry that has no content".
    assert "resource" not in entries[1]
    genders = [e["resource"]["gender"] for i, e in enumerate(entries) if i != 1]
    assert genders == ["unknown", "other", "female", "male"]
    for e in entries:
        if "resource" in e:
            assert f'W/"{e["resource"]["meta"]["versionId"]}"' == e["response"]["etag"]
    last_modified = [e["response"]["lastModified"] for e in entries]
    assert last_modified == sorted(last_modified, reverse=True)


def test_update_as_create_is_recorded_as_created(client):
    # Bundle.entry.response.status is "the status code returned by processing this
    # entry": a PUT that created the resource answered 201.
    create_with_id(client, patient(), "upserted")
    entry = history(client, "/fhir/Patient/upserted/_history")["entry"][0]
    assert entry["request"]["method"] == "PUT"
    assert entry["response"]["status"].startswith("201")


def test_type_and_system_history(client):
    p1 = create(client, patient())
    p2 = create(client, patient(gender="female"))
    put(client, {**p1, "gender": "other"})
    obs = create(client, observation())

    patients = history(client, "/fhir/Patient/_history")
    urls = [e["fullUrl"] for e in patients["entry"]]
    assert sorted(urls) == sorted(
        [f"{BASE}/Patient/{p1['id']}"] * 2 + [f"{BASE}/Patient/{p2['id']}"]
    )
    assert urls[0] == f"{BASE}/Patient/{p1['id']}"  # the latest write first

    observations = history(client, "/fhir/Observation/_history")
    assert [e["fullUrl"] for e in observations["entry"]] == [f"{BASE}/Observation/{obs['id']}"]
    assert "entry" not in history(client, "/fhir/Invoice/_history")

    system = history(client, "/fhir/_history")
    assert len(system["entry"]) == 4 + len(shipped_resources())  # + the app's definitions
    assert system["entry"][0]["fullUrl"] == f"{BASE}/Observation/{obs['id']}"


def test_history_of_unknown_or_deleted_instance(client):
    assert_outcome(client.get("/fhir/Patient/nobody/_history"), 404)
    rid = create(client, patient())["id"]
    client.delete(f"/fhir/Patient/{rid}")
    bundle = history(client, f"/fhir/Patient/{rid}/_history")
    assert [e["request"]["method"] for e in bundle["entry"]] == ["DELETE", "POST"]


# --- paging ----------------------------------------------------------------------------


def test_paging_visits_every_version_once(client):
    rid = make_versions(client, 12)
    pages = all_pages(client, f"/fhir/Patient/{rid}/_history", _count="5")
    assert [len(p["entry"]) for p in pages] == [5, 5, 2]
    seen = [e["resource"]["meta"]["versionId"] for p in pages for e in p["entry"]]
    assert seen == [str(v) for v in range(12, 0, -1)]
    assert link(pages[0], "previous") is None
    assert link(pages[-1], "next") is None
    for p in pages:
        assert p["total"] == 12
        assert link(p, "self") is not None

    # previous goes back to exactly the page before; first goes to the start
    back = client.get(relative(link(pages[2], "previous"))).json()
    assert entry_versions(back) == entry_versions(pages[1])
    back = client.get(relative(link(pages[1], "previous"))).json()
    assert entry_versions(back) == entry_versions(pages[0])
    first = client.get(relative(link(pages[2], "first"))).json()
    assert entry_versions(first) == entry_versions(pages[0])


def test_paging_is_stable_while_versions_are_written(client):
    ids = [make_versions(client, 4) for _ in range(3)]  # 12 versions
    snapshot = entry_versions(history(client, "/fhir/Patient/_history", _count="100"))
    assert len(snapshot) == 12

    page = history(client, "/fhir/Patient/_history", _count="4")
    got = entry_versions(page)
    while link(page, "next"):
        # new versions between page fetches must not shift or repeat later pages
        for rid in ids:
            current = client.get(f"/fhir/Patient/{rid}").json()
            put(
                client, {**current, "gender": "female" if current["gender"] != "female" else "male"}
            )
        create(client, patient())
        page = client.get(relative(link(page, "next"))).json()
        got += entry_versions(page)
    assert got == snapshot


def test_count_larger_than_everything_and_zero(client):
    rid = make_versions(client, 3)
    bundle = history(client, f"/fhir/Patient/{rid}/_history", _count="1000000")
    assert len(bundle["entry"]) == 3
    assert link(bundle, "next") is None
    bundle = history(client, f"/fhir/Patient/{rid}/_history", _count="0")
    assert "entry" not in bundle
    assert bundle["total"] == 3


# --- _since / _at / _summary=count ------------------------------------------------------


def test_since_is_inclusive(client):
    a = create(client, patient())
    time.sleep(0.01)
    b = create(client, patient(gender="female"))
    # "_since: Only include resource versions that were created at or after the given
    # instant in time"
    since_b = history(client, "/fhir/Patient/_history", _since=b["meta"]["lastUpdated"])
    assert [e["resource"]["id"] for e in since_b["entry"]] == [b["id"]]
    since_a = history(client, "/fhir/Patient/_history", _since=a["meta"]["lastUpdated"])
    assert [e["resource"]["id"] for e in since_a["entry"]] == [b["id"], a["id"]]
    future = history(client, "/fhir/Patient/_history", _since="2999-01-01T00:00:00Z")
    assert "entry" not in future
    # zone offsets, percent-encoded or (a common client slip) sent as a raw '+'
    for query in ("_since=2999-01-01T00:00:00%2B01:00", "_since=2999-01-01T00:00:00+01:00"):
        assert "entry" not in history(client, f"/fhir/Patient/_history?{query}")
    r = client.get("/fhir/Patient/_history?_since=2000-01-01T00:00:00-05:00")
    assert len(r.json()["entry"]) == 2


def test_at_returns_versions_current_in_the_period(client):
    # "_at: Only include resource versions that were current at some point during the
    # time period specified in the date time value"
    created = create(client, patient(multipleBirthInteger=1))
    rid = created["id"]
    stamps = [created["meta"]["lastUpdated"]]
    for n in (2, 3):
        time.sleep(0.01)
        stamps.append(
            put(client, {**created, "multipleBirthInteger": n}).json()["meta"]["lastUpdated"]
        )
    url = f"/fhir/Patient/{rid}/_history"

    def versions_at(value: str) -> list[str]:
        bundle = history(client, url, _at=value)
        return [e["resource"]["meta"]["versionId"] for e in bundle.get("entry", [])]

    assert versions_at(stamps[0]) == ["1"]
    assert versions_at(stamps[1]) == ["2"]
    assert versions_at(stamps[2]) == ["3"]
    assert versions_at(stamps[0][:4]) == ["3", "2", "1"]  # the whole year
    assert versions_at("1999") == []
    assert versions_at("2999-01-01") == ["3"]  # still current then


def test_summary_count(client):
    rid = make_versions(client, 3)
    create(client, patient())
    bundle = history(client, f"/fhir/Patient/{rid}/_history", _summary="count")
    assert bundle["total"] == 3
    assert "entry" not in bundle
    assert history(client, "/fhir/Patient/_history", _summary="count")["total"] == 4
    shipped = len(shipped_resources())  # the definitions the app installs at start-up
    assert history(client, "/fhir/_history", _summary="count")["total"] == 4 + shipped


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_count", "abc"),
        ("_count", "-1"),
        ("_count", "1.5"),
        ("_count", ""),
        ("_since", "yesterday"),
        ("_since", "2020-13-01"),
        ("_at", "soon"),
        ("_cursor", "!!!"),
        ("_cursor", "YWJj"),  # base64 of "abc": decodes, but is no cursor
        ("_summary", "nope"),
    ],
)
def test_bad_parameters_are_400(client, name, value):
    rid = make_versions(client, 1)
    for url in (f"/fhir/Patient/{rid}/_history", "/fhir/Patient/_history", "/fhir/_history"):
        issues = assert_outcome(client.get(url, params={name: value}), 400)
        assert name in expressions(issues), issues


def test_unknown_parameter_is_400_unless_lenient(client):
    rid = make_versions(client, 2)
    url = f"/fhir/Patient/{rid}/_history"
    issues = assert_outcome(client.get(url, params={"foo": "bar"}), 400)
    assert "foo" in expressions(issues)
    # search.html#errors: with Prefer: handling=lenient unknown parameters are ignored
    r = client.get(url, params={"foo": "bar"}, headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200
    assert len(r.json()["entry"]) == 2
