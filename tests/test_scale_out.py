"""Two API processes behind one nginx upstream share everything (issue 19, "Scale-out").

Two ``fhir-server serve`` processes (A and B: authorization on, the same MongoDB replica
set and database, each its own port) sit behind Debian's nginx with TLS, in one
round-robin upstream without stickiness. Neither starts an embedded Celery worker: both
name the broker (FHIR_CELERY_BROKER_URL, here the MongoDB transport on the same
database) and one ``fhir-server worker`` serves them both, as a deployment with several
API hosts runs its workers (docs/scaling.md, "Several API processes").

Which node serves a request is made deterministic by nginx itself: a request with
``X-Node: a`` (or ``b``) goes to that node's one-server upstream, any other request to
the round-robin pool, and every response carries nginx's ``X-Upstream`` (the address it
went to), which the tests check. Nothing here talks to a node directly: every step goes
through the proxy, with the public https URL, as a client does.
"""

from __future__ import annotations

import html
import itertools
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from nginx_helpers import (
    NGINX_HEAD,
    NGINX_HTTP_COMMON,
    certificate,
    https_client,
    network,
    nginx,
)
from process_helpers import stop
from pymongo import MongoClient
from smart_as_helpers import csrf, pkce

from fhir_server.bulk.tasks import broker_url
from fhir_server.config import Settings
from fhir_server.testing import ServerProcess
from smart_auth.backend_client import ASSERTION_TYPE, SigningKey, client_assertion, generate_key
from smart_auth.clients import create_client
from smart_auth.users import create_user

pytestmark = pytest.mark.slow

NGINX_CONF = (
    NGINX_HEAD
    + """
http {{
"""
    + NGINX_HTTP_COMMON
    + """
    upstream pool {{ server {host}:{port_a}; server {host}:{port_b}; }}
    upstream node_a {{ server {host}:{port_a}; }}
    upstream node_b {{ server {host}:{port_b}; }}
    map $http_x_node $target {{ a node_a; b node_b; default pool; }}
    server {{
        listen {proxy}:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://$target;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""
)
REDIRECT = "https://app.example/callback"
SYSTEM = "http://example.org/fhir/CodeSystem/scale-out"
VALUE_SET = "http://example.org/fhir/ValueSet/scale-out"
PROFILE = "http://example.org/fhir/StructureDefinition/scale-out-patient"
STREAM_BOUND = 2.0  # seconds another node may take to see a terminology write


@dataclass
class Cluster:
    public: str  # https://<nginx>/fhir
    root: str  # https://<nginx>
    nodes: dict[str, str]  # "a"/"b" -> the node's address as nginx names it (host:port)
    cert: Path
    db: Any  # the shared database (pymongo), for registering clients and users
    seed: dict[str, str]  # a system/*.cruds bearer header

    def http(self) -> httpx.Client:
        return https_client(self.cert)

    def served_by(self, response: httpx.Response) -> str:
        """Which node answered, from nginx's X-Upstream."""
        upstream = response.headers["x-upstream"]
        named = [name for name, address in self.nodes.items() if address == upstream]
        assert named, (upstream, self.nodes)
        return named[0]

    def on(self, node: str, headers: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-Node": node, **(headers or {})}


def _backend_client(db: Any, client_id: str, scope: str, rate_limit: str | None = None) -> Any:
    key = generate_key()
    create_client(
        db,
        client_id,
        "confidential-asymmetric",
        jwks=key.public_jwks(),
        scope=scope,
        rate_limit=rate_limit,
    )
    return key


def _system_token(
    http: httpx.Client, root: str, node: str, client_id: str, key: SigningKey, scope: str
) -> str:
    token_url = f"{root}/auth/token"
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, client_id, token_url),
    }
    r = http.post(token_url, data=form, headers={"X-Node": node})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def cluster(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("scale_out")
    database = f"test_scale_{uuid.uuid4().hex[:12]}"
    queue = f"scale-out-{uuid.uuid4().hex[:8]}"
    # The right settings for several API nodes: a broker named (so no node starts its
    # own embedded worker), the same database and queue, and separate workers.
    broker = broker_url(Settings(mongo_url=mongo_url, database=database))
    with network() as net:
        cert, key = certificate(tmp, net.proxy)
        env = {
            "FHIR_HOST": net.host,
            "FHIR_TRUSTED_PROXIES": net.proxy,
            "FHIR_CELERY_BROKER_URL": broker,
            "FHIR_CELERY_QUEUE": queue,
            "FHIR_EXPORT_FILE_MAX_RESOURCES": "3",
        }
        servers = {
            name: ServerProcess(
                mongo_url=mongo_url,
                database=database,
                auth=True,
                env=env,
                log_file=tmp / f"serve-{name}.log",
            )
            for name in ("a", "b")
        }
        for server in servers.values():
            server.base_url = f"http://{net.host}:{server.port}/fhir"  # where start() looks
        worker_log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        args = [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", mongo_url]
        args += ["--broker-url", broker, "--queue", queue, "--log-level", "warning"]
        worker = subprocess.Popen(
            args,
            env={k: v for k, v in servers["a"].env.items() if not k.startswith("FHIR_")},
            stdout=worker_log,
            stderr=worker_log,
        )
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                d=tmp,
                proxy=net.proxy,
                cert=cert,
                key=key,
                host=net.host,
                port_a=servers["a"].port,
                port_b=servers["b"].port,
            )
        )
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_url, tz_aware=True)
        try:
            # both nodes start together on the empty database (indexes, signing keys,
            # the session secret: each created once whoever comes first)
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda s: s.start(), servers.values()))
            root = f"https://{net.proxy}"
            with nginx(net, conf, f"{root}/fhir/metadata", cert):
                db = client[database]
                seed_key = _backend_client(db, "scale-seed", "system/*.cruds")
                with https_client(cert) as http:
                    token = _system_token(http, root, "a", "scale-seed", seed_key, "system/*.cruds")
                yield Cluster(
                    public=f"{root}/fhir",
                    root=root,
                    nodes={n: f"{net.host}:{s.port}" for n, s in servers.items()},
                    cert=cert,
                    db=db,
                    seed={"Authorization": f"Bearer {token}"},
                )
        finally:
            for server in servers.values():
                server.stop()
            stop(worker)
            worker_log.close()
            client.drop_database(database)
            client.close()


def test_round_robin_is_not_sticky(cluster: Cluster) -> None:
    """Without X-Node, consecutive requests of one client alternate between the nodes
    (no session affinity), whatever cookies or tokens they carry."""
    with cluster.http() as http:
        served = []
        for _ in range(6):
            r = http.get(f"{cluster.public}/Patient?_count=1", headers=cluster.seed)
            assert r.status_code == 200, r.text
            served.append(cluster.served_by(r))
    assert set(served) == {"a", "b"}
    assert all(x != y for x, y in itertools.pairwise(served)), served


def test_keys_and_session_secret_are_shared(cluster: Cluster) -> None:
    """Both nodes publish the same JWK Set: whichever signs, the other verifies; a
    token with a tampered signature is refused by both."""
    with cluster.http() as http:
        a = http.get(f"{cluster.root}/auth/jwks", headers=cluster.on("a"))
        b = http.get(f"{cluster.root}/auth/jwks", headers=cluster.on("b"))
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert (cluster.served_by(a), cluster.served_by(b)) == ("a", "b")
    assert a.json() == b.json() and a.json()["keys"]
    # neither node takes a token whose signature is not one of those keys'
    token = cluster.seed["Authorization"].removeprefix("Bearer ")
    head, claims, signature = token.split(".")
    forged = f"{head}.{claims}.{signature[:-6]}{'A' * 6 if signature[-6:] != 'A' * 6 else 'B' * 6}"
    with cluster.http() as http:
        for node in "ab":
            r = http.get(
                f"{cluster.public}/Patient",
                headers=cluster.on(node, {"Authorization": f"Bearer {forged}"}),
            )
            assert r.status_code == 401 and cluster.served_by(r) == node, r.text
            assert r.json()["resourceType"] == "OperationOutcome"


def _step(
    cluster: Cluster, http: httpx.Client, node: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """One request pinned to ``node``; asserts nginx sent it there."""
    target = url if url.startswith("https://") else f"{cluster.root}{url}"
    headers = cluster.on(node, kwargs.pop("headers", None))
    r = http.request(method, target, headers=headers, **kwargs)
    assert cluster.served_by(r) == node, (method, url, r.headers.get("x-upstream"))
    return r


def test_launch_across_nodes(cluster: Cluster) -> None:
    """A patient's standalone launch whose every step lands on the other node from the
    step before: authorize (A), the login redirect (B), the login page (A), its form
    post (B), the consent page (A), the decision (B), the code exchange (A). Then the
    token reads on B, a refresh on B is used on A, and a revocation on each node is
    honoured by the other at once (the next request)."""
    create_client(cluster.db, "scale-app", "public", redirect_uris=[REDIRECT], name="Scale app")
    create_user(cluster.db, "scale-ana", "patient-pass", "patient", fhir_user="Patient/sc-p")
    with cluster.http() as http:
        for pid in ("sc-p", "sc-other"):
            put = http.put(
                f"{cluster.public}/Patient/{pid}",
                json={"resourceType": "Patient", "id": pid},
                headers=cluster.seed,
            )
            assert put.status_code in (200, 201), put.text
        verifier, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": "scale-app",
            "redirect_uri": REDIRECT,
            "scope": "launch/patient openid fhirUser offline_access patient/*.rs",
            "state": "s-scale",
            "aud": cluster.public,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        r = _step(cluster, http, "a", "GET", f"/auth/authorize?{urlencode(params)}")
        assert r.status_code in (302, 303), r.text
        consent_url = r.headers["location"]
        r = _step(cluster, http, "b", "GET", consent_url)
        assert r.status_code == 303, r.text  # not logged in: to the login page
        login = _step(cluster, http, "a", "GET", r.headers["location"])
        assert login.status_code == 200, login.text
        action = re.search(r'form method="post" action="([^"]+)"', login.text)
        assert action is not None
        form = {"csrf": csrf(login), "username": "scale-ana", "password": "patient-pass"}
        r = _step(cluster, http, "b", "POST", html.unescape(action.group(1)), data=form)
        assert r.status_code == 303, r.text  # B knows A's CSRF token and the pending request
        consent = _step(cluster, http, "a", "GET", r.headers["location"])
        assert consent.status_code == 200 and "Scale app" in consent.text, consent.text
        scopes = re.findall(r'name="scope" value="([^"]+)"', consent.text)
        decision = [("csrf", csrf(consent)), ("decision", "allow")]
        r = _step(
            cluster,
            http,
            "b",
            "POST",
            consent_url.split("?")[0],
            content=urlencode(decision + [("scope", s) for s in scopes]),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.headers["location"].startswith(REDIRECT), r.text
        back = parse_qs(urlsplit(r.headers["location"]).query)
        assert back["state"] == ["s-scale"]
        exchange = {
            "grant_type": "authorization_code",
            "code": back["code"][0],
            "client_id": "scale-app",
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }
        r = _step(cluster, http, "a", "POST", "/auth/token", data=exchange)
        assert r.status_code == 200, r.text
        tokens = r.json()
        assert tokens["patient"] == "sc-p" and tokens["refresh_token"]
        # a code is used once, on whichever node: B refuses A's code now
        again = _step(cluster, http, "b", "POST", "/auth/token", data=exchange)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

        def read(node: str, token: str, pid: str = "sc-p") -> httpx.Response:
            auth = {"Authorization": f"Bearer {token}"}
            return _step(cluster, http, node, "GET", f"/fhir/Patient/{pid}", headers=auth)

        # the token A signed verifies on B, and B applies its SMART policy
        assert read("b", tokens["access_token"]).status_code == 200
        other = read("b", tokens["access_token"], "sc-other")
        assert other.status_code == 404 and other.json()["resourceType"] == "OperationOutcome"
        # a refresh on B; its access token works on A
        refresh = {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "scale-app",
        }
        r = _step(cluster, http, "b", "POST", "/auth/token", data=refresh)
        assert r.status_code == 200, r.text
        renewed = r.json()
        assert read("a", renewed["access_token"]).status_code == 200
        # revoked on A: refused by B on the very next request (the revocation list is
        # read on every request, never cached in a process)
        revoke = {"token": renewed["access_token"], "client_id": "scale-app"}
        assert _step(cluster, http, "a", "POST", "/auth/revoke", data=revoke).status_code == 200
        refused = read("b", renewed["access_token"])
        assert refused.status_code == 401, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        # the refresh token revoked on B cannot be used on A
        latest = renewed.get("refresh_token", tokens["refresh_token"])
        gone = {"token": latest, "client_id": "scale-app", "token_type_hint": "refresh_token"}
        assert _step(cluster, http, "b", "POST", "/auth/revoke", data=gone).status_code == 200
        r = _step(
            cluster, http, "a", "POST", "/auth/token", data={**refresh, "refresh_token": latest}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def test_rate_limit_is_shared(cluster: Cluster) -> None:
    """A client with a quota of 6 per hour gets its 7th request refused (429,
    Retry-After) though its requests went to both nodes in turn; the other node refuses
    the 8th too. Another client is not affected."""
    key = _backend_client(cluster.db, "scale-limited", "system/*.rs", rate_limit="6/1h")
    with cluster.http() as http:
        token = _system_token(http, cluster.root, "b", "scale-limited", key, "system/*.rs")
        auth = {"Authorization": f"Bearer {token}"}
        statuses = []
        for n in range(8):
            node = "ab"[n % 2]
            r = _step(cluster, http, node, "GET", "/fhir/Patient?_count=1", headers=auth)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) > 0
                outcome = r.json()
                assert outcome["resourceType"] == "OperationOutcome"
                assert outcome["issue"][0]["code"] == "throttled"
        assert statuses == [200] * 6 + [429, 429], statuses
        # the limit is the client's, not the nodes'
        r = http.get(f"{cluster.public}/Patient?_count=1", headers=cluster.seed)
        assert r.status_code == 200, r.text


def test_bulk_export_across_nodes(cluster: Cluster) -> None:
    """An export kicked off on A is polled on B (the job is in MongoDB, the work on the
    one shared worker) and its files are downloaded from B and from A (GridFS)."""
    with cluster.http() as http:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Patient", "id": f"sc-x{n}"},
                    "request": {"method": "PUT", "url": f"Patient/sc-x{n}"},
                }
                for n in range(7)
            ],
        }
        r = http.post(cluster.public, json=bundle, headers=cluster.seed)
        assert r.status_code == 200, r.text
        kick = {"Prefer": "respond-async", "Accept": "application/fhir+json", **cluster.seed}
        r = _step(cluster, http, "a", "GET", "/fhir/Patient/$export", headers=kick)
        assert r.status_code == 202, r.text
        status_url = r.headers["Content-Location"]
        assert status_url.startswith(cluster.public)
        deadline = time.monotonic() + 30
        while True:
            r = _step(cluster, http, "b", "GET", status_url, headers=cluster.seed)
            if r.status_code != 202:
                break
            assert time.monotonic() < deadline, "export not finished on time"
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        manifest = r.json()
        files = manifest["output"]
        assert len(files) >= 3  # FHIR_EXPORT_FILE_MAX_RESOURCES=3: several files
        ids: list[str] = []
        for n, item in enumerate(files):
            got = _step(cluster, http, "ba"[n % 2], "GET", item["url"], headers=cluster.seed)
            assert got.status_code == 200, got.text
            ids += [line.split('"id":"')[1].split('"')[0] for line in got.text.splitlines()]
        assert {f"sc-x{n}" for n in range(7)} <= set(ids)
        # the policy holds on both nodes: no token, no file
        for node in "ab":
            denied = _step(cluster, http, node, "GET", files[0]["url"])
            assert denied.status_code == 401, denied.text


def _validate_code(http: httpx.Client, cluster: Cluster, node: str, code: str) -> bool:
    params = {"url": VALUE_SET, "system": SYSTEM, "code": code}
    r = _step(
        cluster,
        http,
        node,
        "GET",
        f"/fhir/ValueSet/$validate-code?{urlencode(params)}",
        headers=cluster.seed,
    )
    assert r.status_code == 200, r.text
    result = [p for p in r.json()["parameter"] if p["name"] == "result"]
    return bool(result[0]["valueBoolean"])


def test_terminology_written_on_a_is_used_by_b(cluster: Cluster) -> None:
    """Each node caches what it resolved of the terminology and learns of other nodes'
    writes from a MongoDB change stream (terminology/freshness.py). A ValueSet updated
    on A is used by B right after A's answer, six times over, B having just used (and
    cached) the previous version each time. The change event may in principle arrive
    after the client's next request (milliseconds): the bound allowed here is
    ``STREAM_BOUND`` seconds; how many reads needed more than the first try is reported
    (none in every run so far, docs/scaling.md)."""
    rounds = 6
    concepts = [{"code": f"c{n}", "display": f"Code {n}"} for n in range(rounds)]
    code_system = {
        "resourceType": "CodeSystem",
        "id": "sc-cs",
        "url": SYSTEM,
        "status": "active",
        "content": "complete",
        "concept": concepts,
    }
    late = 0
    with cluster.http() as http:
        r = http.put(f"{cluster.public}/CodeSystem/sc-cs", json=code_system, headers=cluster.seed)
        assert r.status_code in (200, 201), r.text
        for n in range(rounds):
            value_set = {
                "resourceType": "ValueSet",
                "id": "sc-vs",
                "url": VALUE_SET,
                "status": "active",
                "compose": {
                    "include": [
                        {"system": SYSTEM, "concept": [{"code": f"c{m}"} for m in range(n + 1)]}
                    ]
                },
            }
            if n:
                assert _validate_code(http, cluster, "b", f"c{n - 1}") is True
                assert _validate_code(http, cluster, "b", f"c{n}") is False  # cached on B
            r = _step(
                cluster, http, "a", "PUT", "/fhir/ValueSet/sc-vs", json=value_set,
                headers=cluster.seed,
            )  # fmt: skip
            assert r.status_code in (200, 201), r.text
            deadline = time.monotonic() + STREAM_BOUND
            while not _validate_code(http, cluster, "b", f"c{n}"):
                late += 1
                assert time.monotonic() < deadline, f"B still used the old ValueSet (round {n})"
                time.sleep(0.01)
    print(f"reads on B that needed a retry: {late}")


def test_profile_written_on_a_is_enforced_by_b_at_once(cluster: Cluster) -> None:
    """A profile made stricter on A is enforced by B's next create, and B's
    CapabilityStatement lists it at once."""
    profile = {
        "resourceType": "StructureDefinition",
        "id": "sc-profile",
        "url": PROFILE,
        "name": "ScaleOutPatient",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient", "path": "Patient"}]},
    }
    claiming = {"resourceType": "Patient", "gender": "male", "meta": {"profile": [PROFILE]}}
    with cluster.http() as http:
        r = _step(cluster, http, "a", "PUT", "/fhir/StructureDefinition/sc-profile",
                  json=profile, headers=cluster.seed)  # fmt: skip
        assert r.status_code in (200, 201), r.text
        meta = _step(cluster, http, "b", "GET", "/fhir/metadata").json()
        listed = [x for x in meta["rest"][0]["resource"] if x["type"] == "Patient"]
        assert PROFILE in listed[0].get("supportedProfile", [])
        r = _step(cluster, http, "b", "POST", "/fhir/Patient", json=claiming, headers=cluster.seed)
        assert r.status_code == 201, r.text  # B compiled and cached the lenient version
        stricter = {
            **profile,
            "differential": {
                "element": [
                    {"id": "Patient.gender", "path": "Patient.gender", "fixedCode": "female"}
                ]
            },
        }
        r = _step(cluster, http, "a", "PUT", "/fhir/StructureDefinition/sc-profile",
                  json=stricter, headers=cluster.seed)  # fmt: skip
        assert r.status_code == 200, r.text
        r = _step(cluster, http, "b", "POST", "/fhir/Patient", json=claiming, headers=cluster.seed)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Patient.gender"]
