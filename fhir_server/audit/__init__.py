"""The audit trail: a BALP AuditEvent for every FHIR interaction and auth event.

``seen`` collects, during a request, the resources and patients the answer disclosed
or the request wrote; ``events`` turns a finished request (or an auth event) into
AuditEvent resources following IHE Basic Audit Log Patterns; ``sink`` writes them in
batches off the request path into the AuditEvent collection, which the API only reads
(``guard``); ``retention`` expires them. docs/audit.md describes the records.
"""
