"""Coverage-guided fuzzing in CI (issue 11: "Add an atheris fuzz target for the JSON
reader, validator and search parser, run for a bounded time in CI").

Each target in tests/fuzz/ runs in its own process for ``SECONDS`` (libFuzzer's
-max_total_time), from small valid seeds (tests/fuzz/seeds.py), and fails on any
exception other than the documented error of the function under test (a 4xx FhirError
from the reader and the parser; nothing at all from the validator, which reports
problems as issues), on an input taking more than 10 s, and on more than 2 GB of memory.
A failure shows the traceback and the input (libFuzzer prints it in base64; the
artifact is written to the test's tmp_path). The seed is fixed for repeatable CI; set
FHIR_FUZZ_SEED, or run a target by hand for longer:

    PYTHONPATH=.:tests/fuzz python tests/fuzz/fuzz_search.py -max_total_time=600 corpus/
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import seeds  # noqa: E402

SECONDS = 20
SEED = os.environ.get("FHIR_FUZZ_SEED", "11")
TARGETS = {
    "fuzz_json.py": seeds.json_seeds,
    "fuzz_validate.py": seeds.json_seeds,
    "fuzz_search.py": seeds.search_seeds,
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_runs_clean(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds.write(str(corpus), TARGETS[target]())
    args = [
        sys.executable, str(FUZZ / target),
        f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=2048",
        f"-seed={SEED}", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
    ]  # fmt: skip
    if target != "fuzz_search.py":
        args.append(f"-dict={FUZZ / 'fhir_json.dict'}")
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(FUZZ)])}
    run = subprocess.run(
        [*args, str(corpus)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        env=env,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{target} (seed {SEED}) failed:\n{_failure(output)}"
    assert "Done " in output and " runs in " in output, output[-2000:]


def _failure(output: str) -> str:
    """The uncaught exception and the crashing input, without libFuzzer's progress."""
    lines = [line for line in output.splitlines() if not line.startswith("#")]
    text = "\n".join(lines)
    start = text.find("=== Uncaught Python exception")
    return text[start:][-6000:] if start >= 0 else text[-4000:]
