"""The query shapes a clinical app runs, shared by benchmarks/search.py (timing on the
Synthea data) and tests/test_search_explain.py (every shape uses an index). Placeholders
are filled with values taken from the loaded data."""

SHAPES: list[tuple[str, str]] = [
    ("patient by name", "Patient?name={family}"),
    ("patient by family+given", "Patient?family={family}&given={given}"),
    ("patient by name :contains", "Patient?name:contains={family_part}"),
    ("patient by birthdate", "Patient?birthdate={birthdate}"),
    ("patient by identifier", "Patient?identifier={mrn_system}|{mrn}"),
    (
        "patient by gender+birthdate range",
        "Patient?gender=female&birthdate=ge1960&birthdate=lt1970",
    ),
    ("observation by patient+code", "Observation?patient={pid}&code=http://loinc.org|{code}"),
    (
        "observation by patient+category+date range",
        "Observation?patient={pid}&category=vital-signs&date=ge2000-01-01&date=lt2010-01-01",
    ),
    (
        "observation by code+value-quantity",
        "Observation?code=http://loinc.org|{code}&value-quantity=gt{value}",
    ),
    (
        "observation composite code-value-quantity",
        "Observation?code-value-quantity=http://loinc.org|{code}${value_prefix}{value}",
    ),
    (
        "observation bp component composite",
        "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140",
    ),
    ("observation by patient sorted by date", "Observation?patient={pid}&_sort=-date&_count=10"),
    ("observation by patient, status:not", "Observation?patient={pid}&status:not=final"),
    ("observation compartment", "Patient/{pid}/Observation?category=laboratory"),
    ("observation _lastUpdated", "Observation?_lastUpdated=gt2000-01-01&_count=10"),
    ("encounter by patient+date sorted", "Encounter?patient={pid}&date=ge2000&_sort=-date"),
    ("encounter by class", "Encounter?class={encounter_class}&_count=20"),
    (
        "medicationrequest by patient+status with _include",
        "MedicationRequest?patient={pid}&status={med_status}&_include=MedicationRequest:requester",
    ),
    (
        "condition by patient with _revinclude",
        "Condition?patient={pid}&_revinclude=Encounter:diagnosis",
    ),
    ("condition by code", "Condition?code=http://snomed.info/sct|{condition_code}"),
    (
        "diagnosticreport by patient with _include",
        "DiagnosticReport?patient={pid}&_include=DiagnosticReport:result",
    ),
    ("immunization by patient", "Immunization?patient={pid}"),
    ("chained subject:Patient.name", "Observation?subject:Patient.name={family}&code={code}"),
    ("chained subject.birthdate", "Encounter?subject.birthdate={birthdate}"),
    ("reverse chain _has", "Patient?_has:Condition:patient:code={condition_code}"),
    ("_summary=count by code", "Observation?code=http://loinc.org|{code}&_summary=count"),
    ("_summary=count by category", "Observation?category=laboratory&_summary=count"),
    ("practitioner by name", "Practitioner?name={practitioner_family}"),
    ("system search by _id", "?_type=Patient,Practitioner&_id={pid}"),
]

# Paging deep into a large result set: the benchmark follows `next` this many pages
# before timing one page fetch.
DEEP_PAGE = (
    "deep page of laboratory observations",
    "Observation?category=laboratory&_count=50",
    40,
)
