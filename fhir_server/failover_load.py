"""Sustained FHIR traffic that records every answer, and the checks of what it left in
the database: for the replica-set failover test and benchmark (tests/test_failover.py,
benchmarks/failover.py), which SIGKILL the MongoDB primary while it runs.

Each worker thread owns one Patient it updates with ``If-Match`` (nobody else writes
it, so its current version must be the last one the server acknowledged), and creates
Patients and transaction Bundles marked with identifiers unique to the request, so
that after the run each can be looked up whatever the client was told.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

SYSTEM = "urn:fhir-server:failover-test"
KINDS = ("create", "transaction", "update", "read")
WRITES = frozenset({"create", "transaction", "update"})


@dataclass(slots=True)
class Outcome:
    """One request and what the client was told."""

    kind: str
    worker: int
    start: float  # time.monotonic()
    end: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    retry_after: str | None = None
    tag: str = ""  # the identifier value marking what it wrote
    location: list[str] = field(default_factory=list)  # Type/id/_history/v of each write
    body: str = ""  # the start of an unexpected answer

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


@dataclass(slots=True)
class _Owned:
    id: str
    version: int  # the last version the server acknowledged


def _patient(tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": tag}],
        "name": [{"family": "Failover", "given": [tag[:8]]}],
    }


def _bundle(tag: str) -> dict[str, Any]:
    """Three writes that must land together: a Patient and two Observations of it."""
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": _patient(tag),
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for n in range(2):
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": SYSTEM, "value": tag}],
                    "code": {"text": f"reading {n}"},
                    "subject": {"reference": patient_url},
                    "valueQuantity": {"value": n, "unit": "mg"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class Load:
    """``threads`` clients sending creates, transactions, If-Match updates and reads in
    turn, each waiting at most ``timeout`` seconds for an answer (longer counts as a
    hang: status 0)."""

    def __init__(self, base_url: str, threads: int = 4, timeout: float = 40.0) -> None:
        self.base_url = base_url
        self.threads = threads
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self.owned: dict[int, _Owned] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._acked_ids: list[str] = []

    # --- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Create each worker's own Patient (the database must be up), then start them."""
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as http:
            for w in range(self.threads):
                r = http.post("/Patient", json=_patient(f"owned-{uuid.uuid4().hex}"))
                r.raise_for_status()
                self.owned[w] = _Owned(r.json()["id"], 1)
                self._acked_ids.append(r.json()["id"])
        for w in range(self.threads):
            t = threading.Thread(target=self._run, args=(w,), name=f"load-{w}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, predicate: Callable[[list[Outcome]], bool], timeout: float) -> bool:
        """Poll the outcomes until ``predicate`` holds; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.05)
        return False

    def _run(self, worker: int) -> None:
        ops: dict[str, Callable[[httpx.Client, int], Outcome]] = {
            "create": self._create,
            "transaction": self._transaction,
            "update": self._update,
            "read": self._read,
        }
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as http:
            n = worker  # the workers start on different kinds
            while not self._stop.is_set():
                outcome = ops[KINDS[n % len(KINDS)]](http, worker)
                n += 1
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status == 503:
                    time.sleep(0.05)  # a client would wait Retry-After; keep probing

    def _send(
        self,
        http: httpx.Client,
        kind: str,
        worker: int,
        tag: str,
        call: Callable[[], httpx.Response],
    ) -> tuple[Outcome, httpx.Response | None]:
        start = time.monotonic()
        try:
            r = call()
        except httpx.HTTPError as exc:
            return Outcome(kind, worker, start, time.monotonic(), 0, tag=tag, body=repr(exc)), None
        outcome = Outcome(
            kind,
            worker,
            start,
            time.monotonic(),
            r.status_code,
            r.headers.get("retry-after"),
            tag,
        )
        if not outcome.acknowledged:
            outcome.body = r.text[:500]
        return outcome, r

    def _create(self, http: httpx.Client, worker: int) -> Outcome:
        tag = uuid.uuid4().hex
        outcome, r = self._send(
            http, "create", worker, tag, lambda: http.post("/Patient", json=_patient(tag))
        )
        if r is not None and outcome.acknowledged:
            body = r.json()
            outcome.location = [f"Patient/{body['id']}/_history/{body['meta']['versionId']}"]
            with self._lock:
                self._acked_ids.append(body["id"])
        return outcome

    def _transaction(self, http: httpx.Client, worker: int) -> Outcome:
        tag = uuid.uuid4().hex
        outcome, r = self._send(
            http, "transaction", worker, tag, lambda: http.post("", json=_bundle(tag))
        )
        if r is not None and outcome.acknowledged:
            outcome.location = [e["response"]["location"] for e in r.json()["entry"]]
        return outcome

    def _update(self, http: httpx.Client, worker: int) -> Outcome:
        owned = self.owned[worker]
        tag = f"owned-{uuid.uuid4().hex}"
        body = {**_patient(tag), "id": owned.id}
        headers = {"If-Match": f'W/"{owned.version}"'}
        outcome, r = self._send(
            http,
            "update",
            worker,
            tag,
            lambda: http.put(f"/Patient/{owned.id}", json=body, headers=headers),
        )
        if r is not None and outcome.acknowledged:
            version = int(r.json()["meta"]["versionId"])
            outcome.location = [f"Patient/{owned.id}/_history/{version}"]
            owned.version = version
        return outcome

    def _read(self, http: httpx.Client, worker: int) -> Outcome:
        with self._lock:
            some = self._acked_ids[(len(self.outcomes) * 7919) % len(self._acked_ids)]
        outcome, _r = self._send(http, "read", worker, "", lambda: http.get(f"/Patient/{some}"))
        return outcome


# --- checks after the run ------------------------------------------------------------


def _pages(http: httpx.Client, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every entry of a searchset or history Bundle, following its next links."""
    entries: list[dict[str, Any]] = []
    r = http.get(url, params=params)
    while True:
        r.raise_for_status()
        bundle = r.json()
        entries += bundle.get("entry", [])
        following = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not following:
            return entries
        r = http.get(following[0])


def _tag(resource: dict[str, Any]) -> str | None:
    for identifier in resource.get("identifier", []):
        if identifier.get("system") == SYSTEM:
            return str(identifier["value"])
    return None


@dataclass(slots=True)
class _Stored:
    """What the server holds of the load's resources, read through its API."""

    current: dict[str, list[str]] = field(default_factory=dict)  # tag: Type/id, live
    versions: set[str] = field(default_factory=set)  # Type/id/_history/v, in history
    history_tags: set[str] = field(default_factory=set)  # tags of every version

    @classmethod
    def read(cls, http: httpx.Client) -> _Stored:
        stored = cls()
        for resource_type in ("Patient", "Observation"):
            search = {"identifier": f"{SYSTEM}|", "_count": "1000"}
            for entry in _pages(http, f"/{resource_type}", search):
                resource = entry["resource"]
                key = f"{resource_type}/{resource['id']}"
                stored.current.setdefault(_tag(resource) or "", []).append(key)
            for entry in _pages(http, f"/{resource_type}/_history", {"_count": "1000"}):
                resource = entry.get("resource")
                if resource is None:
                    continue
                version = resource["meta"]["versionId"]
                stored.versions.add(f"{resource_type}/{resource['id']}/_history/{version}")
                stored.history_tags.add(_tag(resource) or "")
        return stored


def check_outcomes(base_url: str, load: Load) -> list[str]:
    """What the database holds against what clients were told; each problem found.

    - every acknowledged write is readable, with its version in history;
    - a write answered with anything but 2xx left nothing behind, neither a current
      resource nor a history version (a 503 is never given for a write that committed);
      a transaction's three resources are all there or none;
    - each owned Patient is at the last version the server acknowledged (so no update
      answered 503 was applied).
    """
    problems: list[str] = []
    with httpx.Client(base_url=base_url, timeout=60) as http:
        stored = _Stored.read(http)
        for o in load.outcomes:
            if o.kind not in ("create", "transaction"):
                continue
            expected = 1 if o.kind == "create" else 3
            found = len(stored.current.get(o.tag, []))
            if o.acknowledged and found != expected:
                problems.append(f"acknowledged {o.kind} {o.tag}: {found} of {expected} stored")
            if not o.acknowledged and (found or o.tag in stored.history_tags):
                problems.append(
                    f"{o.kind} {o.tag} answered {o.status} yet {found} of {expected} stored"
                    + (", and in history" if o.tag in stored.history_tags else "")
                )
        for o in load.outcomes:
            for location in o.location if o.acknowledged else []:
                if location not in stored.versions:
                    problems.append(f"acknowledged {o.kind}: {location} is not in history")
        for worker, owned in load.owned.items():
            r = http.get(f"/Patient/{owned.id}")
            version = int(r.json()["meta"]["versionId"]) if r.status_code == 200 else None
            if version != owned.version:
                problems.append(
                    f"worker {worker}'s Patient/{owned.id} is at version {version}, the last "
                    f"acknowledged was {owned.version}"
                )
    return problems


# --- figures ---------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))]


def write_gap(outcomes: list[Outcome], killed_at: float) -> float:
    """Seconds from the kill to the first write acknowledged after it that also started
    after it: how long writes were refused."""
    after = [
        o.end for o in outcomes if o.kind in WRITES and o.acknowledged and o.start >= killed_at
    ]
    return (min(after) - killed_at) if after else float("inf")


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by kind and status, and write latency median/p95 in ms."""
    counts: dict[str, dict[int, int]] = {}
    for o in outcomes:
        by_status = counts.setdefault(o.kind, {})
        by_status[o.status] = by_status.get(o.status, 0) + 1
    latencies = [o.seconds * 1000 for o in outcomes if o.kind in WRITES and o.acknowledged]
    return {
        "counts": counts,
        "write_p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "write_p95_ms": percentile(latencies, 0.95),
        "acknowledged_writes": len(latencies),
    }
