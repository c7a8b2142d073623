"""MongoDB persistence: knows documents and transactions, not HTTP or FHIR semantics."""

from fhir_server.storage.documents import StoredVersion, VersionWrite
from fhir_server.storage.store import ConcurrentModification, Storage

__all__ = ["ConcurrentModification", "Storage", "StoredVersion", "VersionWrite"]
