"""Harness for the real-browser SMART test: Debian's chromium driven by Playwright (never a
downloaded browser), the test app in ``tests/smart_app`` served from its own origin, and
the ``fhir-server auth`` admin CLI run as a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from http_helpers import serving

APP_DIR = Path(__file__).parent / "smart_app"
FHIR_CLIENT_JS = APP_DIR / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
CHROMIUM = Path("/usr/bin/chromium")


def missing_prerequisites() -> list[str]:
    """What .ci/run installs and this test cannot run without (a failure, never a skip)."""
    missing = []
    if not FHIR_CLIENT_JS.exists() and shutil.which("npm"):
        # the locked fhirclient (package-lock.json), so a fresh clone needs no extra step
        subprocess.run(
            ["npm", "ci", "--prefix", str(APP_DIR), "--no-audit", "--no-fund"],
            check=False,
            capture_output=True,
            timeout=300,
        )
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if not FHIR_CLIENT_JS.exists() and not shutil.which("npm"):
        missing.append("npm to install tests/smart_app's packages (apt-get install -y npm)")
    elif not FHIR_CLIENT_JS.exists():
        missing.append(f"{FHIR_CLIENT_JS} (npm ci --prefix tests/smart_app failed: run it)")
    return missing


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


@contextmanager
def static_app_server() -> Iterator[str]:
    """Serve tests/smart_app on 127.0.0.1 (a secure context, so fhirclient's WebCrypto PKCE
    works) on a free port; its origin differs from the FHIR server's, so CORS is exercised."""
    handler = partial(_QuietHandler, directory=str(APP_DIR))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(httpd):
        yield f"http://127.0.0.1:{httpd.server_address[1]}"


def auth_cli(*args: str) -> dict[str, Any]:
    """Run ``fhir-server auth ...`` in a subprocess and return the JSON it prints."""
    command = [sys.executable, "-m", "fhir_server", "auth", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result
