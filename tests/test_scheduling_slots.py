"""Slots generated from availability (issue 12), over HTTP against `fhir-server serve` in
its embedded default: no broker, so its own worker child (MongoDB transport) runs the
slot beat and the generation task.

R4 schedule.html: "Schedule ... A container for slots of time that may be available for
booking appointments"; Schedule.planningHorizon: "The period of time that the slots
that reference this Schedule resource cover". The hours come from
PractitionerRole.availableTime / notAvailable and HealthcareService.availableTime, and
from the server's extensions (profiles/) on Location rooms and the Schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from slot_generation_helpers import (
    TAG,
    hours,
    hours_extension,
    off_extension,
    put,
    schedule,
    slots_of,
    starts,
    wait_for,
)

from fhir_server.testing import ServerProcess
from profiles import SLOT_DURATION

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("slots")
    env = {"FHIR_SLOT_CHECK_INTERVAL": "0.3", "FHIR_SLOT_HORIZON": "P3D"}
    with ServerProcess(tmp / "data", env=env, log_file=tmp / "server.log") as s:
        yield s


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def test_the_extensions_are_served_as_structure_definitions(http: httpx.Client) -> None:
    r = http.get("/StructureDefinition", params={"url": SLOT_DURATION})
    assert r.status_code == 200
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["slot-duration"]
    for sid in ("available-time", "not-available", "timezone"):
        sd = http.get(f"/StructureDefinition/{sid}").json()
        assert sd["type"] == "Extension" and sd["url"].endswith(sid)


def test_practitioner_role_hours_less_not_available(http: httpx.Client) -> None:
    put(
        http,
        {
            "resourceType": "PractitionerRole",
            "id": "pr-a",
            "availableTime": [hours(["mon", "wed"], "09:00:00", "11:00:00")],
            "notAvailable": [
                {
                    "description": "meeting",
                    "during": {"start": "2031-02-05T09:30:00Z", "end": "2031-02-05T10:00:00Z"},
                }
            ],
        },
    )
    put(http, schedule("s-a", ["PractitionerRole/pr-a"]))
    slots = wait_for(lambda: slots_of(http, "s-a"))
    assert starts(slots) == [
        "2031-02-03T09:00:00Z",
        "2031-02-03T09:30:00Z",
        "2031-02-03T10:00:00Z",
        "2031-02-03T10:30:00Z",
        "2031-02-05T09:00:00Z",
        "2031-02-05T10:00:00Z",
        "2031-02-05T10:30:00Z",
    ]
    first = slots[0]
    assert first["status"] == "free" and first["end"] == "2031-02-03T09:30:00Z"
    assert first["meta"]["tag"] == [{"system": TAG.split("|")[0], "code": "generated"}]
    tagged = http.get("/Slot", params={"_tag": TAG, "schedule": "Schedule/s-a"}).json()
    assert len(tagged["entry"]) == 7


def test_service_hours_within_room_hours(http: httpx.Client) -> None:
    """Every party that states hours constrains: the service's Tuesday 08-18 within the
    room's Tuesday 13-15 (extension), less the room's closure."""
    specialty = [{"coding": [{"system": "http://snomed.info/sct", "code": "394579002"}]}]
    put(
        http,
        {
            "resourceType": "HealthcareService",
            "id": "hs-b",
            "specialty": specialty,
            "availableTime": [hours(["tue"], "08:00:00", "18:00:00")],
        },
    )
    room = {
        "resourceType": "Location",
        "id": "room-b",
        "extension": [
            hours_extension(["tue"], "13:00:00", "15:00:00"),
            off_extension("2031-02-04T14:00:00Z", "2031-02-04T14:30:00Z"),
        ],
    }
    put(http, room)
    put(http, schedule("s-b", ["HealthcareService/hs-b", "Location/room-b"]))
    slots = wait_for(lambda: slots_of(http, "s-b"))
    assert starts(slots) == [
        "2031-02-04T13:00:00Z",
        "2031-02-04T13:30:00Z",
        "2031-02-04T14:30:00Z",
    ]
    assert all(s["specialty"] == specialty for s in slots)
    found = http.get(
        "/Appointment/$find",
        params={"start": "2031-02-04", "end": "2031-02-05", "specialty": "394579002"},
    ).json()
    assert [e["resource"]["slot"][0]["reference"] for e in found["entry"]] == [
        f"Slot/{s['id']}" for s in slots
    ]
    # the room's hours change (an update of the Location, an actor): regenerated
    room["extension"][0] = hours_extension(["tue"], "12:00:00", "14:00:00")
    put(http, room)
    assert wait_for(
        lambda: (
            starts(slots_of(http, "s-b"))
            == [
                "2031-02-04T12:00:00Z",
                "2031-02-04T12:30:00Z",
                "2031-02-04T13:00:00Z",
                "2031-02-04T13:30:00Z",
            ]
        )
    )


def test_schedule_own_hours_in_its_time_zone(http: httpx.Client) -> None:
    """Local 09:00-10:00 in Madrid (CET, UTC+1 in February) is 08:00-09:00Z."""
    ext = [hours_extension(["thu"], "09:00:00", "10:00:00")]
    put(http, schedule("s-c", ["Practitioner/p-c"], 20, extensions=ext, tz="Europe/Madrid"))
    slots = wait_for(lambda: slots_of(http, "s-c"))
    assert starts(slots) == [
        "2031-02-06T08:00:00Z",
        "2031-02-06T08:20:00Z",
        "2031-02-06T08:40:00Z",
    ]


def test_default_horizon_from_now(http: httpx.Client) -> None:
    """No planningHorizon: from now to FHIR_SLOT_HORIZON ahead (P3D on this server)."""
    before = datetime.now(UTC)
    put(
        http,
        {
            "resourceType": "PractitionerRole",
            "id": "pr-d",
            "availableTime": [hours(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])],
        },
    )
    put(http, schedule("s-d", ["PractitionerRole/pr-d"], 360, horizon=None))
    slots = wait_for(lambda: slots_of(http, "s-d"))
    after = datetime.now(UTC)
    times = [datetime.fromisoformat(s["start"].replace("Z", "+00:00")) for s in slots]
    ends = [datetime.fromisoformat(s["end"].replace("Z", "+00:00")) for s in slots]
    assert times[0] >= before - timedelta(seconds=1)
    assert ends[-1] <= after + timedelta(days=3)
    assert ends[-1] > before + timedelta(days=3) - timedelta(hours=6)
    assert len(slots) in (11, 12)  # 6-hour slots over 3 days from now


def test_no_slot_duration_no_generation(http: httpx.Client) -> None:
    put(
        http,
        {
            "resourceType": "PractitionerRole",
            "id": "pr-e",
            "availableTime": [hours(["mon"], "09:00:00", "10:00:00")],
        },
    )
    put(http, schedule("s-e", ["PractitionerRole/pr-e"], None))
    put(http, schedule("s-e-probe", ["PractitionerRole/pr-e"]))  # written after s-e
    assert wait_for(lambda: slots_of(http, "s-e-probe"))
    assert slots_of(http, "s-e") == []


def test_hours_change_regenerates_free_slots_only(http: httpx.Client) -> None:
    role = {
        "resourceType": "PractitionerRole",
        "id": "pr-f",
        "availableTime": [hours(["mon"], "09:00:00", "11:00:00")],
    }
    put(http, role)
    put(http, schedule("s-f", ["PractitionerRole/pr-f"]))
    slots = wait_for(lambda: slots_of(http, "s-f"))
    assert len(slots) == 4
    by_start = {s["start"]: s for s in slots}
    # a booking of 09:00 (busy), a hold of 09:30 (busy-tentative), a Slot made by hand
    booked = by_start["2031-02-03T09:00:00Z"]
    held = by_start["2031-02-03T09:30:00Z"]
    for slot, op in ((booked, "$book"), (held, "$hold")):
        appointment = {
            "resourceType": "Appointment",
            "status": "proposed",
            "start": slot["start"],
            "end": slot["end"],
            "slot": [{"reference": f"Slot/{slot['id']}"}],
            "participant": [{"actor": {"reference": "Patient/pf"}, "status": "accepted"}],
        }
        r = http.post(
            f"/Appointment/{op}",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "appointment", "resource": appointment}],
            },
        )
        assert r.status_code == 201, r.text
    manual = put(
        http,
        {
            "resourceType": "Slot",
            "id": "hand-f",
            "schedule": {"reference": "Schedule/s-f"},
            "status": "free",
            "start": "2031-02-03T13:00:00Z",
            "end": "2031-02-03T13:30:00Z",
        },
    )
    busy_version = http.get(f"/Slot/{booked['id']}").json()["meta"]["versionId"]
    kept_1030 = by_start["2031-02-03T10:30:00Z"]

    # Monday 10:00-14:00 now: 09:00 and 09:30 are outside, but taken; 13:00 is the hand-made
    # slot's; 10:00, 10:30 stay as they were; 11:00-12:30 are new.
    role["availableTime"] = [hours(["mon"], "10:00:00", "14:00:00")]
    put(http, role)

    def regenerated() -> list[dict]:
        now = slots_of(http, "s-f")
        return now if "2031-02-03T12:30:00Z" in starts(now) else []

    slots = wait_for(regenerated)
    assert starts(slots) == [
        "2031-02-03T09:00:00Z",
        "2031-02-03T09:30:00Z",
        "2031-02-03T10:00:00Z",
        "2031-02-03T10:30:00Z",
        "2031-02-03T11:00:00Z",
        "2031-02-03T11:30:00Z",
        "2031-02-03T12:00:00Z",
        "2031-02-03T12:30:00Z",
        "2031-02-03T13:00:00Z",
        "2031-02-03T13:30:00Z",
    ]
    by_start = {s["start"]: s for s in slots}
    assert by_start["2031-02-03T09:00:00Z"]["status"] == "busy"
    assert by_start["2031-02-03T09:00:00Z"]["meta"]["versionId"] == busy_version
    assert by_start["2031-02-03T09:30:00Z"]["status"] == "busy-tentative"
    assert by_start["2031-02-03T10:30:00Z"] == kept_1030  # not even a new version
    assert by_start["2031-02-03T13:00:00Z"] == manual
    assert "tag" not in (manual.get("meta") or {})

    # a longer slot on the Schedule: the free ones are laid out again, the taken kept
    put(http, schedule("s-f", ["PractitionerRole/pr-f"], 60))

    def hourly() -> list[dict]:
        now = slots_of(http, "s-f")
        return now if "2031-02-03T11:30:00Z" not in starts(now) else []

    slots = wait_for(hourly)
    assert [(s["start"], s["end"], s["status"]) for s in slots] == [
        ("2031-02-03T09:00:00Z", "2031-02-03T09:30:00Z", "busy"),
        ("2031-02-03T09:30:00Z", "2031-02-03T10:00:00Z", "busy-tentative"),
        ("2031-02-03T10:00:00Z", "2031-02-03T11:00:00Z", "free"),
        ("2031-02-03T11:00:00Z", "2031-02-03T12:00:00Z", "free"),
        ("2031-02-03T12:00:00Z", "2031-02-03T13:00:00Z", "free"),
        ("2031-02-03T13:00:00Z", "2031-02-03T13:30:00Z", "free"),  # by hand; 13-14 overlaps it
    ]
    assert http.get(f"/Slot/{booked['id']}").json()["meta"]["versionId"] == busy_version


def test_deleted_schedule_loses_its_free_generated_slots(http: httpx.Client) -> None:
    put(
        http,
        {
            "resourceType": "PractitionerRole",
            "id": "pr-g",
            "availableTime": [hours(["fri"], "09:00:00", "10:00:00")],
        },
    )
    put(http, schedule("s-g", ["PractitionerRole/pr-g"]))
    assert len(wait_for(lambda: slots_of(http, "s-g"))) == 2
    assert http.delete("/Schedule/s-g").status_code in (200, 204)
    assert wait_for(lambda: slots_of(http, "s-g") == [])


def test_server_log_has_no_errors(server: ServerProcess) -> None:
    assert server.log_file is not None
    text = Path(server.log_file).read_text()
    assert "Traceback" not in text, text[-3000:]
