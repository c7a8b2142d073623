"""What storing one audit record costs MongoDB, by the AuditEvent collection's indexes.

    .venv/bin/python benchmarks/audit_inserts.py                 # 10 rounds of 10,000
    .venv/bin/python benchmarks/audit_inserts.py --records 5000 --rounds 6

One embedded mongod (a one-member replica set, as the server runs). The record is the
one a clinician's read of a Patient makes (events.rest_events, stored as the sink stores
it: id, meta, search index, compartment). Each round inserts ``--records`` copies, in
the sink's batches of 200 with its write concern, into a fresh collection with each
index set in turn, and reads mongod's CPU time from /proc: the cost per record is
mongod's CPU seconds over the records, so the client's own time and other processes on
the machine do not count. Index sets:

- ``wildcard``: the generic one every other type has (the wildcard over ``sp``,
  compartment, lastUpdated) and the retention TTL index: the trail before audit/indexes.py.
- ``audit``: audit/indexes.py and the retention TTL index: the trail now.
- ``id only``: no index but ``_id``: the floor (document, oplog, journal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Run as a script: the project's packages come from the checkout, ahead of benchmarks/,
# whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.write_concern import WriteConcern

from fhir_server.audit.events import Caller, RestRequest, rest_events
from fhir_server.audit.indexes import AUDIT_INDEXES
from fhir_server.audit.seen import Seen
from fhir_server.audit.sink import MAX_BATCH, AuditSink
from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.storage.store import _CURRENT_INDEXES

TTL = IndexModel([("lu", ASCENDING)], name="audit_retention", expireAfterSeconds=10**8)
INDEX_SETS: dict[str, list[IndexModel]] = {
    "wildcard": [*_CURRENT_INDEXES, TTL],
    "audit": [*AUDIT_INDEXES, TTL],
    "id only": [],
}


def read_record() -> dict[str, Any]:
    """The stored document of one clinician's read of Patient/p1 (version 3)."""
    access = SimpleNamespace(
        client_id="clinic-ehr", subject="dr-garcia", fhir_user="Practitioner/dr", jti="x" * 22
    )
    seen = Seen()
    seen.add("Patient", "p1", 3, ())
    request = RestRequest(
        interaction="read",
        method="GET",
        path="Patient/p1",
        query="",
        status=200,
        request_id=uuid.uuid4().hex,
        caller=Caller(access, "10.1.2.3", "https://fhir.example.org/fhir"),  # type: ignore[arg-type]
        path_patient="Patient/p1",
        seen=seen,
    )
    (event,) = rest_events(request)
    return AuditSink(None)._document(event)  # type: ignore[arg-type]


def mongod_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="per round and index set")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    doc = read_record()
    keys = sum(len(v) for v in doc["sp"].values())
    print(f"record: {len(doc['raw'])} bytes of JSON, {keys} search index values")
    costs: dict[str, list[float]] = {name: [] for name in INDEX_SETS}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as mongo:
        assert mongo.url and mongo.pid
        with MongoClient(mongo.url) as client:
            db = client.get_database("audit_inserts")
            for round_ in range(args.rounds):
                names = list(INDEX_SETS)
                if round_ % 2:
                    names.reverse()  # drift on a shared machine falls on all alike
                for name in names:
                    collection = db.get_collection(
                        f"r{round_}_{name.replace(' ', '_')}",
                        write_concern=WriteConcern(w="majority", j=True),
                    )
                    if INDEX_SETS[name]:
                        collection.create_indexes(INDEX_SETS[name])
                    before = mongod_cpu(mongo.pid)
                    for _ in range(0, args.records, MAX_BATCH):
                        batch = [{**doc, "_id": str(uuid.uuid4())} for _ in range(MAX_BATCH)]
                        collection.insert_many(batch, ordered=False)
                    time.sleep(0.2)  # the journal and oplog work of the last batch
                    costs[name].append((mongod_cpu(mongo.pid) - before) / args.records * 1e6)
                    collection.drop()
    print(f"mongod CPU per record, {args.rounds} rounds of {args.records:,} records")
    print("| index set | median µs | p95 µs |")
    print("|---|---|---|")
    for name, values in costs.items():
        p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        print(f"| {name} | {statistics.median(values):.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
