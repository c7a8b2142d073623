"""Transactions that succeed (http.html#transaction): a transaction-response with one
entry per request entry, in order; references between entries rewritten to the ids the
server assigns, at any depth; the processing order of http.html#trules; conditional
create/update/delete, conditional references, ifMatch, PATCH entries and Prefer.

Failing transactions and malformed bundles are in test_transaction_errors.py."""

from __future__ import annotations

import json
from typing import Any

from fhir_helpers import (
    BASE,
    binary_patch,
    bundle_response,
    create,
    create_with_id,
    entry,
    found,
    ident,
    keys,
    location_key,
    observation,
    patient,
    post_bundle,
    search,
    urn,
)

SYS = "http://hospital.example/mrn"
CLASS_AMB = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}


def read(client, key: str) -> dict[str, Any]:
    r = client.get(f"/fhir/{key}")
    assert r.status_code == 200, (key, r.text)
    return r.json()  # type: ignore[no-any-return]


def written(e: dict[str, Any], status: str) -> tuple[str, str]:
    """Checks one write entry of a transaction-response (http.html#transaction-response:
    "the HTTP status code, and the location and ETag header values"), and the resource
    (Prefer defaults to representation); returns its (type, id)."""
    response = e["response"]
    assert response["status"] == status, e
    t, rid, version = location_key(response["location"])
    assert response["etag"] == f'W/"{version}"', e
    resource = e["resource"]
    assert (resource["resourceType"], resource["id"]) == (t, rid), e
    assert resource["meta"]["versionId"] == version, e
    assert response["lastModified"] == resource["meta"]["lastUpdated"], e
    assert e["fullUrl"] == f"{BASE}/{t}/{rid}", e
    return t, rid


# --- a patient record, references by urn:uuid ---------------------------------------


def test_patient_record(client):
    p, enc, glucose, hba1c, cond, med = (urn() for _ in range(6))
    subject = {"reference": p}
    # Listed so that most references point at a later entry: the outcome "SHALL NOT
    # depend on the order of the resources in the transaction" (http.html#trules).
    request_entries = [
        entry(
            "POST",
            "Observation",
            observation(
                subject=subject,
                encounter={"reference": enc},
                valueQuantity={
                    "value": 6.3,
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                },
            ),
            glucose,
        ),
        entry(
            "POST",
            "MedicationRequest",
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "metformin 500 mg"},
                "subject": subject,
                "encounter": {"reference": enc},
                "reasonReference": [{"reference": cond}],
            },
            med,
        ),
        entry(
            "POST",
            "Encounter",
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": CLASS_AMB,
                "subject": subject,
            },
            enc,
        ),
        entry(
            "POST",
            "Observation",
            observation(
                code={"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                subject=subject,
                encounter={"reference": enc},
            ),
            hba1c,
        ),
        entry(
            "POST",
            "Condition",
            {
                "resourceType": "Condition",
                "code": {"text": "Type 2 diabetes"},
                "subject": subject,
                "encounter": {"reference": enc},
                "evidence": [{"detail": [{"reference": glucose}, {"reference": hba1c}]}],
            },
            cond,
        ),
        entry("POST", "Patient", patient(identifier=[ident(SYS, "rec-1")]), p),
    ]
    r = post_bundle(client, request_entries)
    entries = bundle_response(r)
    # "the server SHALL return a Bundle with type set to transaction-response that
    # contains one entry for each entry in the request, in the same order"
    assert len(entries) == len(request_entries)
    made = [written(e, "201 Created") for e in entries]
    assert [t for t, _ in made] == [e["request"]["url"] for e in request_entries]
    ids = dict(zip((glucose, med, enc, hba1c, cond, p), (f"{t}/{i}" for t, i in made), strict=True))
    assert len(set(ids.values())) == 6
    pid = ids[p].split("/")[1]

    # Every stored reference now is the new Type/id (read back, not just echoed).
    for key in (ids[glucose], ids[hba1c]):
        obs = read(client, key)
        assert obs["subject"] == {"reference": ids[p]}
        assert obs["encounter"] == {"reference": ids[enc]}
    assert read(client, ids[enc])["subject"] == {"reference": ids[p]}
    condition = read(client, ids[cond])
    assert condition["subject"] == {"reference": ids[p]}
    assert condition["evidence"][0]["detail"] == [
        {"reference": ids[glucose]},
        {"reference": ids[hba1c]},
    ]
    medication = read(client, ids[med])
    assert medication["reasonReference"] == [{"reference": ids[cond]}]
    assert "urn:uuid:" not in json.dumps([read(client, k) for k in ids.values()])

    # ... and indexed: searches by the new ids find them.
    assert found(client, "Observation", {"patient": pid}) == {
        ids[glucose].split("/")[1],
        ids[hba1c].split("/")[1],
    }
    assert found(client, "Observation", {"encounter": ids[enc]}) == found(
        client, "Observation", {"subject": ids[p]}
    )
    assert found(client, "Condition", {"evidence-detail": ids[glucose]}) == {
        ids[cond].split("/")[1]
    }
    assert found(client, "MedicationRequest", {"patient": pid}) == {ids[med].split("/")[1]}
    assert found(client, "Encounter", {"patient": pid}) == {ids[enc].split("/")[1]}
    assert found(client, "Observation", {"patient.identifier": f"{SYS}|rec-1"}) == found(
        client, "Observation", {"patient": pid}
    )
    included = search(client, "Observation", {"patient": pid, "_include": "Observation:patient"})
    assert keys(included, "include") == [ids[p]]


def test_references_at_any_depth_and_urn_oid(client):
    p, prac, cond1, cond2 = urn(), "urn:oid:1.2.840.113619.6.197", urn(), urn()
    enc = urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Encounter",
                    {
                        "resourceType": "Encounter",
                        "status": "finished",
                        "class": CLASS_AMB,
                        "subject": {"reference": p, "display": "the patient"},
                        # a list of backbone elements, each with a reference
                        "participant": [
                            {"individual": {"reference": prac}},
                            {"individual": {"reference": "Practitioner/not-in-bundle"}},
                        ],
                        "diagnosis": [
                            {"condition": {"reference": cond1}, "rank": 1},
                            {"condition": {"reference": cond2}, "rank": 2},
                        ],
                        # a Reference inside an extension, inside an extension
                        "extension": [
                            {
                                "url": "http://example.org/ext/outer",
                                "extension": [
                                    {"url": "inner", "valueReference": {"reference": prac}}
                                ],
                            }
                        ],
                        # a contained resource referring to a bundle entry, and the
                        # encounter referring to the contained one (left as "#")
                        "contained": [
                            {
                                "resourceType": "EpisodeOfCare",
                                "id": "eoc",
                                "status": "active",
                                "patient": {"reference": p},
                                "careManager": {"reference": prac},
                            }
                        ],
                        "episodeOfCare": [{"reference": "#eoc"}],
                    },
                    enc,
                ),
                entry(
                    "POST",
                    "Condition",
                    {
                        "resourceType": "Condition",
                        "subject": {"reference": p},
                        "recorder": {"reference": prac},
                    },
                    cond1,
                ),
                entry(
                    "POST",
                    "Condition",
                    {"resourceType": "Condition", "subject": {"reference": p}},
                    cond2,
                ),
                entry("POST", "Practitioner", {"resourceType": "Practitioner"}, prac),
                entry("POST", "Patient", patient(), p),
            ],
        )
    )
    enc_id, c1, c2, prac_id, pid = (written(e, "201 Created")[1] for e in entries)
    stored = read(client, f"Encounter/{enc_id}")
    assert stored["subject"] == {"reference": f"Patient/{pid}", "display": "the patient"}
    assert [x["individual"]["reference"] for x in stored["participant"]] == [
        f"Practitioner/{prac_id}",
        "Practitioner/not-in-bundle",  # "References to resources that are not part of
    ]  # the bundle are left untouched" (http.html#trules)
    assert [d["condition"]["reference"] for d in stored["diagnosis"]] == [
        f"Condition/{c1}",
        f"Condition/{c2}",
    ]
    inner = stored["extension"][0]["extension"][0]
    assert inner["valueReference"] == {"reference": f"Practitioner/{prac_id}"}
    contained = stored["contained"][0]
    assert contained["patient"] == {"reference": f"Patient/{pid}"}
    assert contained["careManager"] == {"reference": f"Practitioner/{prac_id}"}
    assert stored["episodeOfCare"] == [{"reference": "#eoc"}]
    assert read(client, f"Condition/{c1}")["recorder"] == {"reference": f"Practitioner/{prac_id}"}
    # indexed through backbone elements
    assert found(client, "Encounter", {"practitioner": prac_id}) == {enc_id}
    assert found(client, "Encounter", {"diagnosis": f"Condition/{c2}"}) == {enc_id}
    assert found(client, "Condition", {"patient": pid}) == {c1, c2}


def test_links_in_uri_elements_and_narrative_are_rewritten(client):
    # http.html#trules: "Servers SHALL replace all matching links in the bundle, whether
    # they are found in the resource ids, resource references, elements of type uri,
    # url, oid, uuid, and <a href="" & <img src="" in the narrative. Elements of type
    # canonical are not replaced."
    p, photo = urn(), urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Observation",
                    observation(
                        subject={"reference": p},
                        text={
                            "status": "generated",
                            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">Glucose of '
                            f'<a href="{p}">the patient</a> <img src="{photo}"/></div>',
                        },
                        extension=[{"url": "http://example.org/ext/about", "valueUri": p}],
                        meta={"profile": [p]},  # canonical: never replaced
                    ),
                    urn(),
                ),
                entry(
                    "POST",
                    "Patient",
                    patient(photo=[{"contentType": "image/png", "url": photo}]),
                    p,
                ),
                entry(
                    "POST",
                    "Binary",
                    {"resourceType": "Binary", "contentType": "image/png", "data": "iVBORw0KGgo="},
                    photo,
                ),
            ],
        )
    )
    (_, oid), (_, pid), (_, bid) = (written(e, "201 Created") for e in entries)
    obs = read(client, f"Observation/{oid}")
    new_p = {f"Patient/{pid}", f"{BASE}/Patient/{pid}"}
    new_photo = {f"Binary/{bid}", f"{BASE}/Binary/{bid}"}
    assert obs["extension"][0]["valueUri"] in new_p
    div = obs["text"]["div"]
    assert p not in div and photo not in div, div
    assert any(f'href="{x}"' in div for x in new_p), div
    assert any(f'src="{x}"' in div for x in new_photo), div
    assert obs["meta"]["profile"] == [p]
    assert read(client, f"Patient/{pid}")["photo"][0]["url"] in new_photo


def test_absolute_full_url_with_put(client):
    # http.html#trules: "For updates, the server performs a mapping between the fullUrl
    # specified and the local URL the server knows that instance as ... If the server
    # does not have a mapping for the fullUrl, the server ignores the base URL and
    # attempts an update assuming the base is the same as the server base."
    full = "http://example.org/fhir/Patient/123"
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("POST", "Observation", observation(subject={"reference": full}), urn()),
                entry("PUT", "Patient/123", patient(id="123"), full),
            ],
        )
    )
    (_, oid), key = written(entries[0], "201 Created"), written(entries[1], "201 Created")
    assert key == ("Patient", "123")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": "Patient/123"}
    assert found(client, "Observation", {"patient": "123"}) == {oid}

    # the same bundle sent again: now an update of Patient/123, a new Observation
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("PUT", "Patient/123", patient(id="123", gender="other"), full),
                entry("POST", "Observation", observation(subject={"reference": full}), urn()),
            ],
        )
    )
    assert written(entries[0], "200 OK") == ("Patient", "123")
    assert entries[0]["response"]["etag"] == 'W/"2"'
    assert len(found(client, "Observation", {"patient": "123"})) == 2


def test_absolute_full_url_with_post(client):
    # http.html#trules: 'When processing a "POST" (create), the full URL is treated as
    # the id of the resource on the source, and is ignored; the server generates an id'
    # (and references to that full URL are rewritten to it).
    full = "http://other.example/fhir/Patient/src-1"
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("POST", "Patient", patient(id="src-1"), full),
                entry("POST", "Observation", observation(subject={"reference": full}), urn()),
            ],
        )
    )
    _, pid = written(entries[0], "201 Created")
    _, oid = written(entries[1], "201 Created")
    assert pid != "src-1"
    assert client.get("/fhir/Patient/src-1").status_code == 404
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{pid}"}


def test_relative_references_between_restful_full_urls(client):
    # A bundle exported from another server: RESTful fullUrls, relative references.
    # bundle.html#references: a [type]/[id] reference in an entry whose fullUrl is
    # RESTful is resolved by appending it to that fullUrl's [root], so "Patient/src-2"
    # below means the first entry; the server gives it a new id and "SHALL also update
    # any references to that resource in the same bundle" (http.html#trules).
    root = "http://other.example/fhir"
    create_with_id(client, patient(gender="female"), "src-2")  # an unrelated local one
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("POST", "Patient", patient(id="src-2"), f"{root}/Patient/src-2"),
                entry(
                    "POST",
                    "Observation",
                    observation(id="obs-2", subject={"reference": "Patient/src-2"}),
                    f"{root}/Observation/obs-2",
                ),
            ],
        )
    )
    _, pid = written(entries[0], "201 Created")
    _, oid = written(entries[1], "201 Created")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{pid}"}
    assert found(client, "Observation", {"patient": "src-2"}) == set()


def test_absolute_reference_to_this_server_is_indexed(client):
    made = create(client, patient())
    absolute = f"{BASE}/Patient/{made['id']}"
    entries = bundle_response(
        post_bundle(
            client, [entry("POST", "Observation", observation(subject={"reference": absolute}))]
        )
    )
    _, oid = written(entries[0], "201 Created")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": absolute}
    # an absolute reference on this server's base is a reference to Patient/<id>, for a
    # transaction entry as for a plain create
    assert found(client, "Observation", {"patient": made["id"]}) == {oid}


def test_empty_transaction(client):
    # http.html#trules: "It is not an error if the submitted bundle has no resources in it."
    assert bundle_response(post_bundle(client, [])) == []


# --- processing order ------------------------------------------------------------------


def test_get_entries_see_the_writes(client):
    # http.html#trules: DELETE, then POST, then PUT/PATCH, then GET/HEAD, whatever the
    # order of the entries.
    old = create(client, patient(identifier=[ident(SYS, "order")]))
    kept = create_with_id(client, patient(identifier=[ident(SYS, "kept")]), "kept")
    p = urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("GET", f"Patient?identifier={SYS}|order"),
                entry("GET", "Patient/kept"),
                entry("PUT", "Patient/kept", {**kept, "gender": "female"}),
                entry("POST", "Patient", patient(identifier=[ident(SYS, "order")]), p),
                entry("DELETE", f"Patient/{old['id']}"),
            ],
        )
    )
    assert len(entries) == 5
    searched, got, put, posted, deleted = entries
    _, new_id = written(posted, "201 Created")
    assert searched["response"]["status"].startswith("200")
    bundle = searched["resource"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert [e["resource"]["id"] for e in bundle.get("entry", [])] == [new_id]
    assert got["response"]["status"].startswith("200")
    assert got["resource"]["gender"] == "female"
    assert got["resource"]["meta"]["versionId"] == "2"
    assert written(put, "200 OK") == ("Patient", "kept")
    assert deleted["response"]["status"] in ("200 OK", "204 No Content")
    assert client.get(f"/fhir/Patient/{old['id']}").status_code == 410


def test_delete_is_processed_before_a_conditional_create(client):
    # Deletes come before creates (http.html#trules), so a conditional create whose
    # criteria match only the resource this transaction deletes finds nothing: it
    # creates, and references to it point at the new resource, never the deleted one.
    old = create(client, patient(identifier=[ident(SYS, "replace")]))
    p = urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Patient",
                    patient(identifier=[ident(SYS, "replace")], gender="female"),
                    p,
                    ifNoneExist=f"identifier={SYS}|replace",
                ),
                entry("POST", "Observation", observation(subject={"reference": p}), urn()),
                entry("DELETE", f"Patient?identifier={SYS}|replace"),
            ],
        )
    )
    _, new_id = written(entries[0], "201 Created")
    assert new_id != old["id"]
    _, oid = written(entries[1], "201 Created")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{new_id}"}
    assert client.get(f"/fhir/Patient/{old['id']}").status_code == 410
    assert found(client, "Patient", {"identifier": f"{SYS}|replace"}) == {new_id}


# --- conditional create, update, delete ----------------------------------------------


def test_conditional_create(client):
    # http.html#ccreate within a transaction (request.ifNoneExist): no match creates;
    # one match: the existing resource is used (and referenced), nothing written.
    existing = create(client, patient(identifier=[ident(SYS, "c1")]))
    known, unknown = urn(), urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Patient",
                    patient(identifier=[ident(SYS, "c1")], gender="female"),
                    known,
                    ifNoneExist=f"identifier={SYS}|c1",
                ),
                entry(
                    "POST",
                    "Patient",
                    patient(identifier=[ident(SYS, "c2")]),
                    unknown,
                    ifNoneExist=f"identifier={SYS}|c2",
                ),
                entry(
                    "POST",
                    "Observation",
                    observation(subject={"reference": known}, focus=[{"reference": unknown}]),
                    urn(),
                ),
            ],
        )
    )
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert entries[0]["fullUrl"] == f"{BASE}/Patient/{existing['id']}"
    assert entries[0]["resource"] == existing  # untouched: still male, version 1
    _, new_id = written(entries[1], "201 Created")
    _, oid = written(entries[2], "201 Created")
    obs = read(client, f"Observation/{oid}")
    assert obs["subject"] == {"reference": f"Patient/{existing['id']}"}
    assert obs["focus"] == [{"reference": f"Patient/{new_id}"}]
    assert read(client, f"Patient/{existing['id']}") == existing


def test_conditional_update(client):
    # http.html#cond-update: "No matches: The server performs a create interaction; One
    # Match: The server performs the update against the matching resource"
    existing = create(client, patient(identifier=[ident(SYS, "u1")]))
    matched, created = urn(), urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "PUT",
                    f"Patient?identifier={SYS}|u1",
                    patient(identifier=[ident(SYS, "u1")], gender="female"),
                    matched,
                ),
                entry(
                    "PUT",
                    f"Patient?identifier={SYS}|u2",
                    patient(identifier=[ident(SYS, "u2")]),
                    created,
                ),
                entry(
                    "POST",
                    "Observation",
                    observation(subject={"reference": matched}, focus=[{"reference": created}]),
                    urn(),
                ),
            ],
        )
    )
    assert written(entries[0], "200 OK") == ("Patient", existing["id"])
    assert entries[0]["response"]["etag"] == 'W/"2"'
    assert entries[0]["resource"]["gender"] == "female"
    _, new_id = written(entries[1], "201 Created")
    _, oid = written(entries[2], "201 Created")
    obs = read(client, f"Observation/{oid}")
    assert obs["subject"] == {"reference": f"Patient/{existing['id']}"}
    assert obs["focus"] == [{"reference": f"Patient/{new_id}"}]


def test_conditional_delete(client):
    # http.html#3.1.0.7.1: one match is deleted; no match is not an error
    target = create(client, patient(identifier=[ident(SYS, "d1")]))
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("DELETE", f"Patient?identifier={SYS}|d1"),
                entry("DELETE", f"Patient?identifier={SYS}|nobody"),
                entry("DELETE", "Patient/never-existed"),
            ],
        )
    )
    assert entries[0]["response"]["status"] in ("200 OK", "204 No Content"), entries[0]
    for e in entries[1:]:
        assert e["response"]["status"] in ("200 OK", "204 No Content", "404 Not Found"), e
    assert client.get(f"/fhir/Patient/{target['id']}").status_code == 410
    assert entries[0]["response"]["etag"] == 'W/"2"'


def test_conditional_reference_one_match(client):
    # http.html#trules Conditional References: "if there is a single match, the server
    # replaces the search URI with a reference to the matching resource"
    target = create(client, patient(identifier=[ident("http://x", "123")]))
    create(client, patient(identifier=[ident("http://x", "456")]))
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Observation",
                    observation(subject={"reference": "Patient?identifier=http://x|123"}),
                    urn(),
                ),
                entry(
                    "POST",
                    "Condition",
                    {
                        "resourceType": "Condition",
                        "subject": {"reference": "Patient?identifier=http://x|123"},
                    },
                    urn(),
                ),
            ],
        )
    )
    for e in entries:
        t, rid = written(e, "201 Created")
        assert read(client, f"{t}/{rid}")["subject"] == {"reference": f"Patient/{target['id']}"}
    assert len(found(client, "Observation", {"patient": target["id"]})) == 1


def test_conditional_reference_is_resolved_after_the_creates(client):
    # http.html#trules: conditional references are resolved last ("5. Resolve any
    # conditional references"), after the POSTs: a search URI can find a resource this
    # same transaction creates.
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Observation",
                    observation(subject={"reference": f"Patient?identifier={SYS}|same-tx"}),
                    urn(),
                ),
                entry("POST", "Patient", patient(identifier=[ident(SYS, "same-tx")]), urn()),
            ],
        )
    )
    _, oid = written(entries[0], "201 Created")
    _, pid = written(entries[1], "201 Created")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{pid}"}
    assert found(client, "Observation", {"patient": pid}) == {oid}
    version = read(client, f"Observation/{oid}/_history/1")
    assert version["subject"] == {"reference": f"Patient/{pid}"}
    assert entries[0]["resource"] == version


def test_conditional_reference_with_update(client):
    pa = create_with_id(client, patient(identifier=[ident(SYS, "cr")]), "pa")
    obs = create_with_id(client, observation(subject={"reference": "Patient/pa"}), "o1")
    conditional = {"reference": f"Patient?identifier={SYS}|cr"}
    # resolving to what is stored already: no new version (the same as a plain PUT of
    # unchanged content)
    entries = bundle_response(
        post_bundle(client, [entry("PUT", "Observation/o1", {**obs, "subject": conditional})])
    )
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["etag"] == 'W/"1"'
    # the patient it matched is deleted and another created with the identifier: the
    # reference resolves to that one, after the delete and the create
    p = urn()
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("PUT", "Observation/o1", {**obs, "subject": conditional}),
                entry("POST", "Patient", patient(identifier=[ident(SYS, "cr")]), p),
                entry("DELETE", f"Patient/{pa['id']}"),
            ],
        )
    )
    _, new_pid = written(entries[1], "201 Created")
    assert written(entries[0], "200 OK") == ("Observation", "o1")
    assert entries[0]["response"]["etag"] == 'W/"2"'
    assert entries[0]["resource"]["subject"] == {"reference": f"Patient/{new_pid}"}
    assert read(client, "Observation/o1")["subject"] == {"reference": f"Patient/{new_pid}"}
    assert found(client, "Observation", {"patient": new_pid}) == {"o1"}
    assert found(client, "Observation", {"patient": "pa"}) == set()
    history = client.get("/fhir/Observation/o1/_history").json()
    assert [e["resource"]["subject"]["reference"] for e in history["entry"]] == [
        f"Patient/{new_pid}",
        "Patient/pa",
    ]


# --- versions: ifMatch and PATCH -------------------------------------------------------


def test_if_match(client):
    made = create_with_id(client, patient(), "im")
    entries = bundle_response(
        post_bundle(
            client,
            [entry("PUT", "Patient/im", {**made, "gender": "female"}, ifMatch='W/"1"')],
        )
    )
    assert written(entries[0], "200 OK") == ("Patient", "im")
    assert entries[0]["response"]["etag"] == 'W/"2"'
    entries = bundle_response(post_bundle(client, [entry("DELETE", "Patient/im", ifMatch='W/"2"')]))
    assert entries[0]["response"]["status"] in ("200 OK", "204 No Content")
    assert client.get("/fhir/Patient/im").status_code == 410


def test_patch_entries(client):
    made = create_with_id(client, patient(identifier=[ident(SYS, "p1")]), "pt")
    ops = [
        {"op": "test", "path": "/gender", "value": "male"},
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/identifier/-", "value": ident(SYS, "p1-b")},
    ]
    entries = bundle_response(
        post_bundle(
            client,
            [entry("PATCH", "Patient/pt", binary_patch(ops), ifMatch='W/"1"')],
        )
    )
    assert written(entries[0], "200 OK") == ("Patient", "pt")
    assert entries[0]["response"]["etag"] == 'W/"2"'
    stored = read(client, "Patient/pt")
    assert stored["gender"] == "female"
    assert stored["identifier"] == [*made["identifier"], ident(SYS, "p1-b")]
    assert found(client, "Patient", {"identifier": f"{SYS}|p1-b"}) == {"pt"}

    # conditional patch: the criteria find the resource
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry(
                    "PATCH",
                    f"Patient?identifier={SYS}|p1-b",
                    binary_patch([{"op": "replace", "path": "/active", "value": False}]),
                )
            ],
        )
    )
    assert written(entries[0], "200 OK") == ("Patient", "pt")
    assert read(client, "Patient/pt")["active"] is False


def test_patch_entry_references_are_rewritten(client):
    # the patched resource refers to an entry of the bundle: rewritten like any other
    create_with_id(client, patient(), "gp")
    prac = urn()
    ops = [{"op": "add", "path": "/generalPractitioner", "value": [{"reference": prac}]}]
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("PATCH", "Patient/gp", binary_patch(ops)),
                entry("POST", "Practitioner", {"resourceType": "Practitioner"}, prac),
            ],
        )
    )
    _, prac_id = written(entries[1], "201 Created")
    assert written(entries[0], "200 OK") == ("Patient", "gp")
    stored = read(client, "Patient/gp")
    assert stored["generalPractitioner"] == [{"reference": f"Practitioner/{prac_id}"}]
    assert found(client, "Patient", {"general-practitioner": prac_id}) == {"gp"}


def test_conditional_creates_with_the_same_criteria(client):
    # Two entries conditionally creating the same resource (a bundle built from a v2
    # message, each observation naming its performer): the creates are processed one
    # after the other, so the second finds the first, and a single Practitioner exists.
    # http.html#ccreate: conditional create exists to "avoid the risk of two clients
    # creating duplicate resources for the same record".
    criteria = "identifier=http://npi.example|42"
    prac1, prac2 = urn(), urn()
    practitioner = {
        "resourceType": "Practitioner",
        "identifier": [ident("http://npi.example", "42")],
    }
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("POST", "Practitioner", practitioner, prac1, ifNoneExist=criteria),
                entry("POST", "Observation", observation(performer=[{"reference": prac1}])),
                entry("POST", "Practitioner", practitioner, prac2, ifNoneExist=criteria),
                entry("POST", "Observation", observation(performer=[{"reference": prac2}])),
            ],
        )
    )
    statuses = sorted(entries[i]["response"]["status"] for i in (0, 2))
    assert statuses == ["200 OK", "201 Created"], entries
    assert entries[0]["fullUrl"] == entries[2]["fullUrl"]
    pid = entries[0]["fullUrl"].rsplit("/", 1)[1]
    assert found(client, "Practitioner", {}) == {pid}
    assert len(found(client, "Observation", {"performer": f"Practitioner/{pid}"})) == 2


# --- Prefer ----------------------------------------------------------------------------


def test_prefer_minimal_and_representation(client):
    p = urn()

    def bundle() -> list[dict[str, Any]]:
        return [
            entry("POST", "Patient", patient(), p),
            entry("POST", "Observation", observation(subject={"reference": p}), urn()),
        ]

    # http.html#transaction-response: "a resource may be included in the entry, as
    # specified by the Prefer header"
    minimal = bundle_response(post_bundle(client, bundle(), Prefer="return=minimal"))
    for e in minimal:
        assert "resource" not in e, e
        assert e["response"]["status"] == "201 Created"
        t, rid, version = location_key(e["response"]["location"])
        assert e["response"]["etag"] == f'W/"{version}"'
        assert "lastModified" in e["response"]
        read(client, f"{t}/{rid}")
    full = bundle_response(post_bundle(client, bundle(), Prefer="return=representation"))
    for e in full:
        written(e, "201 Created")
    _, pid, _ = location_key(full[0]["response"]["location"])
    assert full[1]["resource"]["subject"] == {"reference": f"Patient/{pid}"}
    outcome = bundle_response(post_bundle(client, bundle(), Prefer="return=OperationOutcome"))
    for e in outcome:
        assert "resource" not in e, e
        assert e["response"]["status"] == "201 Created"
        assert e["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert codes(e) == ["MSG_CREATED"]


def codes(entry: dict) -> list[str]:
    """The operation-outcome codes of an entry's response outcome."""
    return [
        c["code"]
        for issue in entry["response"]["outcome"]["issue"]
        for c in issue.get("details", {}).get("coding", [])
    ]


def test_outcome_says_which_writes_made_no_new_version(client):
    """Bundle.entry.response.outcome: "An OperationOutcome containing hints and warnings
    produced as part of processing this entry". A PUT of the content already stored
    writes no version (it is not coded MSG_UPDATED): an importer re-sending its data
    counts it unchanged without comparing clocks."""
    put = {"method": "PUT", "url": "Patient?identifier=urn:x|o1"}
    first = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "o1"}]}
    changed = {**first, "gender": "female"}

    def send(*resources: dict) -> list[dict]:
        entries = [{"resource": r, "request": put} for r in resources]
        return bundle_response(post_bundle(client, entries, Prefer="return=OperationOutcome"))

    created = send(first)[0]
    assert created["response"]["status"] == "201 Created" and codes(created) == ["MSG_CREATED"]
    same = send(first)[0]
    assert same["response"]["status"] == "200 OK" and codes(same) == []
    assert same["response"]["etag"] == 'W/"1"'
    assert "no change" in same["response"]["outcome"]["issue"][0]["diagnostics"]
    updated = send(changed)[0]
    assert updated["response"]["status"] == "200 OK" and codes(updated) == ["MSG_UPDATED"]
    assert updated["response"]["etag"] == 'W/"2"'


# --- many identifier conditions in one transaction (a migration's bundle) -------------


def test_many_identifier_conditions_resolve_like_single_ones(client):
    """A migration sends hundreds of ``PUT Patient?identifier=s|v`` entries and
    ``Patient?identifier=s|v`` references in one transaction. The server answers them
    with one query per type (service/search.py: match_identifiers); each entry must
    still resolve exactly as it would alone (http.html#cond-update, #trules)."""
    existing = {i: create(client, patient(identifier=[ident(SYS, f"m{i}")])) for i in range(10)}
    twice = [create(client, patient(identifier=[ident(SYS, "dup")])) for _ in range(2)]
    widely = [create(client, patient(identifier=[ident(SYS, "wide")])) for _ in range(9)]
    assert len(twice) == 2 and len(widely) == 9
    entries = [
        entry("PUT", f"Patient?identifier={SYS}|m{i}", patient(identifier=[ident(SYS, f"m{i}")]))
        for i in range(30)
    ] + [
        entry(
            "POST",
            "Observation",
            observation(subject={"reference": f"Patient?identifier={SYS}|m{i}"}),
        )
        for i in range(0, 30, 3)
    ]
    results = bundle_response(post_bundle(client, entries))
    ids = {}
    for i in range(30):
        status = "200 OK" if i < 10 else "201 Created"
        _, ids[i] = written(results[i], status)
        if i < 10:
            assert ids[i] == existing[i]["id"]
    for n, i in enumerate(range(0, 30, 3)):
        _, oid = written(results[30 + n], "201 Created")
        assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{ids[i]}"}
    # two matches: 412 (http.html#cond-update: "Multiple matches ... 412")
    for criteria in (f"{SYS}|dup", f"{SYS}|wide"):  # "wide" exceeds the prefetch list
        r = post_bundle(
            client,
            [entry("PUT", f"Patient?identifier={criteria}", patient(identifier=[ident(SYS, "x")]))],
        )
        assert r.status_code == 412, r.text
    # a conditional reference to several resources fails the transaction
    r = post_bundle(
        client,
        [
            entry(
                "POST",
                "Observation",
                observation(subject={"reference": f"Patient?identifier={SYS}|dup"}),
            )
        ],
    )
    assert r.status_code == 412, r.text
