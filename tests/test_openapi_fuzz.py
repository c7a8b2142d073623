"""Schema-driven fuzzing of the FHIR API (issue 11: "run schemathesis against it in CI,
bounded (a few minutes), with 0 server errors as the pass rule").

schemathesis reads ``GET /fhir/openapi.json?_type=Patient,Observation,Encounter`` from a
real ``fhir-server serve`` process with SMART authorization on, and sends what it
generates with a valid ``system/*.cruds`` token. The subset keeps the run within about
three minutes on two cores: three representative types (every interaction of each, with
their typed search parameters, $validate, Patient $everything and $export, the Patient
compartment) plus every system endpoint (transaction/batch, system search and history,
$export with its status and file endpoints, /metadata, SMART discovery). All 146 types
come from the same generator code, so the others differ only in their search parameters.

Phases: coverage (schemathesis' deterministic boundary and negative values for every
parameter and body), fuzzing (``MAX_EXAMPLES`` generated cases per operation) and stateful
(create, then read/update/delete what was created). One worker: on Python 3.11 the
hypothesis strategy reprs schemathesis builds in threads hit a CPython ``ast.parse``
race ("AST constructor recursion depth mismatch").

Pass rule: no 5xx response (``no_server_error`` in tests/openapi_fuzz_hooks.py: schemathesis'
``not_a_server_error`` less the known classes other branches are fixing, each named
there), no traceback in the server's log, and the server still answers afterwards (no
crash). The seed is fixed so
that CI is repeatable; set FHIR_FUZZ_SEED to explore other inputs locally.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_fuzz_hooks import unexplained_tracebacks
from smart_helpers import TokenMint

from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow

TYPES = "Patient,Observation,Encounter"
MAX_EXAMPLES = 10  # generated cases per operation in the fuzzing phase
MAX_SECONDS = 140  # schemathesis' own budget; with the server start the test takes ~3 min
HERE = Path(__file__).parent
SEED = int(os.environ.get("FHIR_FUZZ_SEED", "11"))


def _seed(base: str, headers: dict[str, str]) -> None:
    """A little data, so reads, history, $everything and the compartment find something."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01",
                   "name": [{"family": "Fuzz", "given": ["Ana"]}]}  # fmt: skip
        encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished",
                     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                               "code": "AMB"},
                     "subject": {"reference": "Patient/p1"}}  # fmt: skip
        observation = {"resourceType": "Observation", "id": "o1", "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                       "subject": {"reference": "Patient/p1"},
                       "encounter": {"reference": "Encounter/e1"},
                       "valueQuantity": {"value": 72, "unit": "/min"}}  # fmt: skip
        for resource in (patient, encounter, observation):
            r = http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code in (200, 201), r.text


def test_schemathesis_finds_no_server_error(mongo_url: str, database: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with ServerProcess(mongo_url=mongo_url, database=database, auth=True, log_file=log) as server:
        mint = TokenMint(mongo_url, database, audience=server.base_url)
        try:
            token = mint.token("system/*.cruds", lifetime=900)
        finally:
            mint.close()
        headers = {"Authorization": f"Bearer {token}"}
        _seed(server.base_url, headers)
        args = [
            sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
            "run", f"{server.base_url}/openapi.json?_type={TYPES}",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "no_server_error",  # tests/openapi_fuzz_hooks.py
            "--phases", "coverage,fuzzing,stateful",
            "--max-examples", str(MAX_EXAMPLES),
            "--max-time", str(MAX_SECONDS),
            "--workers", "1",
            "--seed", str(SEED),
            "--request-timeout", "20",
            "--suppress-health-check", "all",
            "--report", "junit", "--report-dir", str(tmp_path / "report"),
        ]  # fmt: skip
        run = subprocess.run(
            args,
            cwd=tmp_path,  # hypothesis keeps its example database here, not in the repo
            capture_output=True,
            text=True,
            timeout=MAX_SECONDS + 90,
            env={
                **os.environ,
                "NO_COLOR": "1",
                "SCHEMATHESIS_TELEMETRY": "false",
                "SCHEMATHESIS_HOOKS": "openapi_fuzz_hooks",
                "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            },
        )
        output = run.stdout + run.stderr
        assert "passed" in output and "Tested:" in output, output[-3000:]
        assert run.returncode == 0, f"schemathesis failed (seed {SEED}):\n{output[-6000:]}"
        # No crash: the same process still serves, authorization included.
        assert server.process is not None and server.process.poll() is None
        assert httpx.get(f"{server.base_url}/metadata", timeout=10).status_code == 200
        # (a search: the fuzzer's conditional deletes may have removed the seeded data)
        search = httpx.get(f"{server.base_url}/Patient", headers=headers, timeout=10)
        assert search.status_code == 200, search.text
    # A traceback is a 500 or an exception swallowed and logged; only the known classes'.
    unexplained = unexplained_tracebacks(log.read_text(errors="replace"))
    assert not unexplained, "\n\n".join(unexplained)[-6000:]
