"""A 3-member replica set whose primary is SIGKILLed under load (issue 19, "a replica set
that loses nothing"), and commits whose answer is lost, through real processes: three
mongod, one ``fhir-server serve`` per test pointed at the set with a replicaSet URL.

What a client is told must be the truth: 2xx only for what is stored (with its history),
503 + Retry-After only for what is not (nothing half-applied), never 500, never a hang;
and the server serves again once MongoDB has elected a new primary. On the same set:
searches spread over the secondaries (FHIR_READ_PREFERENCE) still read their writes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from fhir_server.embedded_mongo import MongodNotFound
from fhir_server.failover_load import (
    SYSTEM,
    WRITES,
    Load,
    Outcome,
    check_outcomes,
    summary,
    write_gap,
)
from fhir_server.replica_set import ReplicaSet
from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow

ELECTION_TIMEOUT_MS = 3000  # MongoDB's default is 10 s; the election takes about this
HANG_BOUND = 20.0  # no request may take longer (the election plus a server selection)
APP_NAME = "failover-test"
TRANSACTION_SECONDS = 2.0  # FHIR_MONGO_TRANSACTION_TIMEOUT_SECONDS of the lost-answer test


@pytest.fixture(scope="module")
def replica_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaSet]:
    rs = ReplicaSet(
        tmp_path_factory.mktemp("replica-set"),
        mongod_bin=os.environ.get("FHIR_MONGOD_BIN"),
        election_timeout_ms=ELECTION_TIMEOUT_MS,
        heartbeat_interval_ms=1000,
        parameters={"enableTestCommands": "1"},  # failCommand, for the lost answers
    )
    try:
        rs.start()
    except MongodNotFound as exc:  # a missing mongod fails, never skips
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    try:
        yield rs
    finally:
        rs.stop()
    assert all(not m.alive for m in rs.members)


def _server(rs: ReplicaSet, tmp_path: Path, **env: str) -> ServerProcess:
    url = f"{rs.url}&appName={APP_NAME}"
    database = f"test_{uuid.uuid4().hex[:12]}"
    return ServerProcess(
        mongo_url=url, database=database, env=env, log_file=tmp_path / "server.log"
    )


def _fail_commands(rs: ReplicaSet, data: dict[str, Any] | None) -> None:
    """Turn MongoDB's failCommand fail point on (``data``) or off, on the primary, for
    the server's connections only (its appName)."""
    host = rs.hosts[rs.wait_for_primary(10)]
    with MongoClient(host, directConnection=True) as client:
        if data is None:
            client.admin.command("configureFailPoint", "failCommand", mode="off")
        else:
            client.admin.command(
                "configureFailPoint",
                "failCommand",
                mode="alwaysOn",
                data={**data, "appName": APP_NAME},
            )


def _pause_replication(rs: ReplicaSet, paused: bool) -> None:
    """Stop (or restart) every secondary fetching the primary's oplog."""
    primary = rs.wait_for_primary(10)
    for i in range(len(rs.hosts)):
        if i != primary:
            _replicating(rs, i, not paused, flush=False)
    if paused:
        _end_waiting_fetches(rs, primary)


def _replicating(rs: ReplicaSet, index: int, on: bool, flush: bool = True) -> None:
    """Let member ``index`` (a secondary) fetch the primary's oplog, or stop it."""
    with MongoClient(rs.hosts[index], directConnection=True) as client:
        mode = "off" if on else "alwaysOn"
        client.admin.command("configureFailPoint", "stopReplProducer", mode=mode)
    if not on and flush:
        _end_waiting_fetches(rs, rs.wait_for_primary(10))


def _end_waiting_fetches(rs: ReplicaSet, primary: int) -> None:
    """The fail point stops a secondary's next oplog fetch, not the one already waiting
    on the primary, which would still bring the next write: a write of no interest
    (acknowledged by the primary alone) ends that one first."""
    with MongoClient(rs.hosts[primary], directConnection=True, w=1) as client:
        client["failover_test"]["flush"].insert_one({"at": time.time()})
    time.sleep(0.3)


def _await_fetching_from(rs: ReplicaSet, primary: int, limit: float = 60.0) -> None:
    """Until every secondary fetches the oplog from the primary itself: one held back
    must not hold back another that fetches from it (chaining is off in ReplicaSet,
    and a member changes its sync source only at its next fetch)."""
    host = rs.hosts[primary]
    deadline = time.monotonic() + limit
    while True:
        sources = {}
        for i in range(len(rs.hosts)):
            if i != primary:
                with MongoClient(rs.hosts[i], directConnection=True) as client:
                    sources[i] = client.admin.command("replSetGetStatus").get("syncSourceHost")
        if all(source == host for source in sources.values()):
            return
        assert time.monotonic() < deadline, f"secondaries fetch from {sources}, not {host}"
        time.sleep(0.2)


def _queries(rs: ReplicaSet, index: int) -> int:
    """Find commands member ``index`` has served since it started."""
    with MongoClient(rs.hosts[index], directConnection=True) as client:
        return int(client.admin.command("serverStatus")["opcounters"]["query"])


def _retrying(send: Callable[[], httpx.Response]) -> httpx.Response:
    """A request outside the fail points, sent again after a 503 as a client would (a
    transaction slower than the short timeout on a loaded machine): at most 3 times."""
    for _ in range(2):
        r = send()
        if r.status_code != 503:
            return r
        time.sleep(0.2)
    return send()


def _patient(tag: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": tag}]}


def _stored(http: httpx.Client, tag: str) -> int:
    """Resources with the tag, current or in history."""
    r = http.get("/Patient", params={"identifier": f"{SYSTEM}|{tag}"})
    current = r.json()["total"]
    versions = http.get("/Patient/_history", params={"_count": "1000"}).json()
    in_history = sum(
        1
        for e in versions.get("entry", [])
        if any(i.get("value") == tag for i in e.get("resource", {}).get("identifier", []))
    )
    return int(current) + in_history


def test_a_commit_whose_answer_is_lost_is_looked_up(
    replica_set: ReplicaSet, tmp_path: Path
) -> None:
    """The commit's outcome is unknown to the server until its time is up (a short
    transaction timeout here): it reads the version back and answers the truth."""
    server = _server(
        replica_set, tmp_path, FHIR_MONGO_TRANSACTION_TIMEOUT_SECONDS=str(TRANSACTION_SECONDS)
    )
    with server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        # Committed, but every commit answer says the write concern timed out.
        lost_answer = {
            "failCommands": ["commitTransaction"],
            "writeConcernError": {
                "code": 64,
                "codeName": "WriteConcernFailed",
                "errmsg": "injected: the commit's answer is lost",
                "errInfo": {"wtimeout": True},
            },
        }
        _fail_commands(replica_set, lost_answer)
        try:
            start = time.monotonic()
            created = http.post("/Patient", json=_patient("settled-create"))
            took = time.monotonic() - start
            assert created.status_code == 201, created.text
            assert took >= TRANSACTION_SECONDS  # the commit was retried until then
            pid = created.json()["id"]
            updated = http.put(
                f"/Patient/{pid}",
                json={**_patient("settled-update"), "id": pid},
                headers={"If-Match": 'W/"1"'},
            )
            assert updated.status_code == 200, updated.text
            assert updated.json()["meta"]["versionId"] == "2"
        finally:
            _fail_commands(replica_set, None)
        assert http.get(f"/Patient/{pid}/_history/1").status_code == 200
        assert http.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"

        # Not committed: every commit's connection is closed before it runs.
        _fail_commands(
            replica_set, {"failCommands": ["commitTransaction"], "closeConnection": True}
        )
        try:
            refused = http.post("/Patient", json=_patient("refused-create"))
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"]
            stale = http.put(
                f"/Patient/{pid}",
                json={**_patient("refused-update"), "id": pid},
                headers={"If-Match": 'W/"2"'},
            )
            assert stale.status_code == 503, stale.text
        finally:
            _fail_commands(replica_set, None)
        assert _stored(http, "refused-create") == 0
        assert _stored(http, "refused-update") == 0
        assert http.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"
        # at once: the abandoned transaction holds no lock (it would for 60 s)
        again = _retrying(
            lambda: http.put(
                f"/Patient/{pid}",
                json={**_patient("after"), "id": pid},
                headers={"If-Match": 'W/"2"'},
            )
        )
        assert again.status_code == 200, again.text
        # Neither: no secondary replicates, so the commit is applied on the primary but
        # never majority-acknowledged, and a linearizable read cannot be answered either.
        _pause_replication(replica_set, True)
        try:
            unknown = http.post("/Patient", json=_patient("unknown-create"))
        finally:
            _pause_replication(replica_set, False)
        assert unknown.status_code == 504, unknown.text
        issue = unknown.json()["issue"][0]
        assert issue["code"] == "timeout" and "may or may not" in issue["diagnostics"]
        assert "Retry-After" not in unknown.headers  # not an invitation to send it again
        # replicated once the secondaries fetch again: a 503 would have been a lie
        deadline = time.monotonic() + 15
        while _stored(http, "unknown-create") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _stored(http, "unknown-create") == 2  # the current version and its history
        assert _retrying(lambda: http.post("/Patient", json=_patient("later"))).status_code == 201
        log = (tmp_path / "server.log").read_text()
        assert "it committed" in log and "it did not commit" in log


def _report(outcomes: list[Outcome], killed_at: float) -> str:
    stats = summary(outcomes)
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:5]
    lines = [f"{stats}", f"write gap {write_gap(outcomes, killed_at):.2f} s"]
    lines += [
        f"{o.kind} {o.status} at {o.start - killed_at:+.2f} s took {o.seconds:.2f} s"
        for o in slowest
    ]
    return "\n".join(lines)


def test_b_primary_killed_under_load_loses_nothing(replica_set: ReplicaSet, tmp_path: Path) -> None:
    server = _server(replica_set, tmp_path)
    with server:
        load = Load(server.base_url, threads=4, timeout=HANG_BOUND + 10)
        load.start()
        try:
            assert load.wait_for(
                lambda os: sum(o.acknowledged and o.kind in WRITES for o in os) >= 20, 30
            )
            killed_at = time.monotonic()
            killed = replica_set.kill_primary()
            elected = replica_set.wait_for_primary(30, other_than=killed)
            assert elected != killed

            def served_again(outcomes: list[Outcome]) -> bool:
                after = [o for o in outcomes if o.acknowledged and o.start > killed_at + 0.5]
                return all(sum(o.kind == k for o in after) >= 3 for k in WRITES)

            assert load.wait_for(served_again, 40), _report(load.snapshot(), killed_at)
        finally:
            load.stop()
        outcomes = load.outcomes
        report = _report(outcomes, killed_at)
        # the kill came mid-run: requests were in flight
        assert any(o.start < killed_at < o.end for o in outcomes), report
        assert {o.status for o in outcomes} <= {200, 201, 503}, [
            (o.kind, o.status, o.body) for o in outcomes if o.status not in (200, 201, 503)
        ]
        assert all(o.retry_after for o in outcomes if o.status == 503), report
        assert max(o.seconds for o in outcomes) < HANG_BOUND, report
        assert write_gap(outcomes, killed_at) < HANG_BOUND, report
        problems = check_outcomes(server.base_url, load)
        assert problems == [], "\n".join(problems[:30]) + "\n" + report
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            ready = http.get(server.base_url.removesuffix("/fhir") + "/health/ready")
            assert ready.status_code == 200, ready.text
    # the killed member comes back on its port and catches up as a secondary
    replica_set.restart(killed)
    assert replica_set.members[killed].alive


READ_ROUNDS = 40
PAUSE = 1.0  # how long the lagging secondary is held back after each write


def test_c_searches_on_secondaries_read_their_own_writes(
    replica_set: ReplicaSet, tmp_path: Path
) -> None:
    """FHIR_READ_PREFERENCE=secondaryPreferred sends searches to the secondaries; one of
    them is held behind every write (its replication paused: the other secondary makes
    the majority that acknowledges it). A search right after a create must still find
    it, whether the create went through the same API process or another one (a second
    worker, another host): the search reads at or after the primary's majority commit
    point as it starts (MongoDB's causal consistency: afterClusterTime), so the lagging
    member waits until it has applied the write. Without that the search would answer
    from the lagging member without it, as the direct read of that member shows."""
    # After a failover (test_b) the member with the highest priority (0) takes its
    # place back once it has caught up, stepping the interim primary down: wait for
    # that, so that no election comes in the middle of this test.
    deadline = time.monotonic() + 90
    while replica_set.primary() != 0:
        assert time.monotonic() < deadline, "member 0 did not become primary again"
        time.sleep(0.2)
    primary = 0
    lagging = 1
    _await_fetching_from(replica_set, primary)
    database = f"test_{uuid.uuid4().hex[:12]}"
    url = f"{replica_set.url}&appName={APP_NAME}"
    env = {"FHIR_READ_PREFERENCE": "secondaryPreferred"}
    reader = ServerProcess(
        mongo_url=url, database=database, env=env, log_file=tmp_path / "reader.log"
    )
    other = ServerProcess(mongo_url=url, database=database, log_file=tmp_path / "other.log")
    before = {i: _queries(replica_set, i) for i in range(len(replica_set.members))}
    waits: list[tuple[str, float]] = []
    rounds = skipped = 0
    with (
        reader,
        other,
        httpx.Client(base_url=reader.base_url, timeout=30) as http,
        httpx.Client(base_url=other.base_url, timeout=30) as elsewhere,
        MongoClient(replica_set.hosts[lagging], directConnection=True) as direct,
    ):
        writers = {"same process": http, "another process": elsewhere}
        while rounds < READ_ROUNDS and {w for w, _ in waits} != set(writers):
            rounds += 1
            writer = list(writers)[rounds % 2]
            tag = uuid.uuid4().hex
            _replicating(replica_set, lagging, False)
            body = _patient(tag)
            created = _retrying(partial(writers[writer].post, "/Patient", json=body))
            assert created.status_code == 201, created.text
            if direct[database]["Patient"].find_one({"_id": created.json()["id"]}) is not None:
                # not held back after all: this round would prove nothing
                _replicating(replica_set, lagging, True)
                skipped += 1
                continue
            resume = threading.Timer(PAUSE, _replicating, (replica_set, lagging, True))
            resume.start()
            started = time.monotonic()
            found = http.get("/Patient", params={"identifier": f"{SYSTEM}|{tag}"})
            took = time.monotonic() - started
            resume.join()
            assert found.status_code == 200, found.text
            assert found.json()["total"] == 1, (writer, rounds, took, found.text)
            assert found.json()["entry"][0]["resource"]["id"] == created.json()["id"]
            if took >= PAUSE * 0.8:  # it was sent to the lagging member, which waited
                waits.append((writer, took))
    # Each round's search went to one of the two secondaries at random: some went to
    # the lagging one, and waited for the write there rather than answer without it,
    # for writes through either process.
    assert {w for w, _ in waits} == set(writers), (rounds, skipped, waits)
    assert skipped < rounds / 2, (rounds, skipped)  # the member was held back as a rule
    after = {i: _queries(replica_set, i) for i in range(len(replica_set.members))}
    on_secondaries = sum(after[i] - before[i] for i in after if i != primary)
    assert on_secondaries >= rounds, (before, after, rounds)
