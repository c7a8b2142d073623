"""FHIR interactions: knows FHIR semantics, not HTTP or MongoDB."""
