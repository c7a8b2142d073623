"""`fhir-server import profile` on a generated legacy database.

    .venv/bin/python benchmarks/import_profile.py                    # 50,000 patients
    .venv/bin/python benchmarks/import_profile.py --patients 5000 --postgres

1. ``make-sample --schema clinica`` fills a fresh MariaDB database (or PostgreSQL with
   --postgres) with --patients (50,000 patients make about 870,000 rows).
2. ``fhir-server import profile --mapping clinica`` runs --rounds times as the CLI runs
   (its own process), timed end to end. Prints each time, the median and the slowest
   (p95 of so few runs is the slowest), and the rows the profile read.

The target (issue 20): under 60 s for 50,000 patients.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from importers.sample import ensure_database, make_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mariadb", default="mysql+pymysql://root@127.0.0.1:3306")
    ap.add_argument("--postgres-server", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    ap.add_argument("--postgres", action="store_true", help="PostgreSQL instead of MariaDB")
    args = ap.parse_args()

    name = f"bench_profile_{uuid.uuid4().hex[:8]}"
    server = args.postgres_server if args.postgres else args.mariadb
    url = f"{server}/{name}" + ("" if args.postgres else "?charset=utf8mb4")
    ensure_database(url)
    try:
        started = time.perf_counter()
        counts = make_sample(url, "clinica", args.patients, seed=7)
        rows = sum(v for k, v in counts.items() if not k.startswith("dirt:"))
        print(
            f"sample: {args.patients} patients, {rows} rows ({time.perf_counter() - started:.0f} s)"
        )
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "profile.json"
            for i in range(args.rounds):
                t = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "fhir_server", "import", "profile", "--source", url,
                     "--mapping", "clinica", "--json", str(out)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                times.append(time.perf_counter() - t)
                if done.returncode not in (0, 1):
                    raise SystemExit(done.stderr)
                read = sum(c["rows"] for c in json.loads(out.read_text())["columns"])
                print(f"round {i + 1}: {times[-1]:.1f} s ({read} column values read)")
        print(
            f"import profile: median {statistics.median(times):.1f} s, slowest {max(times):.1f} s"
        )
    finally:
        admin = server + ("/postgres" if args.postgres else "")
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            force = " WITH (FORCE)" if args.postgres else ""
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"{force}' if args.postgres
                              else f"DROP DATABASE IF EXISTS `{name}`"))  # fmt: skip
        engine.dispose()


if __name__ == "__main__":
    main()
