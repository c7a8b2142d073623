"""The clinics' standard reports (issue #17): SQL on FHIR ViewDefinitions over the stored
data, grouped and totalled, rendered as CSV, Excel or PDF in Spanish or English.

``definitions/`` holds the data (each report's ViewDefinition and its report
definition), ``catalog`` reads it, ``source`` runs a view within the token's reach,
``aggregate`` groups the rows, ``render/`` writes the formats and ``service`` ties them
together for ``GET [base]/$report`` (fhir_server/api/reports.py).
"""
