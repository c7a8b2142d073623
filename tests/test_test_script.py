"""The fresh-machine test command, tools/test (issue 18): a missing prerequisite is one
line naming its apt package and exit 2, never a traceback, both from the script (its
``--check`` mode, and its normal mode when not root, which stops before the venv and
pytest) and from the tests themselves (the nginx test as a non-root user).

A machine lacking something is faked with TEST_PREREQ_ROOT (the script looks for the
prerequisites' files under it) and a PATH whose python3 is too old; the whole suite is
never run from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "test"
PRESENT = (
    "usr/bin/chromium",
    "usr/bin/npm",
    "usr/sbin/mariadbd",
    "usr/lib/postgresql/15/bin/initdb",
    "usr/sbin/nginx",
    "usr/sbin/ip",
)


def _machine(tmp: Path, lacking: str) -> Path:
    """A file tree with every prerequisite but ``lacking``."""
    for name in PRESENT:
        if name != lacking:
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    return tmp


def _environment() -> dict[str, str]:
    """Without the variables that stand in for the database packages."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FHIR_TEST_")}


def test_check_names_the_missing_chromium_in_one_line(tmp_path: Path) -> None:
    env = {**_environment(), "TEST_PREREQ_ROOT": str(_machine(tmp_path, "usr/bin/chromium"))}
    got = subprocess.run(
        [str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, env=env
    )
    assert got.returncode == 2
    assert got.stdout == ""
    lines = [ln for ln in got.stderr.splitlines() if "needs root" not in ln]
    assert lines == [
        "tools/test: missing /usr/bin/chromium for tests/test_smart_browser.py: "
        "apt-get install -y chromium"
    ]
    assert "Traceback" not in got.stderr


def test_check_names_every_missing_package(tmp_path: Path) -> None:
    env = {**_environment(), "TEST_PREREQ_ROOT": str(tmp_path)}  # an empty machine
    got = subprocess.run(
        [str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, env=env
    )
    assert got.returncode == 2
    named = [ln.rsplit("apt-get install -y ", 1)[1] for ln in got.stderr.splitlines()]
    assert named == ["chromium", "npm", "mariadb-server", "postgresql", "nginx-light", "iproute2"]


def test_not_root_stops_at_the_missing_package_before_pytest(tmp_path: Path) -> None:
    """Not root, tools/test cannot install: one line, exit 2, no venv install, no pytest."""
    machine = _machine(tmp_path, "usr/sbin/nginx")
    prefix = ("unshare", "--user") if os.geteuid() == 0 else ()  # uid 65534 in there
    env = {**_environment(), "TEST_PREREQ_ROOT": str(machine)}
    got = subprocess.run(
        [*prefix, str(SCRIPT), "-k", "nothing"], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip
    assert got.returncode == 2, got.stdout + got.stderr
    assert got.stdout == ""
    assert got.stderr.splitlines() == [
        "tools/test: missing /usr/sbin/nginx for tests/test_trusted_proxies.py, "
        "test_scale_out.py and test_compose.py: apt-get install -y nginx-light"
    ]


def test_an_old_python3_is_one_line(tmp_path: Path) -> None:
    """python3 on PATH is 3.9: the script says so and which to use, before anything else."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "python3"
    fake.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.9.2"\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    got = subprocess.run(
        [str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, env=env
    )
    assert got.returncode == 2
    assert got.stderr.splitlines()[0] == (
        "tools/test: python3 >= 3.11 needed, Python 3.9.2 found: use Debian 12 or newer, "
        "or PYTHON=/path/to/python3.11 tools/test"
    )
    assert "Traceback" not in got.stderr


def test_this_machine_has_everything() -> None:
    got = subprocess.run(
        [str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, env=_environment()
    )
    assert got.returncode == 0, got.stderr
    assert "missing" not in got.stderr


def test_ci_and_readme_use_the_script() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tools/test 2>&1" in ci and "apt-get" not in ci
    assert "ruff check ." in ci and "mypy fhir_server smart_auth" in ci
    assert "\ntools/test\n" in (ROOT / "README.md").read_text()
    assert os.access(SCRIPT, os.X_OK)


def test_the_nginx_test_without_root_is_one_line(tmp_path: Path) -> None:
    """The test side: tests/test_trusted_proxies.py run as a non-root user (uid 65534 in a
    user namespace) fails with one line, not a traceback."""
    prefix = ["unshare", "--user"] if os.geteuid() == 0 else []
    assert shutil.which("unshare"), "unshare (util-linux) runs a test as a non-root user"
    got = subprocess.run(
        [*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "t"), "tests/test_trusted_proxies.py", "-k", "nginx_tls"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert got.returncode == 1, got.stdout
    assert "\nthe nginx test needs root: it runs nginx in a network namespace\n" in got.stdout
    assert "Traceback" not in got.stdout and "subprocess.CalledProcessError" not in got.stdout
