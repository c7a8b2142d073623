"""Scheduling against a real server (issue 12): ``$book`` latency, and a contest of
concurrent clients for few slots that must end with exactly one booking per slot.

    .venv/bin/python benchmarks/scheduling.py                     # 300 bookings, 100 vs 20
    .venv/bin/python benchmarks/scheduling.py --bookings 1000 --clients 100 --slots 20

A fresh ``fhir-server serve`` (one worker, embedded mongod) per run. Slots are stored
first (50 practitioners, each in a room of their own, 15-minute slots); each timed
``$book`` takes a free slot of a practitioner and room, so it pays every rule of the
write pipeline (booking keys, Slot status, action log). ``$find`` is timed for one
practitioner-week over the slots stored (``--extra-slots 60000`` for the issue's data
set size; slot generation is not built yet, so they are stored through batches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fhir_server.testing import ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}
START = datetime(2031, 1, 6, 8, 0, tzinfo=UTC)
PRACTITIONERS = 50


def instant(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def slot_of(n: int) -> tuple[str, int, datetime]:
    """Slot n: (id, practitioner, start); practitioners take turns."""
    practitioner = n % PRACTITIONERS
    start = START + timedelta(minutes=15 * (n // PRACTITIONERS))
    return f"bench-{n}", practitioner, start


def slot(n: int) -> dict[str, Any]:
    sid, practitioner, start = slot_of(n)
    return {
        "resourceType": "Slot",
        "id": sid,
        "schedule": {"reference": f"Schedule/p{practitioner}"},
        "status": "free",
        "start": instant(start),
        "end": instant(start + timedelta(minutes=15)),
    }


def proposal(n: int, patient: str) -> dict[str, Any]:
    sid, practitioner, start = slot_of(n)
    appointment = {
        "resourceType": "Appointment",
        "status": "proposed",
        "slot": [{"reference": f"Slot/{sid}"}],
        "start": instant(start),
        "end": instant(start + timedelta(minutes=15)),
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/p{practitioner}"}, "status": "accepted"},
            {"actor": {"reference": f"Location/room{practitioner}"}, "status": "accepted"},
        ],
    }
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment", "resource": appointment}],
    }


def store_schedules(client: httpx.Client) -> None:
    entries = [
        {
            "resource": {
                "resourceType": "Schedule",
                "id": f"p{p}",
                "actor": [
                    {"reference": f"Practitioner/p{p}"},
                    {"reference": f"Location/room{p}"},
                ],
            },
            "request": {"method": "PUT", "url": f"Schedule/p{p}"},
        }
        for p in range(PRACTITIONERS)
    ]
    r = client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    r.raise_for_status()


def store_slots(client: httpx.Client, count: int, first: int = 0) -> None:
    for low in range(first, first + count, 500):
        entries = [
            {"resource": slot(n), "request": {"method": "PUT", "url": f"Slot/bench-{n}"}}
            for n in range(low, min(first + count, low + 500))
        ]
        r = client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
        r.raise_for_status()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(base_url: str, bookings: int, clients: int, slots: int, extra_slots: int) -> None:
    with httpx.Client(base_url=base_url, headers=FHIR_JSON, timeout=60) as client:
        store_schedules(client)
        store_slots(client, bookings + slots)
        for n in range(5):  # warm-up
            client.post("/Appointment/$book", json=proposal(bookings + slots + n, "warm"))
        times: list[float] = []
        for n in range(bookings):
            t = time.perf_counter()
            r = client.post("/Appointment/$book", json=proposal(n, f"p{n}"))
            times.append(time.perf_counter() - t)
            if r.status_code not in (201, 409):
                raise SystemExit(f"$book answered {r.status_code}: {r.text}")
        ms = [s * 1000 for s in times]
        print(
            f"$book x{bookings}: p50 {statistics.median(ms):.1f} ms, "
            f"p95 {quantile(ms, 0.95):.1f} ms"
        )
        store_slots(client, extra_slots, first=bookings + slots + 5)
        week = {"start": instant(START), "end": instant(START + timedelta(days=7))}
        times = []
        for n in range(100):
            t = time.perf_counter()
            r = client.get("/Appointment/$find", params={**week, "practitioner": f"p{n % 50}"})
            times.append(time.perf_counter() - t)
            r.raise_for_status()
            if not r.json().get("entry"):
                raise SystemExit(f"$find found nothing: {r.text[:300]}")
        ms = [s * 1000 for s in times]
        total = bookings + slots + 5 + extra_slots
        print(
            f"$find practitioner-week x100 over {total} slots: "
            f"p50 {statistics.median(ms):.1f} ms, p95 {quantile(ms, 0.95):.1f} ms"
        )

    contested = list(range(bookings, bookings + slots))

    def contender(c: int) -> list[int]:
        with httpx.Client(base_url=base_url, headers=FHIR_JSON, timeout=120) as mine:
            return [
                mine.post("/Appointment/$book", json=proposal(n, f"c{c}")).status_code
                for n in contested[c % slots :] + contested[: c % slots]
            ]

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        statuses = [s for found in pool.map(contender, range(clients)) for s in found]
    elapsed = time.perf_counter() - t
    with httpx.Client(base_url=base_url, headers=FHIR_JSON, timeout=60) as client:
        per_slot = [
            client.get(
                "/Appointment",
                params={"slot": f"Slot/bench-{n}", "status": "booked", "_summary": "count"},
            ).json()["total"]
            for n in contested
        ]
    print(
        f"{clients} clients x {slots} slots in {elapsed:.1f} s: "
        f"{statuses.count(201)} bookings, {statuses.count(409)} x 409, "
        f"other {len(statuses) - statuses.count(201) - statuses.count(409)}; "
        f"bookings per slot {sorted(set(per_slot))} "
        f"({sum(c > 1 for c in per_slot)} double bookings)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bookings", type=int, default=300)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--extra-slots", type=int, default=2000, help="stored before $find")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with ServerProcess(Path(tmp) / "data", log_file=log) as server:
            print(f"server {server.base_url}", file=sys.stderr)
            run(server.base_url, args.bookings, args.clients, args.slots, args.extra_slots)


if __name__ == "__main__":
    main()
