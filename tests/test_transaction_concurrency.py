"""Concurrent transactions on the same resources (the TestClient runs requests from
several threads concurrently on the app's event loop): no lost update, no partial
write. A transaction is all or nothing (http.html#trules), and If-Match makes an update
conditional on the version it was based on (http.html#concurrency)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fhir_helpers import (
    all_pages,
    binary_patch,
    bundle_response,
    create_with_id,
    entry,
    found,
    ident,
    observation,
    patient,
    post_bundle,
    urn,
)

THREADS = 12
TAG = "http://example.org/attempt"


def versions_in_history(client, key: str) -> list[int]:
    pages = all_pages(client, f"/fhir/{key}/_history")
    return [int(e["resource"]["meta"]["versionId"]) for p in pages for e in p.get("entry", [])]


def attempt_observation(marker: str) -> dict[str, Any]:
    return observation(identifier=[ident(TAG, marker)], subject={"reference": "Patient/shared"})


def test_if_match_updates_lose_nothing(client):
    # Every thread reads the patient, then sends a transaction that appends its marker
    # to Patient.identifier with If-Match on the version it read, and creates an
    # Observation. Losers (412) retry from a fresh read. Each attempt's Observation
    # carries the attempt's own identifier, so a failed attempt's trace would show.
    create_with_id(client, patient(identifier=[ident(TAG, "seed")]), "shared")

    def worker(n: int) -> tuple[list[str], list[str]]:
        won, lost = [], []
        for attempt in range(200):
            marker = f"t{n}-a{attempt}"
            current = client.get("/fhir/Patient/shared")
            assert current.status_code == 200, current.text
            version = current.json()["meta"]["versionId"]
            ops = [{"op": "add", "path": "/identifier/-", "value": ident(TAG, marker)}]
            r = post_bundle(
                client,
                [
                    entry("PATCH", "Patient/shared", binary_patch(ops), ifMatch=f'W/"{version}"'),
                    entry("POST", "Observation", attempt_observation(marker), urn()),
                ],
            )
            if r.status_code == 200:
                bundle_response(r)
                won.append(marker)
                return won, lost
            assert r.status_code == 412, r.text
            assert r.json()["resourceType"] == "OperationOutcome"
            lost.append(marker)
        raise AssertionError(f"thread {n} never won")

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    won = [m for w, _ in results for m in w]
    lost = [m for _, failures in results for m in failures]
    assert len(won) == THREADS
    assert lost, "no transaction ever lost: the threads did not contend"

    final = client.get("/fhir/Patient/shared").json()
    # no lost update: every winner's marker is there, once; no loser's is
    markers = [i["value"] for i in final["identifier"]]
    assert sorted(markers) == sorted(["seed", *won])
    assert final["meta"]["versionId"] == str(1 + len(won))
    # history lists each version exactly once
    assert sorted(versions_in_history(client, "Patient/shared")) == list(range(1, len(won) + 2))
    # no partial write: the winners' Observations exist, the losers' do not
    for marker in won:
        assert len(found(client, "Observation", {"identifier": f"{TAG}|{marker}"})) == 1
    for marker in lost:
        assert found(client, "Observation", {"identifier": f"{TAG}|{marker}"}) == set()
    assert len(found(client, "Observation", {"patient": "shared"})) == len(won)


def test_unconditional_appends_are_serialised(client):
    # Without If-Match, each transaction's PATCH applies to whatever version is current
    # when it commits: all succeed and every append survives.
    create_with_id(client, patient(identifier=[ident(TAG, "seed")]), "shared")

    def worker(n: int) -> int:
        ops = [{"op": "add", "path": "/identifier/-", "value": ident(TAG, f"t{n}")}]
        r = post_bundle(
            client,
            [
                entry("POST", "Observation", attempt_observation(f"t{n}"), urn()),
                entry("PATCH", "Patient/shared", binary_patch(ops)),
            ],
        )
        entries = bundle_response(r)
        return int(entries[1]["response"]["etag"].strip('W/"'))

    with ThreadPoolExecutor(THREADS) as pool:
        versions = list(pool.map(worker, range(THREADS)))
    # each transaction made its own version
    assert sorted(versions) == list(range(2, THREADS + 2))
    final = client.get("/fhir/Patient/shared").json()
    assert sorted(i["value"] for i in final["identifier"]) == sorted(
        ["seed", *(f"t{n}" for n in range(THREADS))]
    )
    assert sorted(versions_in_history(client, "Patient/shared")) == list(range(1, THREADS + 2))
    assert len(found(client, "Observation", {"patient": "shared"})) == THREADS


def test_concurrent_conditional_creates_make_one_resource(client):
    # Every transaction conditionally creates the same Patient and an Observation
    # referring to it: exactly one Patient exists and every Observation refers to it.
    criteria = "identifier=http://hospital.example/mrn|race"

    def worker(n: int) -> tuple[str, str]:
        p = urn()
        r = post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Observation",
                    observation(identifier=[ident(TAG, f"t{n}")], subject={"reference": p}),
                    urn(),
                ),
                entry(
                    "POST",
                    "Patient",
                    patient(identifier=[ident("http://hospital.example/mrn", "race")]),
                    p,
                    ifNoneExist=criteria,
                ),
            ],
        )
        entries = bundle_response(r)
        return entries[1]["response"]["status"], entries[1]["fullUrl"].rsplit("/", 1)[1]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    statuses = sorted(s for s, _ in results)
    assert statuses == ["200 OK"] * (THREADS - 1) + ["201 Created"]
    ids = {i for _, i in results}
    assert len(ids) == 1
    (pid,) = ids
    assert found(client, "Patient", {"identifier": "http://hospital.example/mrn|race"}) == {pid}
    assert len(found(client, "Observation", {"patient": pid})) == THREADS
