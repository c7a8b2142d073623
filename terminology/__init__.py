"""The terminology service: CodeSystem, ValueSet and ConceptMap content and operations.

- core.py loads the R4 core code systems, value sets and concept maps (data/).
- concepts.py keeps each code system's concepts in their own collection, each with
  its ancestors (the transitive closure), so lookups, is-a and subsumption are index
  lookups.
- resolve.py finds the stored CodeSystem/ValueSet/ConceptMap a request names.
- membership.py caches, per process, the members of the value sets the R4 base
  definitions bind, for the validator's binding checks (fhir_server/validation/
  bindings.py).
- operations.py implements $lookup, $validate-code, $subsumes, $expand and $translate;
  fhir_server/api/terminology.py serves them over HTTP.
"""
