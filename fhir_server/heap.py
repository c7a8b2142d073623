"""The long-lived heap, out of the garbage collector's way.

CPython's cyclic collector runs in whichever thread allocates past its threshold, and a
full (oldest-generation) collection walks every tracked object while holding the GIL.
A server process keeps ~140,000 of them for its whole life (the R4 model, the search
registry, FastAPI's routes and pydantic's schemas, whose pydantic-core traversal is
slow): one full collection took 130-180 ms, and 500-900 ms on the loaded 2-core test
machine. A 2 MB body of decimals or extensions allocates enough objects in a pool
thread to trigger several, and each held the event loop, ``GET /metadata`` included,
for its whole length (py-spy: ``gc_collect_main`` under ``JsonDecimal.__new__`` in a
``fhir-cpu`` thread while the loop thread waited for the GIL; docs/benchmarks.md,
"Adversarial input").

``settle()`` builds those structures and moves them to the permanent generation
(``gc.freeze``): a full collection then walks only what was allocated since (~14,000
objects, 4 ms). ``release()`` hands them back at shutdown, so that an app created and
stopped within a longer-lived process (one per test) can still be collected.

It also collects the youngest generation every ``YOUNG`` container allocations rather
than CPython's 700. A read by id allocates a few thousand (headers, the stored
document, the response), so at 700 the collector ran several times per request, each
run promoting the request's live objects to older generations that are then walked
again. In alternating rounds of ``wrk`` against two servers (py-spy first: collection
time showed up spread over every allocating frame), 10,000 gave 1,120 reads/s at
concurrency 16 against 1,003 with 700, and 222 creates/s against 203; a young
collection of 10,000 objects takes well under a millisecond.
"""

from __future__ import annotations

import gc

from fhir_server.resource_types import resource_types
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.validation import validate_resource
from fhir_server.validation.model import model

YOUNG = 10_000  # allocations between young-generation collections (CPython: 700)
_thresholds: tuple[int, int, int] | None = None  # CPython's, while settled


def warm(registry: Registry) -> None:
    """Build what the first requests would otherwise build after the freeze: the
    validation model, the resource types, one validation, and one search index (the
    FHIRPath parser's tables: ~9,000 objects)."""
    model()
    resource_types()
    patient = {"resourceType": "Patient", "id": "warm", "active": True}
    validate_resource(patient, "Patient")
    index_resource(patient, registry, base_url="http://localhost/fhir")


def settle(registry: Registry) -> None:
    """Warm the process-lifetime structures and freeze every object now tracked.

    No full ``gc.collect()`` first: it would cost every app start in the test process
    (one per test) a walk of that whole heap, and what it would free here, the garbage
    cycles of start-up, is small and made once."""
    global _thresholds
    warm(registry)
    gc.collect(1)  # the young generations: cheap, and most start-up garbage is there
    gc.freeze()
    if _thresholds is None:
        _thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG, _thresholds[1], _thresholds[2])


def release(busy: bool) -> None:
    """Undo ``settle``: the frozen objects go back to the oldest generation. Not while
    pool threads still run (``busy``: a server stopping with heavy requests in flight,
    which exits next anyway): the collector's count of long-lived objects is still the
    small post-freeze one, so their allocations would trigger full collections of the
    whole heap, each holding the GIL, one after another while the server stops."""
    global _thresholds
    if not busy:
        gc.unfreeze()
    if _thresholds is not None:
        gc.set_threshold(*_thresholds)
        _thresholds = None
