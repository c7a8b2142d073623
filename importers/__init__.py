"""Importers of legacy clinic databases into any FHIR server (issue #7).

A declarative YAML mapping (``importers/mapping``) turns the rows of a SQL database,
read with SQLAlchemy, into FHIR R4 resources that are written through the REST API as
transaction bundles of conditional updates on the legacy keys (``importers/run.py``).
"""
