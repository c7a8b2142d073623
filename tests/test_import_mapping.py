"""The built-in clinica mapping, rule by rule, on hand-written legacy rows in a real
MariaDB, imported into a real server and compared with hand-checked FHIR resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import test_import_support as support
from sqlalchemy import create_engine
from test_import_support import (
    by_identifier,
    execute,
    get,
    report_rows,
    run,
    search,
    stats,
)

from importers.build import legacy_id
from importers.sample import create_tables

fhir_base = support.fhir_base  # a fixture
fhir_target = support.fhir_target  # a fixture
mariadb_url = support.mariadb_url  # a fixture
mariadb_server = support.mariadb_server  # a fixture

L = "urn:legacy:clinica:"
CEDULA = "https://www.registrocivil.gob.ec/cedula"
NI = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}

ROWS = [
    "INSERT INTO clinics_clinic (id, name, ruc, address, city, phone, email, is_active, updated_at)"
    " VALUES (1, 'Clínica Norte', '1790011674001', 'Av. Amazonas N1-12', 'Quito', '022345678',"
    " 'INFO@norte.ec', 1, '2025-01-01 10:00:00')",
    "INSERT INTO clinics_room (id, clinic_id, name, floor, room_type, is_active) VALUES"
    " (1, 1, 'Consultorio 101', '1', 'CONSULTA', 1)",
    "INSERT INTO doctors_specialty (id, code, name) VALUES (1, '394579002', 'Cardiología')",
    "INSERT INTO doctors_doctor (id, clinic_id, cedula, first_name, last_name, gender,"
    " license_number, phone, email, is_active) VALUES (1, 1, '1710034065', 'Ramón',"
    " 'Peñafiel', 'M', 'MSP-000123', NULL, 'dr1@clinica.ec', 1)",
    "INSERT INTO doctors_doctor_specialties (id, doctor_id, specialty_id) VALUES (1, 1, 1)",
    # Patient 1: mojibake name, wrong cédula check digit, zero birth date, typed gender.
    "INSERT INTO patients_patient (id, cedula, first_name, last_name, birth_date, gender,"
    " phone, email, address, city, emergency_contact, emergency_phone, updated_at) VALUES"
    " (1, '1710034066', 'JosÃ© MarÃ­a', 'NÃºÃ±ez  Ordóñez', '0000-00-00', ' Masculino ',"
    " '098-123-4567', 'Jose@Correo.EC', 'Calle Sucre 12', 'Quito', 'Inés Núñez',"
    " '0991112222', '2025-01-02 08:00:00')",
    # Patient 2: the same person typed again (same cédula, other format): merged into 1,
    # keeping its own phone and address, and the birth date 1 lacks.
    "INSERT INTO patients_patient (id, cedula, first_name, last_name, birth_date, gender,"
    " phone, address, city, updated_at) VALUES (2, '171003406-6', 'JOSE MARIA', 'Nuñez',"
    " '1980-05-04', 'M', '0987776655', 'Av. Amazonas 100', 'Quito', '2025-01-03 08:00:00')",
    # Patient 3: a clean one, with a blood group and allergies typed by hand.
    "INSERT INTO patients_patient (id, cedula, first_name, last_name, birth_date, gender,"
    " blood_type, allergies, updated_at) VALUES (3, '0102030405', 'Lucía', 'Andrade',"
    " '1990-12-31', 'f', 'o Rh+', 'Penicilina, sulfas', '2025-01-03 09:00:00')",
    "UPDATE patients_patient SET allergies = 'Ninguna.', blood_type = 'X' WHERE id = 1",
    "INSERT INTO schedules_schedule (id, doctor_id, room_id, date, start_time, end_time,"
    " slot_minutes, is_active) VALUES (1, 1, 1, '2025-03-10', '08:00:00', '12:00:00', 20, 1)",
    # Appointment 1: hand-typed status with spaces and case; booked via schedule 1.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, schedule_id, room_id,"
    " date, time, duration_minutes, status, reason, created_at) VALUES (1, 1, 1, 1, 1,"
    " '2025-03-10', '08:20:00', 20, ' confirmed ', 'Control de presión',"
    " '2025-03-01 09:30:00')",
    # Appointment 2: patient 2 (the duplicate) and a doctor that does not exist.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, date, time, status)"
    " VALUES (2, 2, 99, '2025-03-11', '09:00:00', 'Completada')",
    # Appointment 3: orphan patient (required reference): rejected.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, date, time, status)"
    " VALUES (3, 4242, 1, '2025-03-12', '10:00:00', 'PENDING')",
    # Appointment 4: a status nobody can map: rejected.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, date, time, status)"
    " VALUES (4, 3, 1, '2025-03-12', '11:00:00', 'QUIZAS')",
    "INSERT INTO accounts_user (id, username, password, role, doctor_id) VALUES"
    " (5, 'dr.penafiel', 'x', 'DOCTOR', 1)",
    "INSERT INTO appointments_appointmentaction (id, appointment_id, user_id, action,"
    " from_status, to_status, channel, note, created_at) VALUES"
    " (1, 1, NULL, 'CONFIRMED', 'PENDING', 'CONFIRMED', 'WHATSAPP', 'Confirmar',"
    " '2025-03-08 19:05:00'),"
    " (2, 1, 5, 'CREATED', NULL, 'PENDING', 'WEB', NULL, '2025-03-01 09:30:00')",
    "INSERT INTO medical_records_medicalrecord (id, patient_id, doctor_id, appointment_id,"
    " visit_date, reason, diagnosis, diagnosis_code) VALUES (1, 1, 1, 1,"
    " '2025-03-10 08:25:00', 'Control', 'Hipertensión esencial (primaria)', 'i10')",
    "INSERT INTO medical_records_vitalsigns (id, medical_record_id, patient_id, measured_at,"
    " systolic, diastolic, heart_rate, temperature) VALUES"
    " (1, 1, 1, '2025-03-10 08:30:00', 142, NULL, 78, 36.8)",
    "INSERT INTO pharmacy_medication (id, code, name, generic_name, atc_code, form, strength,"
    " is_active) VALUES (1, 'MED-0001', 'Enalapril 10 mg', 'Enalapril', 'c09aa02', 'tableta',"
    " '10 mg', 1)",
    # Two lots of it in stock, one with no expiry typed.
    "INSERT INTO pharmacy_medicationbatch (id, medication_id, batch_number, expiry_date,"
    " quantity) VALUES (1, 1, 'L000123', '2026-04-01', 120), (2, 1, ' l000456', NULL, 0)",
    "INSERT INTO medical_records_prescription (id, medical_record_id, patient_id, doctor_id,"
    " issued_at, status) VALUES (1, 1, 1, 1, '2025-03-10 08:40:00', 'active ')",
    "INSERT INTO medical_records_prescriptionitem (id, prescription_id, medication_id, dosage,"
    " frequency_hours, duration_days, quantity, instructions) VALUES"
    " (1, 1, 1, '1 tableta', 12, 30, 60, 'Tomar con agua')",
    "INSERT INTO pharmacy_dispensation (id, prescription_item_id, patient_id, medication_id,"
    " quantity, dispensed_at, status) VALUES (1, 1, 1, 1, 60, '2025-03-10 10:00:00',"
    " 'DESPACHADO ')",
    "INSERT INTO billing_invoice (id, number, patient_id, clinic_id, appointment_id,"
    " issued_at, status, subtotal, iva, total) VALUES (1, '001-001-000000001', 1, 1, 1,"
    " '2025-03-10 09:00:00', 'pagada', 45.00, 0.00, 45.00)",
    "INSERT INTO billing_invoiceline (id, invoice_id, description, quantity, unit_price,"
    " line_total) VALUES (1, 1, 'Consulta médica', 1, 30.00, 30.00),"
    " (2, 1, 'Electrocardiograma', 1, 15.00, 15.00)",
]


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def _ref(base: str, reference: str) -> dict[str, Any]:
    return get(base, reference)  # type: ignore[no-any-return]


def test_clinica_rules_hand_checked(mariadb_url: str, fhir_base: str, tmp_path: Path) -> None:
    engine = create_engine(mariadb_url)
    create_tables(engine, "clinica")
    engine.dispose()
    execute(mariadb_url, *ROWS)

    summary = run(mariadb_url, "clinica", fhir_base, tmp_path)
    assert not summary.ok  # two appointments were rejected
    assert stats(summary, "appointments").failed == 2
    assert stats(summary, "patients").merged == 1

    # Patient: mojibake repaired, name words, cédula kept though its check digit is
    # wrong, zero date left out, both legacy keys of the merged duplicate kept, and its
    # phone, address and birth date (patient 1 has none) with them.
    patient = by_identifier(fhir_base, "Patient", L + "patients_patient", "1")
    assert _strip(patient) == {
        "resourceType": "Patient",
        "identifier": [
            {"system": L + "patients_patient", "value": "1"},
            {"system": L + "patients_patient", "value": "2"},
            {"system": CEDULA, "type": NI, "value": "1710034066"},
        ],
        "active": True,
        "name": [{"use": "official", "family": "Núñez Ordóñez", "given": ["José", "María"]}],
        "telecom": [
            {"system": "phone", "value": "0981234567", "use": "mobile"},
            {"system": "email", "value": "jose@correo.ec", "use": "home"},
            {"system": "phone", "value": "0987776655", "use": "mobile"},
        ],
        "gender": "male",
        "birthDate": "1980-05-04",
        "address": [
            {"use": "home", "line": ["Calle Sucre 12"], "city": "Quito", "country": "EC"},
            {"use": "home", "line": ["Av. Amazonas 100"], "city": "Quito", "country": "EC"},
        ],
        "contact": [
            {
                "relationship": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0131",
                                "code": "C",
                                "display": "Emergency Contact",
                            }
                        ]
                    }
                ],
                "name": {"text": "Inés Núñez"},
                "telecom": [{"system": "phone", "value": "0991112222"}],
            }
        ],
    }
    assert search(fhir_base, "Patient", identifier=f"{L}patients_patient|2") == [patient]

    # The chart header: blood group (LOINC 882-1, SNOMED CT value from the blood-type
    # vocabulary, typed text kept; an unknown one keeps only its text and is reported)
    # and allergies ("Ninguna." is SNOMED CT's No known allergy).
    lucia = by_identifier(fhir_base, "Patient", L + "patients_patient", "3")
    group = by_identifier(fhir_base, "Observation", L + "patients_patient:blood_group", "3")
    assert group["code"]["coding"][0]["code"] == "882-1"
    assert group["subject"] == {"reference": f"Patient/{lucia['id']}"}
    assert group["valueCodeableConcept"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "278147001"}],
        "text": "o Rh+",
    }
    unknown = by_identifier(fhir_base, "Observation", L + "patients_patient:blood_group", "1")
    assert unknown["valueCodeableConcept"] == {"text": "X"}
    allergy = by_identifier(fhir_base, "AllergyIntolerance", L + "patients_patient:allergies", "3")
    assert allergy["code"] == {"text": "Penicilina, sulfas"}
    assert allergy["patient"] == {"reference": f"Patient/{lucia['id']}"}
    assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    none = by_identifier(fhir_base, "AllergyIntolerance", L + "patients_patient:allergies", "1")
    assert none["code"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "716186003", "display": "No known allergy"}
    ]

    # Appointment: status code map over " confirmed ", local time with the
    # America/Guayaquil offset, end = start + duration, conditional references resolved.
    appt = by_identifier(fhir_base, "Appointment", L + "appointments_appointment", "1")
    doctor = by_identifier(fhir_base, "Practitioner", L + "doctors_doctor", "1")
    room = by_identifier(fhir_base, "Location", L + "clinics_room", "1")
    slot = by_identifier(fhir_base, "Slot", L + "appointments_appointment", "1")
    assert _strip(appt) == {
        "resourceType": "Appointment",
        "identifier": [{"system": L + "appointments_appointment", "value": "1"}],
        "status": "booked",
        "description": "Control de presión",
        "reasonCode": [{"text": "Control de presión"}],
        "start": "2025-03-10T08:20:00-05:00",
        "end": "2025-03-10T08:40:00-05:00",
        "minutesDuration": 20,
        "slot": [{"reference": f"Slot/{slot['id']}"}],
        "created": "2025-03-01T09:30:00-05:00",
        "participant": [
            {"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{doctor['id']}"}, "status": "accepted"},
            {"actor": {"reference": f"Location/{room['id']}"}, "status": "accepted"},
        ],
    }
    schedule = by_identifier(fhir_base, "Schedule", L + "schedules_schedule", "1")
    assert slot["schedule"] == {"reference": f"Schedule/{schedule['id']}"}
    assert (slot["status"], slot["start"], slot["end"]) == (
        "busy",
        "2025-03-10T08:20:00-05:00",
        "2025-03-10T08:40:00-05:00",
    )
    assert schedule["actor"] == [
        {"reference": f"Practitioner/{doctor['id']}"},
        {"reference": f"Location/{room['id']}"},
    ]
    # The duplicate's appointment points at the merged patient; the unknown doctor is
    # dropped (a warning), the appointment kept.
    appt2 = by_identifier(fhir_base, "Appointment", L + "appointments_appointment", "2")
    assert appt2["status"] == "fulfilled"
    assert appt2["participant"] == [
        {"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"}
    ]

    # Blood pressure: one Observation, two components, a missing diastolic as
    # dataAbsentReason; LOINC codes and UCUM units.
    bp = by_identifier(
        fhir_base, "Observation", L + "medical_records_vitalsigns:blood-pressure", "1"
    )
    encounter = by_identifier(fhir_base, "Encounter", L + "medical_records_medicalrecord", "1")
    assert _strip(bp)["component"] == [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6",
                                 "display": "Systolic blood pressure"}]},
            "valueQuantity": {"value": 142, "unit": "mmHg",
                              "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4",
                                 "display": "Diastolic blood pressure"}]},
            "dataAbsentReason": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": "unknown"}]},
        },
    ]  # fmt: skip
    assert bp["code"]["coding"][0]["code"] == "85354-9"
    assert bp["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert bp["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert bp["effectiveDateTime"] == "2025-03-10T08:30:00-05:00"
    temp = by_identifier(
        fhir_base, "Observation", L + "medical_records_vitalsigns:body-temperature", "1"
    )
    assert temp["valueQuantity"] == {
        "value": 36.8, "unit": "°C", "system": "http://unitsofmeasure.org", "code": "Cel"
    }  # fmt: skip
    # No respiratory rate was measured: no Observation (skipped by `when`, no error).
    assert (
        search(
            fhir_base, "Observation", identifier=L + "medical_records_vitalsigns:respiratory-rate|1"
        )
        == []
    )

    condition = by_identifier(fhir_base, "Condition", L + "medical_records_medicalrecord", "1")
    assert condition["code"] == {
        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}],
        "text": "Hipertensión esencial (primaria)",
    }
    assert condition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}

    medication = by_identifier(fhir_base, "Medication", L + "pharmacy_medication", "1")
    assert medication["code"]["coding"] == [
        {"system": "http://www.whocc.no/atc", "code": "C09AA02", "display": "Enalapril"}
    ]
    # Stock: a Medication per lot (R4's Medication.batch is 0..1) and a completed
    # SupplyDelivery bringing its quantity on hand into the pharmacy (the opening balance).
    pharmacy = by_identifier(fhir_base, "Location", L + "pharmacy", "1")
    assert pharmacy["name"] == "Farmacia" and pharmacy["type"][0]["coding"][0]["code"] == "PHARM"
    for key, lot, expiry, quantity in (
        ("1", "L000123", "2026-04-01", 120),
        ("2", "l000456", None, 0),
    ):
        batch = by_identifier(fhir_base, "Medication", L + "pharmacy_medicationbatch", key)
        assert batch["code"] == medication["code"]
        assert batch["batch"] == ({"lotNumber": lot, "expirationDate": expiry} if expiry
                                  else {"lotNumber": lot})  # fmt: skip
        receipt = by_identifier(
            fhir_base, "SupplyDelivery", L + "pharmacy_medicationbatch:receipt", key
        )
        assert receipt["status"] == "completed"
        assert receipt["suppliedItem"] == {
            "quantity": {"value": quantity, "unit": "unidades"},
            "itemReference": {"reference": f"Medication/{batch['id']}"},
        }
        assert receipt["destination"] == {"reference": f"Location/{pharmacy['id']}"}
    request = by_identifier(
        fhir_base, "MedicationRequest", L + "medical_records_prescriptionitem", "1"
    )
    assert (request["status"], request["intent"]) == ("active", "order")
    assert request["medicationReference"] == {"reference": f"Medication/{medication['id']}"}
    assert request["dosageInstruction"] == [
        {
            "text": "1 tableta, cada 12 horas, por 30 días",
            "patientInstruction": "Tomar con agua",
            "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
        }
    ]
    dispense = by_identifier(fhir_base, "MedicationDispense", L + "pharmacy_dispensation", "1")
    assert dispense["status"] == "completed"
    assert dispense["authorizingPrescription"] == [
        {"reference": f"MedicationRequest/{request['id']}"}
    ]

    # Invoice with its lines as lineItems (child rows), money in USD.
    invoice = by_identifier(fhir_base, "Invoice", L + "billing_invoice", "1")
    assert invoice["status"] == "balanced"
    assert invoice["lineItem"] == [
        {
            "sequence": 1,
            "chargeItemCodeableConcept": {"text": "Consulta médica"},
            "priceComponent": [{"type": "base", "amount": {"value": 30.0, "currency": "USD"}}],
        },
        {
            "sequence": 2,
            "chargeItemCodeableConcept": {"text": "Electrocardiograma"},
            "priceComponent": [{"type": "base", "amount": {"value": 15.0, "currency": "USD"}}],
        },
    ]
    assert invoice["totalGross"] == {"value": 45.0, "currency": "USD"}

    # Provenance of the action log: stable id from the legacy key, the key as a tag.
    system = L + "appointments_appointmentaction"
    prov = get(fhir_base, f"Provenance/{legacy_id(system, '1')}")
    assert prov["meta"]["tag"] == [{"system": system, "code": "1"}]
    assert prov["target"] == [{"reference": f"Appointment/{appt['id']}"}]
    assert prov["recorded"] == "2025-03-08T19:05:00-05:00"
    assert prov["agent"][0]["who"] == {
        "reference": f"Patient/{patient['id']}",
        "display": "Paciente (WhatsApp)",
    }
    assert prov["activity"]["coding"][0]["code"] == "UPDATE"
    prov2 = get(fhir_base, f"Provenance/{legacy_id(system, '2')}")
    assert prov2["agent"][0]["who"] == {
        "reference": f"Practitioner/{doctor['id']}",
        "display": "dr.penafiel",
    }
    assert prov2["activity"]["coding"][0]["code"] == "CREATE"

    # Every kind of dirt is in the report, with table, key and column.
    rows = report_rows(tmp_path / "report.csv")
    report = {(r["mapping"], r["key"], r["column"], r["severity"]) for r in rows}
    reasons = "\n".join(r["reason"] for r in report_rows(tmp_path / "report.csv"))
    assert ("patients", "1", "first_name", "warning") in report  # mojibake repaired
    assert ("patients", "1", "cedula", "warning") in report  # check digit
    assert ("patients", "1", "birth_date", "warning") in report  # 0000-00-00
    assert ("patients", "2", "id", "warning") in report  # duplicate merged
    assert ("blood_groups", "1", "blood_type", "warning") in report  # 'X' not a group
    # where the duplicate disagrees, patient 1's value is kept and the conflict reported
    conflicts = [r["reason"] for r in rows if r["key"] == "1" and "merged duplicate" in r["reason"]]
    assert len(conflicts) == 1 and conflicts[0].startswith("merged duplicate patients 2 has name")
    assert ("appointments", "2", "doctor_id", "warning") in report  # orphan, dropped
    assert ("appointments", "3", "patient_id", "error") in report  # orphan, required
    assert ("appointments", "4", "status", "error") in report  # unknown status
    assert "mojibake repaired: 'NÃºÃ±ez  Ordóñez' -> 'Núñez  Ordóñez'" in reasons
    assert "zero date '0000-00-00'" in reasons
    # Rows that depend on a rejected row are not sent with a dangling reference either.
    assert search(fhir_base, "Appointment", identifier=f"{L}appointments_appointment|3") == []
