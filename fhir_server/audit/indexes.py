"""The AuditEvent collection's indexes: a few chosen ones instead of the wildcard.

Every other type's search parameters are covered by one wildcard index over ``sp``. An
audit record has about 40 such keys, and one record is written for every read, so that
index was most of what the trail cost MongoDB: 110-130 µs of mongod CPU per record
against 25-30 µs without it (benchmarks/audit_inserts.py). The questions asked of an
audit trail are who (``agent``, ``altid``, ``policy``: the token, ``address``), whose
record (``patient``, ``entity``, ``entity:identifier``: the request id), when
(``date``) and what failed (``outcome``); those get ordinary multikey indexes, about 20
keys per record, which halves the cost. Every other AuditEvent search parameter still
works, as a filter on what these indexes (or a scan) find; ``_lastUpdated`` sorts and
``_since`` use the retention index on ``lu`` (retention.py).
"""

from __future__ import annotations

from pymongo import ASCENDING, IndexModel

INDEXED = ("patient", "entity", "entity:identifier", "agent", "altid", "policy", "address")

AUDIT_INDEXES = [
    *(IndexModel([(f"sp.{code}", ASCENDING)], name=f"sp_{code}") for code in INDEXED),
    IndexModel([("sp.outcome", ASCENDING)], name="sp_outcome"),
    # ge/gt compare the end of a record's instant, le/lt its start: one index for each
    IndexModel([("sp.date.lo", ASCENDING)], name="sp_date_lo"),
    IndexModel([("sp.date.hi", ASCENDING)], name="sp_date_hi"),
    IndexModel([("comp", ASCENDING)], name="compartment"),
]
