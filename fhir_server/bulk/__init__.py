"""Bulk Data export (https://hl7.org/fhir/uv/bulkdata/ STU 2, with STU 3's ``_until``):
kick-off and status on the API, the export itself on Celery workers, files in GridFS.

Modules: ``request`` (kick-off parameters), ``access`` (every authorization decision),
``jobs`` (job and unit documents, planning, cleanup), ``export`` (writing one unit's
NDJSON files, on a worker), ``tasks`` (the Celery app), ``routes`` (HTTP), ``embedded``
(the worker process ``serve`` starts when no broker is configured).
"""
