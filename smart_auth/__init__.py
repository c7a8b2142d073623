"""The SMART on FHIR authorization server (OAuth 2.0 / OpenID Connect) of fhir-server."""
