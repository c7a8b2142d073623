"""The side-by-side workload of issue 19, for this server: one table of the figures
Medplum 5.0.10 was measured on, with 1 and 2 API workers.

    .venv/bin/python benchmarks/peers.py                          # workers 1 and 2
    .venv/bin/python benchmarks/peers.py --workers 1 --duration 5 --repeat 1
    .venv/bin/python benchmarks/peers.py --env FHIR_AUDIT=false   # a server setting

Per worker count, one fresh ``fhir-server serve`` (embedded mongod, new data dir) takes
the 120 Synthea bundles through ``POST [base]`` at concurrency 1, and a second fresh one
takes them at concurrency 4 and then serves the HTTP figures. Each HTTP figure is driven
by Debian's ``wrk`` (``apt-get install wrk``; written in C, one thread, so the client
takes little of the 2 cores the server and mongod share), for ``--duration`` seconds
after a 2 s warm-up, ``--repeat`` times: the table gives the median of the runs' rates
and of their p50 and p95 latencies. Searches run at one connection, as the peer figures
did. The values (patient P, family X, code C) are read from the loaded data.
"CPU a + b ms" is what the server's Python processes (a: the API and the Celery worker
that ``serve`` starts) and its mongod (b) spent per request over the timed runs, from
/proc; ``--profile FIGURE`` adds a py-spy profile. "then c ms" is what they spent per
request after the runs, making the audit records staged during them (docs/audit.md,
"Cost"): each figure waits for that work to end before it starts.

The Medplum column is the issue's measurement (same machine, same data, same wrk
workload, one run); it is printed for the ratio and is not re-measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ingest import Profiler, RssSampler, print_profile, upload
from benchmarks.synthea import SYNTHEA
from fhir_server.testing import ServerProcess

# Issue 19's side-by-side run of Medplum 5.0.10: (rate per second, p50 in ms).
MEDPLUM: dict[str, tuple[float | None, float | None]] = {
    "ingest c1": (109, None),
    "ingest c4": (138, None),
    "GET Patient/{id} c1": (420, 2.03),
    "GET Patient/{id} c16": (493, None),
    "POST Patient c16": (193, 75.0),
    "Patient?family=X": (None, 5.53),
    "Patient?birthdate=ge1970-01-01": (None, 10.9),
    "Observation?patient=P&code=C": (None, 5.2),
    "Observation?code=C&_count=50": (None, 10.8),
    "Encounter?patient=P&_sort=-date": (None, 5.0),
}
# The absolute targets on this machine.
TARGETS = {
    "ingest c4": "≥ 2,500/s",
    "GET Patient/{id} c1": "p50 ≤ 0.8 ms",
    "GET Patient/{id} c16": "≥ 2,000/s",
    "POST Patient c16": "≥ 500/s",
    "Patient?family=X": "p50 ≤ 2.77 ms",
    "Patient?birthdate=ge1970-01-01": "p50 ≤ 5.45 ms",
    "Observation?patient=P&code=C": "p50 ≤ 2.6 ms",
    "Observation?code=C&_count=50": "p50 ≤ 5 ms",
    "Encounter?patient=P&_sort=-date": "p50 ≤ 2.5 ms",
}

STAGED = re.compile(r"^fhir_audit_staged_units (\S+)", re.M)

# wrk's report as one JSON line; status errors are non-2xx/3xx answers.
_LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

PATIENT = {
    "resourceType": "Patient",
    "name": [{"family": "Núñez", "given": ["José"]}],
    "gender": "male",
    "birthDate": "1970-05-17",
    "telecom": [{"system": "phone", "value": "+593-2-2123456"}],
    "address": [{"line": ["Av. Amazonas 123"], "city": "Quito", "country": "EC"}],
}


def wrk(
    url: str, connections: int, seconds: float, post: bytes | None, tmp: Path
) -> dict[str, Any]:
    """One wrk run; its rate, p50 and p95 (ms). Any error or non-2xx answer fails."""
    script = tmp / "wrk.lua"
    head = ""
    if post is not None:
        body = post.decode().replace("\\", "\\\\").replace('"', '\\"')
        head = f'wrk.method = "POST"\nwrk.body = "{body}"\n'
        head += 'wrk.headers["Content-Type"] = "application/fhir+json"\n'
    script.write_text(head + 'wrk.headers["Accept"] = "application/fhir+json"\n' + _LUA_DONE)
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    figures = json.loads(line[4:])
    if figures["errors"]:
        raise SystemExit(f"{url}: {figures['errors']} errors or non-2xx answers\n{out}")
    return {
        "per_s": figures["requests"] / (figures["duration_us"] / 1e6),
        "p50_ms": figures["p50_us"] / 1000,
        "p95_ms": figures["p95_us"] / 1000,
    }


def settled(base: str, limit: float = 300.0) -> None:
    """Until the server has made the audit records it staged while busy (docs/audit.md,
    "Cost"), so that no figure is billed for an earlier one's."""
    metrics = base.split("/fhir", 1)[0] + "/metrics"
    time.sleep(0.5)  # the audit sink's last flush
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = STAGED.search(httpx.get(metrics).text)
        if found is None or float(found.group(1)) == 0:
            return
        time.sleep(1.0)
    raise SystemExit(f"{base}: staged audit records not made within {limit:g} s")


def measure(
    url: str,
    connections: int,
    args: argparse.Namespace,
    tmp: Path,
    server_pid: int,
    post: bytes | None = None,
    profile: bool = False,
) -> dict[str, float]:
    """Warm-up, then ``--repeat`` runs; the medians of their rate, p50 and p95, and
    the CPU the server's Python processes and its mongod spent per request over all
    runs (from /proc: where the time went). With ``profile``, py-spy records the
    server's processes over the timed runs."""
    wrk(url, connections, 2, post, tmp)
    settled(url)
    profiler = Profiler(server_pid, tmp / "pyspy.txt") if profile else None
    cpu = RssSampler(server_pid)
    cpu.start()
    runs = [wrk(url, connections, args.duration, post, tmp) for _ in range(args.repeat)]
    used = cpu.stop()
    if profiler is not None:
        print_profile(profiler.stop(), args.duration * args.repeat, args.top)
    row = {k: statistics.median(r[k] for r in runs) for k in ("per_s", "p50_ms", "p95_ms")}
    requests = sum(r["per_s"] for r in runs) * args.duration
    row["server_cpu_ms"] = 1000 * used["server_cpu_s"] / requests
    row["mongod_cpu_ms"] = 1000 * used["mongod_cpu_s"] / requests
    later = RssSampler(server_pid)  # the audit records made once the runs are over
    later.start()
    settled(url)
    deferred = later.stop()
    row["later_cpu_ms"] = 1000 * (deferred["server_cpu_s"] + deferred["mongod_cpu_s"]) / requests
    return row


def values(base: str) -> dict[str, str]:
    """P, X and C from the loaded data: C is the commonest code on a page of
    Observations, P the subject of one of them and X that patient's family name."""
    with httpx.Client(base_url=base, timeout=60) as http:
        page = http.get("/Observation", params={"_count": "500"}).json()
        observations = [e["resource"] for e in page["entry"]]

        def first_code(o: dict[str, Any]) -> str:
            coding = o["code"]["coding"][0]
            return f"{coding['system']}|{coding['code']}"

        code = Counter(map(first_code, observations)).most_common(1)[0][0]
        first = next(o for o in observations if first_code(o) == code)
        pid = first["subject"]["reference"].removeprefix("Patient/")
        family = http.get(f"/Patient/{pid}").json()["name"][0]["family"]
    return {"P": pid, "X": quote(family, safe=""), "C": quote(code, safe="")}


def one_worker_count(workers: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    env = dict(item.split("=", 1) for item in args.env)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with ServerProcess(Path(tmp) / "c1", workers=workers, env=env) as server:
            summary, _ = upload(server.base_url, 1, args.data)
            rows["ingest c1"] = {"per_s": summary.per_second}
        with ServerProcess(Path(tmp) / "c4", workers=workers, env=env) as server:
            assert server.pid is not None
            peak = RssSampler(server.pid)  # the whole run: its largest API process
            peak.start()
            summary, _ = upload(server.base_url, 4, args.data)
            rows["ingest c4"] = {"per_s": summary.per_second}
            v = values(server.base_url)
            base = server.base_url
            gets = {
                "GET Patient/{id} c1": (f"{base}/Patient/{v['P']}", 1),
                "GET Patient/{id} c16": (f"{base}/Patient/{v['P']}", 16),
                "Patient?family=X": (f"{base}/Patient?family={v['X']}", 1),
                "Patient?birthdate=ge1970-01-01": (f"{base}/Patient?birthdate=ge1970-01-01", 1),
                "Observation?patient=P&code=C": (
                    f"{base}/Observation?patient={v['P']}&code={v['C']}",
                    1,
                ),
                "Observation?code=C&_count=50": (f"{base}/Observation?code={v['C']}&_count=50", 1),
                "Encounter?patient=P&_sort=-date": (
                    f"{base}/Encounter?patient={v['P']}&_sort=-date",
                    1,
                ),
            }
            body = json.dumps(PATIENT).encode()
            posts = {"POST Patient c16": (f"{base}/Patient", 16)}
            for name, (url, c) in [*gets.items(), *posts.items()]:
                post = body if name in posts else None
                profile = name in args.profile
                rows[name] = measure(url, c, args, Path(tmp), server.pid, post, profile)
                print(f"  workers={workers} {name}: {fmt(rows[name])}", flush=True)
            peak.stop()
            rows["peak worker RSS"] = {"mb": peak.peak_process_kib / 1024}
    return rows


def fmt(row: dict[str, float]) -> str:
    parts = []
    if "per_s" in row:
        parts.append(f"{row['per_s']:,.0f}/s")
    if "p50_ms" in row:
        parts.append(f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms")
    if "server_cpu_ms" in row:
        parts.append(f"CPU {row['server_cpu_ms']:.2f} + {row['mongod_cpu_ms']:.2f} ms")
    if row.get("later_cpu_ms", 0) >= 0.01:
        parts.append(f"then {row['later_cpu_ms']:.2f} ms")
    if "mb" in row:
        parts.append(f"{row['mb']:.0f} MB")
    return ", ".join(parts)


def ratio(name: str, row: dict[str, float]) -> str:
    """How many times Medplum's figure: rates divided, latencies inverted."""
    rate, p50 = MEDPLUM.get(name, (None, None))
    if p50 is not None and "p50_ms" in row:
        return f"{p50 / row['p50_ms']:.2f}x"
    if rate is not None and "per_s" in row:
        return f"{row['per_s'] / rate:.2f}x"
    return ""


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    counts = sorted(results)
    head = (
        "| figure | Medplum | " + " | ".join(f"workers={w} | ratio" for w in counts) + " | target |"
    )
    lines = [head, "|" + "---|" * (3 + 2 * len(counts))]
    for name in [*MEDPLUM, "peak worker RSS"]:
        rate, p50 = MEDPLUM.get(name, (None, None))
        peer = ", ".join(
            x for x in (f"{rate:,.0f}/s" if rate else "", f"p50 {p50} ms" if p50 else "") if x
        )
        cells = []
        for w in counts:
            row = results[w][name]
            cells += [fmt(row), ratio(name, row)]
        target = TARGETS.get(name, "< 400 MB" if name == "peak worker RSS" else "")
        lines.append(f"| {name} | {peer} | " + " | ".join(cells) + f" | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per figure")
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="bundles directory")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="FIGURE",
        help="py-spy the server over this figure's runs, e.g. 'POST Patient c16'",
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a server setting"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/peers.py needs wrk: apt-get install wrk")
    if not args.data.is_dir():
        raise SystemExit(f"no Synthea bundles at {args.data} (--data DIR)")
    print(f"{os.cpu_count()} cores; {args.repeat} x {args.duration:g} s per figure", flush=True)
    results = {w: one_worker_count(w, args) for w in args.workers}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
