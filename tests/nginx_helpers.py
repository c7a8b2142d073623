"""Debian's nginx in front of real ``serve`` processes, as a TLS-terminating proxy on
another host is deployed: nginx runs in a network namespace (10.x.y.2), the servers
listen on the host end of a veth pair (10.x.y.1) and trust only nginx's address.

Shared by tests/test_trusted_proxies.py (one server) and tests/test_scale_out.py (two
servers behind one upstream). Needs root with CAP_NET_ADMIN; a missing prerequisite is a
test failure with one line saying what to install, never a skip."""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NGINX = Path("/usr/sbin/nginx")


def nginx_prerequisites() -> None:
    """What the nginx tests cannot run without: one line each, a failure (never a skip)."""
    needs = None
    if os.geteuid() != 0:
        needs = "root: it runs nginx in a network namespace"
    elif not NGINX.exists():
        needs = f"{NGINX}: install it (apt-get install -y nginx-light)"
    elif shutil.which("ip") is None:
        needs = "ip: install it (apt-get install -y iproute2)"
    if needs:
        pytest.fail(f"the nginx test needs {needs}", pytrace=False)


def sh(*args: str) -> None:
    """Run a setup command; its failure is one line with its stderr, not a traceback."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} failed ({done.stderr.strip()}): the nginx test needs root "
            "with CAP_NET_ADMIN",
            pytrace=False,
        )


def certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` (an IP SAN), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@dataclass(frozen=True)
class Network:
    """A namespace for nginx and a veth pair: ``host`` is the servers' (and the test
    clients') address, ``proxy`` nginx's."""

    namespace: str
    host: str
    proxy: str


@contextmanager
def network() -> Iterator[Network]:
    """A fresh namespace and veth pair on a random 10.x.y.0/30, removed afterwards."""
    nginx_prerequisites()
    tag = uuid.uuid4().hex[:6]
    namespace, outside, inside = f"fhirpx-{tag}", f"px{tag}h", f"px{tag}n"
    net = uuid.uuid4().int % 200 + 20, uuid.uuid4().int % 64 * 4
    host, proxy = f"10.{net[0]}.{net[1]}.1", f"10.{net[0]}.{net[1]}.2"
    sh("ip", "netns", "add", namespace)
    try:
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", inside, "netns", namespace)
        sh("ip", "addr", "add", f"{host}/30", "dev", outside)
        sh("ip", "link", "set", outside, "up")
        sh("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{proxy}/30", "dev", inside)
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", inside, "up")
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield Network(namespace, host, proxy)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], timeout=30)
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)


# The parts of nginx.conf every test needs: temp paths in the test's directory, no
# access log, one worker (so round robin over an upstream is in request order).
NGINX_HEAD = """
daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
"""
NGINX_HTTP_COMMON = """
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
"""


def https_client(cert: Path) -> httpx.Client:
    """A client that trusts the test's certificate."""
    return httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=30)


@contextmanager
def nginx(net: Network, conf: Path, ready_url: str, cert: Path) -> Iterator[None]:
    """nginx with ``conf`` in the namespace, until ``ready_url`` answers 200 through it."""
    directory = conf.parent
    log = open(directory / "nginx.out", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["ip", "netns", "exec", net.namespace, str(NGINX), "-c", str(conf)],
        stdout=log,
        stderr=log,
    )
    try:
        with https_client(cert) as http:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (directory / "nginx.out").read_text()
                try:
                    if http.get(ready_url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "nginx never answered"
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(30)
        log.close()
