"""A FHIR R4 (4.0.1) REST server on MongoDB."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
