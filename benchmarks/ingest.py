"""Transaction ingest: the 120 Synthea bundles through ``POST [base]`` into a real server.

    .venv/bin/python benchmarks/ingest.py                        # workers 1 2 x concurrency 1 4
    .venv/bin/python benchmarks/ingest.py --workers 2 --concurrency 4 --profile
    .venv/bin/python benchmarks/ingest.py --url http://127.0.0.1:8080/fhir --concurrency 4
    .venv/bin/python benchmarks/ingest.py --terminology --env FHIR_VALIDATE_BINDINGS=false

Every run starts its own ``fhir-server serve`` (uvicorn ``--workers N``) with a fresh
embedded mongod in a new data dir, so each run starts from an empty database and a cold
mongod cache (``--terminology``: with the R4 core terminology loaded at start, as
``serve`` does by default, so that bindings are checked; ``--env``: server settings).
The upload is ``fhir_server.loader`` itself, as ``fhir-server load`` runs it.
Peak RSS is the largest sum seen while sampling /proc every 0.1 s, over the server's
Python processes (uvicorn supervisor and workers) and over mongod, separately. The loader
runs on the same 2-core machine as the server and mongod, so its CPU cost is included.

``--profile`` runs ``py-spy record --nonblocking -f raw`` on the server process tree for
the run and prints the functions with the most samples, inclusive and self.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synthea import SYNTHEA
from fhir_server import loader
from fhir_server.testing import ServerProcess

PY_SPY = Path(sys.executable).parent / "py-spy"
PY_SPY_RATE = 100


# --- peak RSS of a process tree --------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_kib(pid: int) -> tuple[str, int]:
    """(command name, resident KiB); ("", 0) for a process that is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "", 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields.get("Name", "").strip(), int(fields.get("VmRSS", "0 kB").split()[0])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class RssSampler(threading.Thread):
    """Samples the tree: peak summed RSS of the Python processes and of mongod, and the
    CPU seconds each group used meanwhile (which side is the bottleneck)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {"server": 0, "mongod": 0}
        self.peak_process_kib = 0  # the largest one Python process of the server reached
        self.first: dict[int, int] = {}
        self.last: dict[int, tuple[str, int]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        sums = {"server": 0, "mongod": 0}
        for p in tree(self.pid):
            name, kib = rss_kib(p)
            group = "mongod" if name == "mongod" else "server"
            sums[group] += kib
            if group == "server":
                self.peak_process_kib = max(self.peak_process_kib, kib)
            ticks = cpu_ticks(p)
            self.first.setdefault(p, ticks)
            self.last[p] = (group, ticks)
        for k, v in sums.items():
            self.peak[k] = max(self.peak[k], v)

    def stop(self) -> dict[str, float]:
        """Peak RSS in MiB and CPU seconds, per group."""
        self.halt.set()
        self.join()
        out = {f"{k}_rss_mb": v / 1024 for k, v in self.peak.items()}
        hz = os.sysconf("SC_CLK_TCK")
        for group in ("server", "mongod"):
            ticks = sum(t - self.first[p] for p, (g, t) in self.last.items() if g == group)
            out[f"{group}_cpu_s"] = ticks / hz
        return out


# --- py-spy --------------------------------------------------------------------------------


class Profiler:
    """py-spy on the server and its worker processes, for the length of one run."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        args = [str(PY_SPY), "record", "-p", str(pid), "--nonblocking", "-f", "raw"]
        args += ["--subprocesses", "-r", str(PY_SPY_RATE), "-o", str(out)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let it attach before the load starts

    def stop(self) -> Counter[tuple[str, ...]]:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return read_raw(self.out)


def _frame(text: str) -> str:
    """'handle (fastapi/routing.py:1373)' -> 'handle (fastapi/routing.py)': functions,
    not lines, so a function's samples add up."""
    name, sep, where = text.rpartition(" (")
    if not sep:
        return text
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})"


_PROCESS_FRAMES = re.compile(r'^(?:process \d+:"[^"]*";?)+')


def read_raw(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) output: 'frame;frame;...;leaf COUNT' per line, led by
    'process PID:"cmdline"' frames with --subprocesses (dropped: workers are alike)."""
    stacks: Counter[tuple[str, ...]] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = _PROCESS_FRAMES.sub("", line).rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(_frame(f) for f in stack.split(";"))] += int(count)
    return stacks


def top_functions(stacks: Counter[tuple[str, ...]]) -> tuple[Counter[str], Counter[str]]:
    """(inclusive, self) samples per function."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for frames, n in stacks.items():
        for f in set(frames):
            inclusive[f] += n
        if frames:
            self_time[frames[-1]] += n
    return inclusive, self_time


def _own_code(frame: str) -> bool:
    """The server's own functions below the start-up frames (those are ~100 %)."""
    where = frame.rpartition(" (")[2]
    if where.startswith(("fhir_server/__main__.py", "fhir_server/cli.py")):
        return False
    return "fhir_server/" in where or ("/" not in where and not where.startswith("<"))


def print_profile(stacks: Counter[tuple[str, ...]], seconds: float, top: int) -> None:
    total = sum(stacks.values())
    if not total:
        print("  (py-spy recorded no samples)")
        return
    busy = total / (seconds * PY_SPY_RATE)
    print(f"  {total} samples: server threads on CPU {busy:.2f} cores on average")
    inclusive, self_time = top_functions(stacks)
    own = Counter({k: v for k, v in inclusive.items() if _own_code(k)})
    for title, counts in (("inclusive (fhir_server code)", own), ("self", self_time)):
        print(f"  top {top} by {title} samples:")
        for name, n in counts.most_common(top):
            print(f"    {100 * n / total:5.1f}%  {name}")


# --- runs ----------------------------------------------------------------------------------


def upload(base: str, concurrency: int, data: Path) -> tuple[loader.Summary, float]:
    """The load, and the CPU seconds this process (the loader) spent on it."""
    options = loader.Options(base_url=base, concurrency=concurrency)
    cpu = time.process_time()
    summary = asyncio.run(loader.load([data], options))
    return summary, time.process_time() - cpu


def report(row: dict[str, object], summary: loader.Summary) -> None:
    rss = (
        f"\n  peak RSS server {row['server_rss_mb']:.0f} MiB, mongod {row['mongod_rss_mb']:.0f} "
        f"MiB; CPU server {row['server_cpu_s']:.1f} s, mongod {row['mongod_cpu_s']:.1f} s"
        if "server_rss_mb" in row
        else ""
    )
    print(
        f"workers={row['workers']} c={row['concurrency']:<2} {summary.succeeded} resources "
        f"in {summary.elapsed_s:6.1f} s  {summary.per_second:7.0f} resources/s  "
        f"failed {summary.failed}  loader CPU {row['loader_cpu_s']:.1f} s{rss}",
        flush=True,
    )
    for failure in summary.failures[:5]:
        print(f"  {failure.describe()}")


def own_server_run(args: argparse.Namespace, workers: int, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(item.split("=", 1) for item in args.env)
        server = ServerProcess(
            Path(tmp) / "data", workers=workers, terminology=args.terminology, env=env
        ).start(timeout=120)
        try:
            assert server.pid is not None
            sampler = RssSampler(server.pid)
            sampler.start()
            profiler = Profiler(server.pid, Path(tmp) / "pyspy.txt") if args.profile else None
            summary, cpu = upload(server.base_url, concurrency, args.data)
            sampled = sampler.stop()
            stacks = profiler.stop() if profiler else None
        finally:
            server.stop()
    row = {"workers": workers, "concurrency": concurrency, **_figures(summary, cpu)}
    row |= {k: round(v, 1) for k, v in sampled.items()}
    report(row, summary)
    if stacks is not None:
        print_profile(stacks, summary.elapsed_s, args.top)
    return row


def _figures(summary: loader.Summary, cpu: float) -> dict[str, object]:
    return {
        "loader_cpu_s": round(cpu, 2),
        "resources": summary.succeeded,
        "failed": summary.failed,
        "seconds": round(summary.elapsed_s, 2),
        "per_s": round(summary.per_second, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="load into this server instead of starting one")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="bundles directory")
    parser.add_argument("--profile", action="store_true", help="py-spy the server per run")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile table")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--terminology", action="store_true", help="load the R4 core terminology at start"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a server setting"
    )
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    if args.url:
        for c in args.concurrency:
            summary, cpu = upload(args.url, c, args.data)
            row: dict[str, object] = {"workers": "?", "concurrency": c, **_figures(summary, cpu)}
            report(row, summary)
            rows.append(row)
    else:
        rows = [own_server_run(args, w, c) for w in args.workers for c in args.concurrency]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
