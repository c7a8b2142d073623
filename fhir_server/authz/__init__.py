"""SMART on FHIR enforcement on the FHIR API: who the bearer is (authenticate) and
what its token lets it touch (policy)."""
