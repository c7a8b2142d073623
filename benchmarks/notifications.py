"""Notifications (issue #15): Subscriptions matched at ingest, rest-hook delivery by one
worker, and appointment reminders at volume, each against real processes.

    .venv/bin/python benchmarks/notifications.py                  # all three, full size
    .venv/bin/python benchmarks/notifications.py ingest           # 1,000 Subscriptions, 2 rounds
    .venv/bin/python benchmarks/notifications.py ingest --without-live  # no chains, no _has
    .venv/bin/python benchmarks/notifications.py deliver          # 4,000 notifications, 1 worker
    .venv/bin/python benchmarks/notifications.py deliver --backlog  # queued first, then drained
    .venv/bin/python benchmarks/notifications.py reminders        # 10,000 reminders, 2 workers
    .venv/bin/python benchmarks/notifications.py reminders --workers 1 --broker mongodb
    .venv/bin/python benchmarks/notifications.py all --subscriptions 50 --rounds 1 --bundles 5 \
        --notifications 300 --reminders 300                      # a quick check of the machinery

Targets, one PASS/FAIL line each:

**ingest**: loading the Synthea bundles (benchmarks/ingest.py's ``upload``: the loader, as
``fhir-server load`` runs it) with 1,000 active rest-hook Subscriptions is at most 10 %
slower than with none. Each run starts its own ``fhir-server serve`` with a fresh
embedded mongod; ``--rounds`` interleaves the arms (base, subs, base, subs) because the
machine drifts, and the slowdown compares the median wall times. The Subscriptions are
created over the REST API before the load: criteria on codes (LOINC, SNOMED, CVX,
RxNorm; every third one a code of the data, the others codes it lacks), on one patient,
on a code and a value, one each of four broad ones (``Encounter?status=finished``, ...),
and one each of three live criteria (two chains and a ``_has``: queried at each write of
their type; ``--without-live`` leaves them out); two thirds with a payload. At 1,000 about
1.5 notifications are queued per resource loaded.
Their endpoint is a receiver in this process (``FHIR_OUTBOUND_ALLOW=127.0.0.1``), but no
worker runs (a broker is configured, so ``serve`` starts none): the notifications only
queue in MongoDB, and the run reports how many did.

**deliver**: one ``fhir-server worker`` (Redis broker) delivers at least 200 rest-hook
notifications/s to a receiver in this process (HTTP/1.1, answers 200 at once). 50
Subscriptions, one code each, four of five with the ``application/fhir+json`` payload
(a PUT per resource), the others none (an empty POST); N Observations are written in
transaction Bundles, one after another, each matching exactly one Subscription. The rate
is taken from the first to the last notification received; a notification's latency is
its arrival minus the return of the Bundle POST that wrote its resource (a POST carries
no id: the n-th POST of a Subscription is its n-th resource written). The worker runs
during the writes, so the latency includes the wait behind the backlog when writes
outrun the delivery; ``--backlog`` writes everything before the worker starts and
measures the drain alone. Checked: per Subscription and resource id, nothing lost,
duplicated or unexpected, bodies are the versions written, Bundles arrive in write order,
and the queue is empty at the end.

**reminders**: 10,000 appointment reminders due within the same minute are each sent
within 2 minutes of being due, exactly once. A private mongod, a ``fhir-server serve``
(it books; its rules plan the reminders) and ``--workers`` ``fhir-server worker``
processes (started before the appointments are written, as in production). 10,000
patients (each their own WhatsApp number) and one appointment each are loaded in
transactions; the appointments start 2 h (the lead time) after a whole minute M, spread
evenly over it, so their reminders are due throughout M. The messages go to the
Twilio-like server of tests/reminder_helpers.py, in this process. Reported: each
message's latency (arrival minus due time) median, p95 and max; when the last one
arrived; duplicates, misses and strays (per number); the reminder claims' states and
the Communications recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package; the tests'
# Twilio-like server (tests/reminder_helpers.py) next.
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

from http_helpers import serving  # noqa: E402
from process_helpers import stop  # noqa: E402
from reminder_helpers import (  # noqa: E402
    ACCOUNT,
    SMS_FROM,
    TOKEN,
    WHATSAPP_FROM,
    TwilioServer,
    twilio_server,
)

from benchmarks.ingest import RssSampler, upload  # noqa: E402
from benchmarks.synthea import SYNTHEA  # noqa: E402
from fhir_server.embedded_mongo import PORT_FILE, EmbeddedMongo  # noqa: E402
from fhir_server.testing import ServerProcess  # noqa: E402
from fhir_server.workflows.reminders.claims import CLAIMS, OPEN  # noqa: E402
from fhir_server.workflows.subscriptions.active import NOTIFICATIONS  # noqa: E402

REDIS = "redis://127.0.0.1:6379/13"
DATABASE = "bench"
FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CVX = "http://hl7.org/fhir/sid/cvx"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SYNTHEA_ID = "https://github.com/synthetichealth/synthea"


# --- shared --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def spread(values: list[float], ms: bool = False) -> str:
    """Median, p95 and max of seconds, in seconds or milliseconds."""
    if not values:
        return "none"
    scale, unit, digits = (1000, "ms", 0) if ms else (1, "s", 2)
    figures = (statistics.median(values), percentile(values, 95), max(values))
    med, p95, top = (f"{v * scale:,.{digits}f} {unit}" for v in figures)
    return f"median {med}, p95 {p95}, max {top}"


def verdict(target: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {target}: {detail}", flush=True)
    return ok


def base_env(broker: str, **more: str) -> dict[str, str]:
    """Settings of a server and its workers; a broker (not 'mongodb') keeps ``serve``
    from starting a worker of its own. Each run has a queue of its own."""
    env = {
        "FHIR_AUTH_ENABLED": "false",
        "FHIR_CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "FHIR_SLOT_CHECK_INTERVAL": "600",
    }
    if broker != "mongodb":
        env["FHIR_CELERY_BROKER_URL"] = broker
    env.update(more)
    return env


def start_workers(
    n: int, mongo_url: str, env: dict[str, str], log: Path
) -> list[subprocess.Popen[bytes]]:
    """``n`` ``fhir-server worker`` processes on ``mongo_url``'s bench database."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    full |= env | {"FHIR_MONGO_URL": mongo_url, "FHIR_DATABASE": DATABASE}
    out = []
    with log.open("ab") as f:
        for _ in range(n):
            args = [sys.executable, "-m", "fhir_server", "worker"]
            out.append(subprocess.Popen(args, env=full, stdout=f, stderr=f))
    return out


def own_workers(wanted: int, broker: str) -> int:
    """Workers to start ourselves: with the MongoDB broker ``serve`` runs one itself."""
    return wanted - 1 if broker == "mongodb" else wanted


def tail(path: Path, lines: int = 15) -> None:
    if path.exists():
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            print(f"    | {line}")


def transaction(http: httpx.Client, entries: list[dict[str, Any]]) -> dict[str, Any]:
    r = http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    if r.status_code != 200:
        raise RuntimeError(f"transaction: HTTP {r.status_code}: {r.text[:500]}")
    body: dict[str, Any] = r.json()
    return body


def mongo_client(url: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(url)


@dataclass
class Stack:
    """A private mongod, one ``fhir-server serve`` on it, and the workers started since."""

    url: str
    env: dict[str, str]
    http: httpx.Client
    mongo: MongoClient[dict[str, Any]]
    worker_log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_workers(self, wanted: int, broker: str) -> None:
        self.procs += start_workers(
            own_workers(wanted, broker), self.url, self.env, self.worker_log
        )


@contextmanager
def running(tmp: str, env: dict[str, str], api_workers: int, timeout: float) -> Iterator[Stack]:
    """The processes of a delivery or reminders run; their logs' tails when it fails,
    everything stopped afterwards."""
    mongo = EmbeddedMongo(Path(tmp) / "mongo", cache_size_gb=1.0)
    url = mongo.start()
    server_log, worker_log = Path(tmp) / "server.log", Path(tmp) / "workers.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (
            ServerProcess(
                mongo_url=url, database=DATABASE, workers=api_workers, env=env, log_file=server_log
            ) as server,
            httpx.Client(base_url=server.base_url, timeout=timeout) as http,
            mongo_client(url) as mc,
        ):
            yield Stack(url, env, http, mc, worker_log, procs)
    except Exception:
        print("  server log:")
        tail(server_log)
        print("  workers log:")
        tail(worker_log)
        raise
    finally:
        for p in procs:
            stop(p)
        mongo.stop()


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


# --- the rest-hook receiver ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    body: bytes


class _HookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver
    server: Hook

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hit = Hit(time.monotonic(), self.command, self.path, body)
        with self.server.lock:
            self.server.hits.append(hit)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = _handle

    def log_message(self, *args: Any) -> None:
        pass


class Hook(ThreadingHTTPServer):
    """Records every notification (arrival time, method, path, body), answers 200."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.lock = threading.Lock()
        self.hits: list[Hit] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, prefix: str = "/") -> int:
        with self.lock:
            return sum(1 for h in self.hits if h.path.startswith(prefix))

    def snapshot(self) -> list[Hit]:
        with self.lock:
            return list(self.hits)


@contextmanager
def hook_server() -> Iterator[Hook]:
    with serving(Hook()) as hook:
        yield hook


def subscription(criteria: str, endpoint: str, payload: bool, **channel: Any) -> dict[str, Any]:
    ch: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, **channel}
    if payload:
        ch["payload"] = FHIR_JSON
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "benchmark",
        "criteria": criteria,
        "channel": ch,
    }


def subscribe_all(http: httpx.Client, resources: list[dict[str, Any]], threads: int = 4) -> None:
    def one(resource: dict[str, Any]) -> None:
        r = http.post("/Subscription", json=resource)
        if r.status_code != 201 or r.json().get("status") != "active":
            raise RuntimeError(f"{resource['criteria']}: HTTP {r.status_code}: {r.text[:300]}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, resources))


def active_subscriptions(http: httpx.Client) -> int:
    r = http.get("/Subscription", params={"status": "active", "_summary": "count"})
    r.raise_for_status()
    return int(r.json()["total"])


# --- 1. ingest with active Subscriptions ---------------------------------------------------


@dataclass
class Vocabulary:
    """What the Synthea data holds, for criteria that match some of it."""

    codes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    patients: list[str] = field(default_factory=list)  # synthea identifier values

    @classmethod
    def read(cls, directory: Path) -> Vocabulary:
        where = {
            "Observation": ("code", LOINC),
            "Condition": ("code", SNOMED),
            "Procedure": ("code", SNOMED),
            "Immunization": ("vaccineCode", CVX),
            "MedicationRequest": ("medicationCodeableConcept", RXNORM),
        }
        seen: dict[str, Counter[str]] = defaultdict(Counter)
        found = cls()
        for path in sorted(directory.glob("*.json")):
            for entry in orjson.loads(path.read_bytes()).get("entry", []):
                resource = entry["resource"]
                kind = resource["resourceType"]
                if kind == "Patient":
                    found.patients += [
                        i["value"]
                        for i in resource.get("identifier", [])
                        if i.get("system") == SYNTHEA_ID
                    ]
                elif kind in where:
                    element, system = where[kind]
                    for coding in (resource.get(element) or {}).get("coding", []):
                        if coding.get("system") == system:
                            seen[kind][coding["code"]] += 1
        for kind, counts in seen.items():
            found.codes[kind] = [c for c, _ in counts.most_common()]
        return found


Maker = Callable[[random.Random, Vocabulary, int], str]


@dataclass(frozen=True, slots=True)
class Kind:
    share: float  # of the Subscriptions (the first kind takes what rounding leaves)
    label: str
    make: Maker
    live: bool = False  # criteria queried at each write (chains, _has), not in memory


MIX: list[Kind] = [
    Kind(
        0.30, "Observation?code", lambda r, v, i: f"Observation?code={_code(v, 'Observation', i)}"
    ),
    Kind(
        0.15,
        "Observation?subject&category",
        lambda r, v, i: f"Observation?subject=Patient/{_uuid(r)}&category=laboratory",
    ),
    Kind(0.08, "Condition?code", lambda r, v, i: f"Condition?code={_code(v, 'Condition', i)}"),
    Kind(
        0.08,
        "Immunization?vaccine-code",
        lambda r, v, i: f"Immunization?vaccine-code={_code(v, 'Immunization', i)}",
    ),
    Kind(0.08, "Procedure?code", lambda r, v, i: f"Procedure?code={_code(v, 'Procedure', i)}"),
    Kind(
        0.08,
        "MedicationRequest?code&status",
        lambda r, v, i: f"MedicationRequest?code={_code(v, 'MedicationRequest', i)}&status=active",
    ),
    Kind(0.08, "Encounter?subject", lambda r, v, i: f"Encounter?subject=Patient/{_uuid(r)}"),
    Kind(0.05, "Observation?code&value-quantity", lambda r, v, i: _abnormal(i)),
    Kind(
        0.05,
        "DiagnosticReport?category&subject",
        lambda r, v, i: (
            "DiagnosticReport?category=http://terminology.hl7.org/CodeSystem/"
            f"v2-0074|LAB&subject=Patient/{_uuid(r)}"
        ),
    ),
    Kind(0.001, "Encounter?status=finished", lambda r, v, i: "Encounter?status=finished"),
    Kind(
        0.001,
        "Condition?clinical-status=active",
        lambda r, v, i: "Condition?clinical-status=active",
    ),
    Kind(
        0.001, "MedicationRequest?status=active", lambda r, v, i: "MedicationRequest?status=active"
    ),
    Kind(
        0.001, "Observation?category=laboratory", lambda r, v, i: "Observation?category=laboratory"
    ),
    Kind(
        0.001,
        "Observation?subject:Patient.identifier",
        lambda r, v, i: f"Observation?subject:Patient.identifier={SYNTHEA_ID}|{_patient(r, v)}",
        live=True,
    ),
    Kind(
        0.001,
        "Encounter?subject:Patient.identifier",
        lambda r, v, i: f"Encounter?subject:Patient.identifier={SYNTHEA_ID}|{_patient(r, v)}",
        live=True,
    ),
    Kind(
        0.001,
        "Patient?_has:Condition:patient:code",
        lambda r, v, i: f"Patient?_has:Condition:patient:code={_code(v, 'Condition', 3 * i)}",
        live=True,
    ),
]
SYSTEMS = {
    "Observation": (LOINC, "9{:04d}-0"),
    "Condition": (SNOMED, "99{:07d}"),
    "Procedure": (SNOMED, "98{:07d}"),
    "Immunization": (CVX, "9{:03d}"),
    "MedicationRequest": (RXNORM, "99{:05d}"),
}
ABNORMAL = [  # glucose, BMI, cholesterol, HbA1c, haemoglobin, heart rate
    ("2339-0", "gt140"),
    ("39156-5", "gt30"),
    ("2093-3", "gt240"),
    ("4548-4", "gt6.5"),
    ("718-7", "lt10"),
    ("8867-4", "gt100"),
]


def _abnormal(i: int) -> str:
    code, value = ABNORMAL[i % len(ABNORMAL)]
    return f"Observation?code={LOINC}|{code}&value-quantity={value}"


def _code(vocabulary: Vocabulary, kind: str, i: int) -> str:
    """system|code: every third a code of the data (in turn), the others codes it lacks
    (a deployment's Subscriptions follow more codes than 120 patients have)."""
    system, absent = SYSTEMS[kind]
    codes = vocabulary.codes[kind]
    code = codes[i // 3 % len(codes)] if i % 3 == 0 else absent.format(i)
    return f"{system}|{code}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _patient(rng: random.Random, vocabulary: Vocabulary) -> str:
    return rng.choice(vocabulary.patients)


def criteria_mix(
    n: int, vocabulary: Vocabulary, live: bool = True
) -> tuple[list[str], Counter[str]]:
    """``n`` criteria in MIX's proportions (each kind at least once from 50 Subscriptions
    up; ``live`` False: no chains or ``_has``), the same for every run."""
    rng = random.Random(15)
    kinds = [k for k in MIX if live or not k.live]
    counts = [round(n * k.share) for k in kinds]
    if n >= 50:
        counts = [max(1, c) for c in counts]
    counts[0] += n - sum(counts)
    out: list[str] = []
    made: Counter[str] = Counter()
    for kind, count in zip(kinds, counts, strict=True):
        out += [kind.make(rng, vocabulary, i) for i in range(count)]
        made[kind.label + (" (live)" if kind.live else "")] += count
    return out, made


def ingest_subscriptions(
    n: int, vocabulary: Vocabulary, hook: Hook, live: bool
) -> list[dict[str, Any]]:
    criteria, _ = criteria_mix(n, vocabulary, live)
    return [
        subscription(
            c,
            f"{hook.base}/ingest/{i}",
            payload=i % 3 != 2,
            **({"header": [f"Authorization: Bearer app-{i}"]} if i % 4 == 0 else {}),
        )
        for i, c in enumerate(criteria)
    ]


def queued_notifications(data_dir: Path) -> int:
    """The notifications waiting in the embedded mongod of ``serve --data-dir``."""
    port = int((data_dir / PORT_FILE).read_text())
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    with mongo_client(url) as client:
        return client["fhir"][NOTIFICATIONS].estimated_document_count()


def ingest_run(
    args: argparse.Namespace, data: Path, subs: list[dict[str, Any]], hook: Hook
) -> dict[str, Any]:
    """One load into a fresh server with ``subs`` created first."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        env = base_env(args.broker if args.broker != "mongodb" else REDIS)
        env["FHIR_OUTBOUND_ALLOW"] = "127.0.0.1"
        data_dir = Path(tmp) / "data"
        log = Path(tmp) / "server.log"
        server = ServerProcess(data_dir, workers=args.api_workers, env=env, log_file=log)
        server.start(timeout=120)
        try:
            assert server.pid is not None
            with httpx.Client(base_url=server.base_url, timeout=300) as http:
                started = time.monotonic()
                subscribe_all(http, subs)
                made = time.monotonic() - started
                active = active_subscriptions(http)
            time.sleep(1.5)  # every API process has reloaded its Subscriptions (≤ 1 s)
            delivered_before = hook.count("/ingest/")
            sampler = RssSampler(server.pid)
            sampler.start()
            summary, loader_cpu = upload(server.base_url, args.concurrency, data)
            sampled = sampler.stop()
            queued = queued_notifications(data_dir)
            delivered = hook.count("/ingest/") - delivered_before
        except Exception:
            tail(log)
            raise
        finally:
            server.stop()
    for failure in summary.failures[:5]:
        print(f"    {failure.describe()}")
    return {
        "subscriptions": len(subs),
        "active": active,
        "create_s": round(made, 1),
        "resources": summary.succeeded,
        "failed": summary.failed,
        "seconds": round(summary.elapsed_s, 2),
        "per_s": round(summary.per_second, 1),
        "queued": queued,
        "delivered": delivered,
        "loader_cpu_s": round(loader_cpu, 1),
        **{k: round(v, 1) for k, v in sampled.items()},
    }


@contextmanager
def bundle_dir(source: Path, limit: int | None) -> Iterator[Path]:
    """``source``, or a directory of links to its first ``limit`` bundles."""
    if limit is None:
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="bench-bundles-") as tmp:
        for path in sorted(source.glob("*.json"))[:limit]:
            (Path(tmp) / path.name).symlink_to(path.resolve())
        yield Path(tmp)


def ingest(args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    print(f"== ingest: {args.subscriptions} active Subscriptions vs none ==", flush=True)
    vocabulary = Vocabulary.read(args.data)
    _, kinds = criteria_mix(args.subscriptions, vocabulary, not args.without_live)
    print("criteria: " + ", ".join(f"{n} {label}" for label, n in kinds.items() if n))
    rows: list[dict[str, Any]] = []
    with hook_server() as hook, bundle_dir(args.data, args.bundles) as data:
        subs = ingest_subscriptions(args.subscriptions, vocabulary, hook, not args.without_live)
        for round_no in range(1, args.rounds + 1):
            for arm, these in (("base", []), ("subs", subs)):
                row = {"arm": arm, "round": round_no, **ingest_run(args, data, these, hook)}
                rows.append(row)
                print(
                    f"  {arm} #{round_no}: {row['resources']} resources in {row['seconds']:.1f} s, "
                    f"{row['per_s']:.0f} resources/s, failed {row['failed']}; "
                    f"{row['active']} Subscriptions active (created in {row['create_s']} s), "
                    f"{row['queued']} notifications queued "
                    f"({row['queued'] / max(1, row['resources']):.2f} a resource), "
                    f"{row['delivered']} delivered; "
                    f"CPU server {row['server_cpu_s']} s, mongod {row['mongod_cpu_s']} s; "
                    f"peak RSS server {row['server_rss_mb']:.0f} MiB, "
                    f"mongod {row['mongod_rss_mb']:.0f} MiB",
                    flush=True,
                )
    base = [r for r in rows if r["arm"] == "base"]
    with_subs = [r for r in rows if r["arm"] == "subs"]
    t_base = statistics.median(r["seconds"] for r in base)
    t_subs = statistics.median(r["seconds"] for r in with_subs)
    rate_base = statistics.median(r["per_s"] for r in base)
    rate_subs = statistics.median(r["per_s"] for r in with_subs)
    slowdown = 100 * (t_subs / t_base - 1)
    print(
        f"median base {t_base:.1f} s ({rate_base:.0f} resources/s), "
        f"with {args.subscriptions} Subscriptions {t_subs:.1f} s ({rate_subs:.0f} resources/s): "
        f"slowdown {slowdown:+.1f} %"
    )
    problems = []
    if any(r["failed"] for r in rows):
        problems.append("resources failed to load")
    if any(r["active"] != r["subscriptions"] for r in rows):
        problems.append("not every Subscription is active")
    if any(r["queued"] for r in base) or not all(r["queued"] for r in with_subs):
        problems.append("notifications queued without Subscriptions, or none with them")
    if any(r["delivered"] for r in rows):
        problems.append("notifications were delivered (a worker ran)")
    ok = slowdown <= 10 and not problems
    detail = f"slowdown {slowdown:+.1f} % (target ≤ 10 %)" + "".join(f"; {p}" for p in problems)
    verdict(f"ingest with {args.subscriptions} active Subscriptions", ok, detail)
    return ok, {"rows": rows, "slowdown_pct": round(slowdown, 2)}


# --- 2. rest-hook delivery by one worker ---------------------------------------------------

CODES = "http://example.org/bench-codes"


def hook_subscriptions(n: int, hook: Hook) -> list[dict[str, Any]]:
    """Subscription k hears code ``c{k}``; every fifth has no payload (empty POSTs)."""
    return [
        subscription(f"Observation?code={CODES}|c{k}", f"{hook.base}/hook/{k}", payload=k % 5 != 4)
        for k in range(n)
    ]


def observation(code: str, patient: int, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": CODES, "code": code}]},
        "subject": {"reference": f"Patient/bench-{patient}"},
        "effectiveDateTime": "2024-05-01T08:30:00Z",
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
    }


@dataclass(frozen=True, slots=True)
class Written:
    id: str
    bundle: int
    at: float  # time.monotonic() when the Bundle POST returned


def write_observations(
    http: httpx.Client, n: int, subs: int, size: int
) -> tuple[dict[int, list[Written]], float]:
    """``n`` Observations, the i-th coded for Subscription i % subs, in Bundles of
    ``size`` POSTed one after another; per Subscription what was written, in order."""
    written: dict[int, list[Written]] = defaultdict(list)
    started = time.monotonic()
    for b, first in enumerate(range(0, n, size)):
        keys = [i % subs for i in range(first, min(n, first + size))]
        entries = [
            {
                "resource": observation(f"c{k}", i % 20, 70 + i % 100),
                "request": {"method": "POST", "url": "Observation"},
            }
            for i, k in zip(range(first, first + len(keys)), keys, strict=True)
        ]
        answer = transaction(http, entries)
        at = time.monotonic()
        for k, entry in zip(keys, answer["entry"], strict=True):
            location = entry["response"]["location"]  # Observation/<id>/_history/1
            written[k].append(Written(location.split("/")[1], b, at))
    return written, time.monotonic() - started


@dataclass
class DeliveryCheck:
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    bad_bodies: int = 0
    out_of_order: int = 0  # Subscriptions whose notifications came out of write order
    latencies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.unexpected or self.bad_bodies or self.out_of_order
        )


def check_deliveries(
    hits: list[Hit], written: dict[int, list[Written]], payload: dict[int, bool]
) -> DeliveryCheck:
    """Per Subscription: PUTs by resource id (exactly the ids written, once each, with
    the version written); empty POSTs by count; both in the order of the Bundles."""
    check = DeliveryCheck()
    by_sub: dict[int, list[Hit]] = defaultdict(list)
    for hit in hits:
        parts = hit.path.strip("/").split("/")  # hook, k[, Observation, id]
        if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) not in payload:
            check.unexpected += 1
            continue
        by_sub[int(parts[1])].append(hit)
    for k, with_payload in payload.items():
        expected = written.get(k, [])
        got = by_sub.get(k, [])
        if with_payload:
            by_id = {w.id: w for w in expected}
            counts = Counter(h.path.rsplit("/", 1)[-1] for h in got)
            check.lost += sum(1 for w in expected if w.id not in counts)
            check.duplicated += sum(c - 1 for i, c in counts.items() if i in by_id and c > 1)
            bundles = []
            for h in got:
                rid = h.path.rsplit("/", 1)[-1]
                w = by_id.get(rid)
                if w is None or h.method != "PUT" or not h.path.endswith(f"/Observation/{rid}"):
                    check.unexpected += 1
                    continue
                body = orjson.loads(h.body) if h.body else {}
                if (
                    body.get("resourceType") != "Observation"
                    or body.get("id") != rid
                    or body.get("meta", {}).get("versionId") != "1"
                    or body.get("code", {}).get("coding", [{}])[0].get("code") != f"c{k}"
                ):
                    check.bad_bodies += 1
                check.latencies.append(h.at - w.at)
                bundles.append(w.bundle)
        else:
            bad = [h for h in got if h.method != "POST" or h.body]
            check.bad_bodies += len(bad)
            check.lost += max(0, len(expected) - len(got))
            check.duplicated += max(0, len(got) - len(expected))
            pairs = list(zip(got, expected, strict=False))  # the n-th POST: the n-th written
            check.latencies += [h.at - w.at for h, w in pairs]
            bundles = [w.bundle for _, w in pairs]
        if bundles != sorted(bundles):
            check.out_of_order += 1
    return check


def deliver(args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    workers = args.workers or 1
    n, subs = args.notifications, args.hooks
    if args.backlog and args.broker == "mongodb":
        raise SystemExit("--backlog needs a broker: with MongoDB's, serve runs a worker at once")
    mode = "queued before the worker starts" if args.backlog else "worker running during writes"
    print(
        f"== deliver: {n} rest-hook notifications to {subs} Subscriptions, {workers} worker(s), "
        f"broker {args.broker}, {mode} ==",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-deliver-") as tmp,
        hook_server() as hook,
    ):
        port = hook.server_address[1]
        env = base_env(args.broker, FHIR_OUTBOUND_ALLOW=f"127.0.0.1:{port}")
        with running(tmp, env, args.api_workers, 300) as stack:
            http, mc = stack.http, stack.mongo
            queue = mc[DATABASE][NOTIFICATIONS]
            patients = [
                {
                    "resource": {"resourceType": "Patient", "id": f"bench-{p}"},
                    "request": {"method": "PUT", "url": f"Patient/bench-{p}"},
                }
                for p in range(20)
            ]
            transaction(http, patients)
            resources = hook_subscriptions(subs, hook)
            warm = subscription(f"Observation?code={CODES}|warm", f"{hook.base}/warm", True)
            subscribe_all(http, [*resources, warm])
            time.sleep(1.5)  # every API process has loaded them
            payload = {k: "payload" in r["channel"] for k, r in enumerate(resources)}
            if not args.backlog:
                stack.start_workers(workers, args.broker)
                # the whole path works (worker up, dispatcher polling) before the clock
                warm_obs = {
                    "resource": observation("warm", 0, 1),
                    "request": {"method": "POST", "url": "Observation"},
                }
                transaction(http, [warm_obs])
                if not wait_until(lambda: hook.count("/warm") > 0, 120):
                    raise RuntimeError("the warm-up notification never arrived")
            written, write_s = write_observations(http, n, subs, args.bundle_size)
            print(
                f"  wrote {n} Observations in {write_s:.1f} s ({n / write_s:.0f}/s), "
                f"bundles of {args.bundle_size}; {queue.count_documents({})} notifications "
                "queued at the end of the writes",
                flush=True,
            )
            started = time.monotonic()
            if args.backlog:
                stack.start_workers(workers, args.broker)
            # wait for all, giving up after 60 s without progress
            last_count, last_change = -1, time.monotonic()
            while hook.count("/hook/") < n and time.monotonic() - last_change < 60:
                now_count = hook.count("/hook/")
                if now_count != last_count:
                    last_count, last_change = now_count, time.monotonic()
                time.sleep(0.2)
            drained = wait_until(lambda: queue.count_documents({}) == 0, 30)
            time.sleep(1.0)  # a late duplicate would show now
            left = queue.count_documents({})
        hits = [h for h in hook.snapshot() if h.path.startswith("/hook/")]
    check = check_deliveries(hits, written, payload)
    ats = sorted(h.at for h in hits)
    rate = (len(ats) - 1) / (ats[-1] - ats[0]) if len(ats) > 1 and ats[-1] > ats[0] else 0.0
    puts = sum(1 for h in hits if h.method == "PUT")
    print(
        f"  received {len(hits)} of {n} ({puts} PUT, {len(hits) - puts} empty POST); "
        f"{rate:.0f} notifications/s from the first to the last "
        f"({ats[-1] - ats[0] if ats else 0:.1f} s)"
    )
    if args.backlog and ats:
        print(f"  first notification {ats[0] - started:.1f} s after the worker was started")
    else:
        print(f"  latency after the write returned: {spread(check.latencies, ms=True)}")
    print(
        f"  lost {check.lost}, duplicated {check.duplicated}, unexpected {check.unexpected}, "
        f"bad bodies {check.bad_bodies}, Subscriptions out of write order {check.out_of_order}; "
        f"left in the queue {left}{'' if drained else ' (not drained)'}"
    )
    ok = rate >= 200 and check.ok and left == 0 and len(hits) == n
    detail = f"{rate:.0f} notifications/s (target ≥ 200)"
    if not check.ok or left or len(hits) != n:
        detail += "; deliveries lost, duplicated or wrong"
    verdict(f"one worker delivers rest-hook notifications ({workers} worker(s) ran)", ok, detail)
    return ok, {
        "notifications": n,
        "received": len(hits),
        "per_s": round(rate, 1),
        "write_s": round(write_s, 2),
        "latency_median_s": statistics.median(check.latencies) if check.latencies else None,
        "latency_p95_s": percentile(check.latencies, 95) if check.latencies else None,
        "lost": check.lost,
        "duplicated": check.duplicated,
        "unexpected": check.unexpected,
        "bad_bodies": check.bad_bodies,
        "out_of_order": check.out_of_order,
        "left_in_queue": left,
    }


# --- 3. reminders due in the same minute ---------------------------------------------------

LEAD = timedelta(hours=2)
CHUNK = 500
REMINDER = "urn:fhir-server:communication-category|appointment-reminder"


def number(i: int) -> tuple[str, str]:
    """Patient i's mobile: (national, E.164)."""
    return f"0990{i:06d}", f"+593990{i:06d}"


def load(http: httpx.Client, entries: list[dict[str, Any]], threads: int = 4) -> float:
    started = time.monotonic()
    chunks = [entries[i : i + CHUNK] for i in range(0, len(entries), CHUNK)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda c: transaction(http, c), chunks))
    return time.monotonic() - started


def reminder_patients(n: int) -> list[dict[str, Any]]:
    return [
        {
            "resource": {
                "resourceType": "Patient",
                "id": f"bp{i}",
                "name": [{"family": "Prueba", "given": [f"P{i}"]}],
                "telecom": [{"system": "phone", "value": number(i)[0]}],
            },
            "request": {"method": "PUT", "url": f"Patient/bp{i}"},
        }
        for i in range(n)
    ]


def appointments(n: int, minute: datetime) -> tuple[list[dict[str, Any]], list[datetime]]:
    """Patient i's appointment starts LEAD after its reminder's due time, minute + i/n min."""
    step = timedelta(seconds=60) / n
    dues = [minute + step * i for i in range(n)]
    entries = []
    for i, due in enumerate(dues):
        start = due + LEAD
        entries.append(
            {
                "resource": {
                    "resourceType": "Appointment",
                    "status": "booked",
                    "start": start.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                    "end": (start + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "participant": [
                        {"actor": {"reference": f"Patient/bp{i}"}, "status": "accepted"},
                        {
                            "actor": {"display": "Dra. Vega", "type": "Practitioner"},
                            "status": "accepted",
                        },
                    ],
                },
                "request": {"method": "POST", "url": "Appointment"},
            }
        )
    return entries, dues


@dataclass
class ReminderCheck:
    sent: int = 0
    duplicates: int = 0
    missing: int = 0
    strays: int = 0  # messages to numbers no appointment has
    early: int = 0  # messages that arrived before their due time
    latencies: list[float] = field(default_factory=list)
    last: float = 0.0  # time.time() of the last message


def check_reminders(twilio: TwilioServer, dues: list[datetime]) -> ReminderCheck:
    with twilio.lock:
        messages = list(twilio.messages)
    by_number: dict[str, list[float]] = defaultdict(list)
    for m in messages:
        by_number[m.to.removeprefix("whatsapp:")].append(m.at)
    check = ReminderCheck(last=max((m.at for m in messages), default=0.0))
    known = set()
    for i, due in enumerate(dues):
        e164 = number(i)[1]
        known.add(e164)
        got = by_number.get(e164, [])
        if not got:
            check.missing += 1
            continue
        check.sent += 1
        check.duplicates += len(got) - 1
        check.latencies.append(min(got) - due.timestamp())
        check.early += sum(1 for t in got if t < due.timestamp())
    check.strays = sum(len(ts) for n, ts in by_number.items() if n not in known)
    return check


def reminders(args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    n, workers = args.reminders, args.workers or 2
    print(
        f"== reminders: {n} due in one minute, {workers} worker(s) (sending "
        f"{args.send_concurrency} at once each), broker {args.broker} ==",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-reminders-") as tmp,
        twilio_server() as twilio,
    ):
        env = base_env(
            args.broker,
            FHIR_REMINDER_LEAD_TIMES="2h",
            FHIR_REMINDER_CONCURRENCY=str(args.send_concurrency),
            FHIR_TWILIO_ACCOUNT_SID=ACCOUNT,
            FHIR_TWILIO_AUTH_TOKEN=TOKEN,
            FHIR_TWILIO_WHATSAPP_FROM=WHATSAPP_FROM,
            FHIR_TWILIO_SMS_FROM=SMS_FROM,
            FHIR_TWILIO_API_BASE=twilio.base,
        )
        with running(tmp, env, args.api_workers, 600) as stack:
            http, mc = stack.http, stack.mongo
            stack.start_workers(workers, args.broker)
            seconds = load(http, reminder_patients(n))
            print(f"  {n} patients loaded in {seconds:.1f} s", flush=True)
            # M: the first whole minute after the appointments are surely loaded (they
            # cost more than the patients: their rules plan the reminders)
            margin = timedelta(seconds=30 + 3 * seconds)
            minute = (datetime.now(UTC) + margin).replace(second=0, microsecond=0)
            minute += timedelta(minutes=1)
            entries, dues = appointments(n, minute)
            seconds = load(http, entries)
            ahead = (minute - datetime.now(UTC)).total_seconds()
            print(
                f"  {n} appointments loaded in {seconds:.1f} s; due from {minute:%H:%M:%S} "
                f"UTC, in {ahead:.0f} s",
                flush=True,
            )
            deadline = minute.timestamp() + 60 + 120 + 30  # late ones count as late
            while time.time() < deadline and len(twilio.messages) < n:
                time.sleep(0.5)
            # every claim settled (none claimed or sending): no later duplicate can come
            claims = mc[DATABASE][CLAIMS]
            wait_until(lambda: claims.count_documents({"state": {"$in": list(OPEN)}}) == 0, 60)
            time.sleep(2.0)
            states = Counter(d["state"] for d in claims.find({}, {"state": 1}))
            r = http.get("/Communication", params={"category": REMINDER, "_summary": "count"})
            communications = int(r.json()["total"])
        check = check_reminders(twilio, dues)
    print(
        f"  sent {check.sent} of {n}; duplicates {check.duplicates}; missing {check.missing}; "
        f"to unknown numbers {check.strays}; before their due time {check.early}"
    )
    if check.latencies:
        print(f"  latency after due: {spread(check.latencies)}, min {min(check.latencies):.2f} s")
        print(f"  last message {check.last - minute.timestamp():.1f} s after the minute began")
    print(f"  claims {dict(states)}; Communications recorded {communications}")
    worst = max(check.latencies, default=math.inf)
    problems = []
    if ahead < 0:
        problems.append("the appointments were still loading when the minute began")
    if check.missing or check.duplicates or check.strays or check.early:
        problems.append("not each sent exactly once")
    if communications != n or states.get("sent", 0) != n:
        problems.append(f"{states.get('sent', 0)} claims sent, {communications} Communications")
    ok = worst <= 120 and not problems
    detail = f"slowest {worst:.1f} s after due (target ≤ 120 s)" + "".join(
        f"; {p}" for p in problems
    )
    verdict(f"{n} reminders due in one minute, each sent once within 2 minutes", ok, detail)
    return ok, {
        "reminders": n,
        "sent": check.sent,
        "duplicates": check.duplicates,
        "missing": check.missing,
        "strays": check.strays,
        "latency_median_s": statistics.median(check.latencies) if check.latencies else None,
        "latency_p95_s": percentile(check.latencies, 95) if check.latencies else None,
        "latency_max_s": worst if check.latencies else None,
        "communications": communications,
        "claims": dict(states),
    }


# --- main ----------------------------------------------------------------------------------

PARTS: dict[str, Callable[[argparse.Namespace], tuple[bool, dict[str, Any]]]] = {
    "ingest": ingest,
    "deliver": deliver,
    "reminders": reminders,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", default="all", choices=[*PARTS, "all"])
    parser.add_argument("--subscriptions", type=int, default=1000, help="ingest: Subscriptions")
    parser.add_argument("--rounds", type=int, default=2, help="ingest: rounds of base + subs")
    parser.add_argument("--bundles", type=int, help="ingest: only the first N Synthea bundles")
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="ingest: bundles directory")
    parser.add_argument("--concurrency", type=int, default=4, help="ingest: bundles at once")
    parser.add_argument(
        "--without-live",
        action="store_true",
        help="ingest: no chained or _has criteria (queried at each write)",
    )
    parser.add_argument(
        "--notifications", type=int, default=4000, help="deliver: Observations written"
    )
    parser.add_argument("--hooks", type=int, default=50, help="deliver: Subscriptions")
    parser.add_argument("--bundle-size", type=int, default=100, help="deliver: entries per Bundle")
    parser.add_argument(
        "--backlog", action="store_true", help="deliver: write all before the worker starts"
    )
    parser.add_argument("--reminders", type=int, default=10_000, help="reminders due in a minute")
    parser.add_argument(
        "--send-concurrency", type=int, default=16, help="reminders: sends at once per worker"
    )
    parser.add_argument(
        "--workers", type=int, help="fhir-server worker processes (deliver 1, reminders 2)"
    )
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn workers of serve")
    parser.add_argument(
        "--broker", default=REDIS, help="deliver, reminders: 'mongodb' for the MongoDB broker"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    parts = list(PARTS) if args.part == "all" else [args.part]
    results: dict[str, Any] = {}
    passed: dict[str, bool] = {}
    for part in parts:
        passed[part], results[part] = PARTS[part](args)
        print(flush=True)
    if len(parts) > 1:
        for part in parts:
            print(f"{'PASS' if passed[part] else 'FAIL'}  {part}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    sys.exit(0 if all(passed.values()) else 1)


if __name__ == "__main__":
    main()
