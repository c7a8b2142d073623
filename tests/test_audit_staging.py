"""Staged audit facts (fhir_server/audit/staging.py) make the same records as the
request they were staged from: every kind of request, through BSON as MongoDB stores
it. The sink's staging itself is tested through the server in test_audit.py."""

from __future__ import annotations

import bson
from bson.codec_options import CodecOptions
from test_audit_index import auth_records, rest_requests

from fhir_server.audit import staging
from fhir_server.audit.events import rest_events

STORED = CodecOptions(tz_aware=True)  # as the server's client reads them back


def test_every_kind_of_request_makes_the_same_records_from_its_staged_facts() -> None:
    requests = rest_requests()
    assert len(requests) > 800
    for request in requests:
        stored = bson.decode(bson.encode(staging.fact(request)), codec_options=STORED)
        again = staging.unfact(stored)
        assert not isinstance(again, dict)
        assert rest_events(again) == rest_events(request), request


def test_an_auth_record_is_staged_as_it_is() -> None:
    for record in auth_records():
        stored = bson.decode(bson.encode(staging.fact(record)), codec_options=STORED)
        assert staging.unfact(stored) == record


def test_record_ids_are_the_same_each_time_and_distinct() -> None:
    ids = {staging.record_id("u1", n, k) for n in range(40) for k in range(3)}
    assert len(ids) == 120
    assert staging.record_id("u1", 3, 1) == staging.record_id("u1", 3, 1)
    assert staging.record_id("u1", 3, 1) != staging.record_id("u2", 3, 1)
