"""Seeded generator of realistic legacy data for the two schemas (``import make-sample``).

The dirt is deliberate, as found in real clinic exports: Spanish names with accents and,
in a few rows, the same names as latin1-read-as-UTF-8 mojibake; NULLs; ``0000-00-00``
dates (MySQL only: PostgreSQL cannot store them); foreign keys to rows that do not exist;
patients entered twice under the same cédula; cédulas with a wrong check digit; statuses
typed by hand with stray spaces and mixed case. Same seed, same database.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from importers.cedula import make_cedula, make_company_ruc
from importers.schemas import statements

FIRST_F = [
    "María",
    "Lucía",
    "Sofía",
    "Valentina",
    "Camila",
    "Ana",
    "Mónica",
    "Verónica",
    "Inés",
    "Raquel",
    "Gabriela",
    "Andrea",
    "Daniela",
    "Paola",
    "Jimena",
    "Belén",
    "Rocío",
    "Dolores",
    "Azucena",
    "Nathalí",
]
FIRST_M = [
    "José",
    "Juan",
    "Luis",
    "Andrés",
    "Martín",
    "Sebastián",
    "Nicolás",
    "Tomás",
    "Jesús",
    "Ramón",
    "Joaquín",
    "Iván",
    "Adrián",
    "Fabián",
    "Germán",
    "Óscar",
    "Carlos",
    "Diego",
    "Esteban",
    "Patricio",
]
LAST = [
    "García",
    "Rodríguez",
    "Martínez",
    "López",
    "González",
    "Pérez",
    "Sánchez",
    "Ramírez",
    "Núñez",
    "Muñoz",
    "Jiménez",
    "Gómez",
    "Díaz",
    "Hernández",
    "Álvarez",
    "Chávez",
    "Quiñónez",
    "Peñafiel",
    "Andrade",
    "Zambrano",
    "Cevallos",
    "Villacís",
    "Guzmán",
    "Ordóñez",
    "Benítez",
    "Cárdenas",
    "Castañeda",
    "Yánez",
    "Ibáñez",
    "León",
]
CITIES = [
    "Quito",
    "Guayaquil",
    "Cuenca",
    "Ambato",
    "Loja",
    "Manta",
    "Riobamba",
    "Ibarra",
    "Portoviejo",
    "Machala",
]
STREETS = [
    "Av. Amazonas",
    "Av. 10 de Agosto",
    "Calle Bolívar",
    "Av. de los Shyris",
    "Calle Sucre",
    "Av. 9 de Octubre",
    "Calle García Moreno",
    "Av. Orellana",
]
SPECIALTIES = [
    ("394802001", "Medicina General"),
    ("394579002", "Cardiología"),
    ("394537008", "Pediatría"),
    ("394585009", "Ginecología y Obstetricia"),
    ("394582007", "Dermatología"),
    ("394591006", "Neurología"),
    ("394801008", "Traumatología y Ortopedia"),
    ("394583002", "Endocrinología"),
    ("394589003", "Nefrología"),
    ("394594003", "Oftalmología"),
]
DIAGNOSES = [
    ("J06.9", "Infección aguda de las vías respiratorias superiores"),
    ("I10", "Hipertensión esencial (primaria)"),
    ("E11.9", "Diabetes mellitus tipo 2"),
    ("K29.7", "Gastritis, no especificada"),
    ("M54.5", "Lumbago no especificado"),
    ("N39.0", "Infección de vías urinarias"),
    ("J45.9", "Asma, no especificada"),
    ("E78.5", "Hiperlipidemia, no especificada"),
    ("A09", "Diarrea y gastroenteritis"),
    ("R51", "Cefalea"),
]
MEDICATIONS = [
    ("N02BE01", "Paracetamol", "500 mg", "tableta"),
    ("M01AE01", "Ibuprofeno", "400 mg", "tableta"),
    ("J01CA04", "Amoxicilina", "500 mg", "cápsula"),
    ("C09AA02", "Enalapril", "10 mg", "tableta"),
    ("A10BA02", "Metformina", "850 mg", "tableta"),
    ("A02BC01", "Omeprazol", "20 mg", "cápsula"),
    ("C10AA05", "Atorvastatina", "20 mg", "tableta"),
    ("R03AC02", "Salbutamol", "100 mcg", "inhalador"),
    ("R06AE07", "Cetirizina", "10 mg", "tableta"),
    ("J01MA02", "Ciprofloxacino", "500 mg", "tableta"),
    ("C08CA01", "Amlodipino", "5 mg", "tableta"),
    ("H02AB06", "Prednisona", "20 mg", "tableta"),
]
REASONS = [
    "Control",
    "Dolor de cabeza",
    "Fiebre",
    "Chequeo anual",
    "Dolor lumbar",
    "Control de presión",
    "Tos persistente",
    "Revisión de exámenes",
    "Control niño sano",
]
# Hand-typed statuses: the code maps must cope with case, spaces and Spanish.
CLINICA_STATUSES = {
    "PENDING": ["PENDING", "pending", " Pending", "PENDIENTE"],
    "CONFIRMED": ["CONFIRMED", "confirmed ", "Confirmada"],
    "RESCHEDULED": ["RESCHEDULED", "rescheduled"],
    "CANCELLED": ["CANCELLED", "Cancelled", "CANCELADA ", "canceled"],
    "COMPLETED": ["COMPLETED", "completed", " Completada"],
    "NO_SHOW": ["NO_SHOW", "no_show", "No Show"],
}
HM_STATUSES = {
    "COMPLETED": ["Completada", "completada", "COMPLETADA ", " Atendida"],
    "PENDING": ["Pendiente", "pendiente ", "PENDIENTE"],
    "CONFIRMED": ["Confirmada", " confirmada"],
    "CANCELLED": ["Cancelada", "CANCELADA", "cancelada "],
    "NO_SHOW": ["No asistió", "no asistio"],
}
# Treatments without medication (a Procedure, not a MedicationRequest)
PROCEDURES = ["Fisioterapia, 10 sesiones", "Curación de herida", "Nebulización",
              "Retiro de puntos", "Lavado de oído"]  # fmt: skip
ZERO_DATE = "0000-00-00"
Row = dict[str, Any]


def mojibake(text_: str) -> str:
    """What a latin1 client did to UTF-8 text: ``José`` -> ``JosÃ©``."""
    raw = text_.encode("utf-8")
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin1")


@dataclass
class Dirt:
    """How dirty the data is (probabilities per row) and what was made dirty."""

    mojibake: float = 0.03
    null: float = 0.05
    zero_date: float = 0.01
    orphan: float = 0.01
    duplicate: float = 0.01
    bad_cedula: float = 0.02
    made: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.made[what] = self.made.get(what, 0) + 1


class Generator:
    """Rows for one schema, from one seed."""

    def __init__(self, seed: int, dialect: str, dirt: Dirt | None = None) -> None:
        self.rng = random.Random(seed)
        self.dialect = dialect
        self.dirt = dirt or Dirt()
        self.now = datetime(2025, 6, 30, 18, 0, 0)
        self.cedula_seq = self.rng.randrange(10**6)

    # --- small helpers ---------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def name(self, gender: str) -> tuple[str, str]:
        first = self.rng.choice(FIRST_F if gender == "F" else FIRST_M)
        if self.chance(0.3):
            first += " " + self.rng.choice(FIRST_F if gender == "F" else FIRST_M)
        last = f"{self.rng.choice(LAST)} {self.rng.choice(LAST)}"
        if self.chance(self.dirt.mojibake):
            self.dirt.count("mojibake")
            first, last = mojibake(first), mojibake(last)
        return first, last

    def maybe(self, value: Any, p: float | None = None) -> Any:
        if self.chance(self.dirt.null if p is None else p):
            return None
        return value

    def cedula(self) -> str:
        self.cedula_seq += self.rng.randrange(1, 5000)
        value = make_cedula(self.rng.choice([1, 9, 17, 17, 17, 13, 7, 11]), self.cedula_seq)
        if self.chance(self.dirt.bad_cedula):
            self.dirt.count("bad_cedula")
            value = value[:9] + str((int(value[9]) + 1) % 10)
        return value

    def birth_date(self) -> Any:
        if self.dialect == "mysql" and self.chance(self.dirt.zero_date):
            self.dirt.count("zero_date")
            return ZERO_DATE
        return self.maybe(date(1940, 1, 1) + timedelta(days=self.rng.randrange(29000)))

    def stamp(self, days_back: int = 1000) -> datetime:
        return self.now - timedelta(minutes=self.rng.randrange(days_back * 24 * 60))

    def fk(self, upper: int) -> int:
        """A key in 1..upper, or (rarely) one that does not exist."""
        if self.chance(self.dirt.orphan):
            self.dirt.count("orphan")
            return upper + 1000 + self.rng.randrange(1000)
        return self.rng.randint(1, upper)

    def phone(self) -> str | None:
        return self.maybe(f"09{self.rng.randrange(10**8):08d}")

    def status(self, table: dict[str, list[str]], weights: Sequence[int]) -> tuple[str, str]:
        canonical = self.rng.choices(list(table), weights=weights)[0]
        return canonical, self.rng.choice(table[canonical])

    def password(self) -> str:
        salt = "".join(self.rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(12))
        digest = "".join(self.rng.choice("0123456789abcdef") for _ in range(43))
        return f"pbkdf2_sha256$260000${salt}${digest}="

    # --- clinica ---------------------------------------------------------------------
    def clinica(self, patients: int) -> dict[str, list[dict[str, Any]]]:
        rng = self.rng
        t: dict[str, list[dict[str, Any]]] = {}
        n_clinics = max(2, patients // 1500)
        cities = rng.sample(CITIES, min(n_clinics, len(CITIES)))  # then again, past 50k
        t["clinics_clinic"] = [
            {
                "id": i,
                "name": f"Clínica {c} {['Norte', 'Sur', 'Centro'][i % 3]}",
                "ruc": make_company_ruc(17, 100000 + i * 37),
                "address": f"{rng.choice(STREETS)} N{i}-12",
                "city": c,
                "phone": f"02{rng.randrange(10**7):07d}",
                "email": f"info{i}@clinica.ec",
                "is_active": 1,
                "updated_at": self.stamp(),
            }
            for i, c in enumerate((cities[k % len(cities)] for k in range(n_clinics)), start=1)
        ]
        t["clinics_room"] = [
            {
                "id": (c - 1) * 4 + r,
                "clinic_id": c,
                "name": f"Consultorio {r}0{c}",
                "floor": str(r),
                "room_type": rng.choice(["CONSULTA", "PROCEDIMIENTOS"]),
                "is_active": 1,
                "updated_at": self.stamp(),
            }
            for c in range(1, n_clinics + 1)
            for r in range(1, 5)
        ]
        n_rooms = len(t["clinics_room"])
        t["doctors_specialty"] = [
            {"id": i, "code": code, "name": name, "description": None}
            for i, (code, name) in enumerate(SPECIALTIES, start=1)
        ]
        n_doctors = max(5, patients // 60)
        doctors: list[Row] = []
        links: list[Row] = []
        for i in range(1, n_doctors + 1):
            gender = rng.choice("MF")
            first, last = self.name(gender)
            doctors.append(
                {
                    "id": i,
                    "user_id": None,
                    "clinic_id": rng.randint(1, n_clinics),
                    "cedula": self.cedula(),
                    "first_name": first,
                    "last_name": last,
                    "gender": gender,
                    "license_number": f"MSP-{rng.randrange(10**6):06d}",
                    "phone": self.phone(),
                    "email": f"dr{i}@clinica.ec",
                    "consultation_fee": Decimal(rng.choice([25, 30, 35, 40, 50])),
                    "is_active": int(self.chance(0.95)),
                    "created_at": self.stamp(2000),
                    "updated_at": self.stamp(),
                }
            )
            for s in rng.sample(range(1, len(SPECIALTIES) + 1), rng.choice([1, 1, 2])):
                links.append({"id": len(links) + 1, "doctor_id": i, "specialty_id": s})
        t["doctors_doctor"], t["doctors_doctor_specialties"] = doctors, links

        rows: list[Row] = []
        cedulas: list[str] = []
        for i in range(1, patients + 1):
            if cedulas and self.chance(self.dirt.duplicate):
                # The same person registered again: same cédula, name typed differently.
                self.dirt.count("duplicate")
                original = rng.choice(rows)
                rows.append(
                    {
                        **original,
                        "id": i,
                        "user_id": None,
                        "first_name": (original["first_name"] or "").upper(),
                        "phone": self.phone(),
                        "created_at": self.stamp(),
                        "updated_at": self.stamp(),
                    }
                )
                continue
            gender = rng.choice("MF")
            first, last = self.name(gender)
            ced = self.cedula()
            cedulas.append(ced)
            rows.append(
                {
                    "id": i,
                    "user_id": None,
                    "cedula": self.maybe(ced, 0.02),
                    "first_name": first,
                    "last_name": last,
                    "birth_date": self.birth_date(),
                    "gender": self.maybe(
                        rng.choice(
                            {
                                "M": ["M", "m", "Masculino ", "HOMBRE"],
                                "F": ["F", "f", " Femenino", "MUJER"],
                            }[gender]
                        )
                    ),
                    "phone": self.phone(),
                    "email": self.maybe(f"paciente{i}@correo.ec", 0.4),
                    "address": self.maybe(f"{rng.choice(STREETS)} y Calle {rng.randrange(1, 90)}"),
                    "city": rng.choice(CITIES),
                    "emergency_contact": self.maybe(" ".join(self.name("F"))),
                    "emergency_phone": self.phone(),
                    "blood_type": self.maybe(
                        rng.choice(["O+", "O+", "A+", "B+", "AB+", "O-"]), 0.3
                    ),
                    "allergies": self.maybe(
                        rng.choice(["Penicilina", "Ninguna", "Sulfas", ""]), 0.5
                    ),
                    "created_at": self.stamp(2000),
                    "updated_at": self.stamp(),
                }
            )
        t["patients_patient"] = rows

        schedules: list[Row] = []
        for d in range(1, n_doctors + 1):
            for _ in range(max(3, patients // n_doctors // 2)):
                day = (self.now - timedelta(days=rng.randrange(900))).date()
                start = rng.choice([7, 8, 9, 13, 14])
                schedules.append(
                    {
                        "id": len(schedules) + 1,
                        "doctor_id": d,
                        "room_id": rng.randint(1, n_rooms),
                        "date": day,
                        "start_time": time(start),
                        "end_time": time(start + 4),
                        "slot_minutes": 20,
                        "is_active": 1,
                        "updated_at": self.stamp(),
                    }
                )
        t["schedules_schedule"] = schedules

        appts: list[Row] = []
        actions: list[Row] = []
        taken: set[tuple[int, datetime]] = set()  # (doctor, start)
        rooms: set[tuple[int, datetime]] = set()  # (room, start)
        records: list[Row] = []
        vitals: list[Row] = []
        rx: list[Row] = []
        items: list[Row] = []
        disp: list[Row] = []
        invoices: list[Row] = []
        lines: list[Row] = []
        for a in range(1, patients * 2 + 1):
            sched = rng.choice(schedules)
            canonical, typed = self.status(CLINICA_STATUSES, [10, 15, 5, 10, 50, 10])
            start_slot = rng.randrange(12)
            when = datetime.combine(sched["date"], sched["start_time"]) + timedelta(
                minutes=20 * start_slot
            )
            # The clinic system never booked a doctor or a room twice (nor does the
            # server: docs/scheduling.md); a taken time moves on, without drawing again.
            while (sched["doctor_id"], when) in taken or (sched["room_id"], when) in rooms:
                when += timedelta(minutes=20)
            taken.add((sched["doctor_id"], when))
            rooms.add((sched["room_id"], when))
            created = when - timedelta(days=rng.randrange(1, 30))
            appts.append(
                {
                    "id": a,
                    "patient_id": self.fk(patients),
                    "doctor_id": sched["doctor_id"],
                    "schedule_id": sched["id"],
                    "room_id": sched["room_id"],
                    "date": when.date(),
                    "time": when.time(),
                    "duration_minutes": 20,
                    "status": typed,
                    "reason": self.maybe(rng.choice(REASONS)),
                    "notes": None,
                    "created_at": created,
                    "updated_at": self.stamp(),
                }
            )
            flow = {
                "PENDING": [],
                "CONFIRMED": ["CONFIRMED"],
                "RESCHEDULED": ["RESCHEDULED"],
                "CANCELLED": ["CANCELLED"],
                "COMPLETED": ["CONFIRMED", "COMPLETED"],
                "NO_SHOW": ["CONFIRMED", "NO_SHOW"],
            }[canonical]
            previous = "PENDING"
            actions.append(
                {
                    "id": len(actions) + 1,
                    "appointment_id": a,
                    "user_id": None,
                    "action": "CREATED",
                    "from_status": None,
                    "to_status": "PENDING",
                    "channel": rng.choice(["WEB", "PHONE"]),
                    "note": None,
                    "created_at": created,
                }
            )
            for step, new in enumerate(flow, start=1):
                actions.append(
                    {
                        "id": len(actions) + 1,
                        "appointment_id": a,
                        "user_id": None,
                        "action": new,
                        "from_status": previous,
                        "to_status": new,
                        "channel": rng.choice(["WEB", "WHATSAPP", "PHONE"]),
                        "note": "Respuesta del paciente por WhatsApp" if step == 1 else None,
                        "created_at": created + timedelta(days=step),
                    }
                )
                previous = new
            if canonical != "COMPLETED":
                continue
            diag = rng.choice(DIAGNOSES)
            rec_id = len(records) + 1
            patient_id = appts[-1]["patient_id"]
            records.append(
                {
                    "id": rec_id,
                    "patient_id": patient_id,
                    "doctor_id": sched["doctor_id"],
                    "appointment_id": a,
                    "visit_date": when,
                    "reason": appts[-1]["reason"],
                    "notes": self.maybe("Paciente refiere mejoría. Se indica control en 15 días."),
                    "diagnosis": diag[1],
                    "diagnosis_code": self.maybe(diag[0], 0.1),
                    "created_at": when,
                    "updated_at": self.stamp(),
                }
            )
            vitals.append(
                {
                    "id": len(vitals) + 1,
                    "medical_record_id": rec_id,
                    "patient_id": patient_id,
                    "measured_at": when + timedelta(minutes=5),
                    "systolic": self.maybe(rng.randint(95, 165)),
                    "diastolic": rng.randint(60, 100),
                    "heart_rate": self.maybe(rng.randint(55, 110)),
                    "respiratory_rate": self.maybe(rng.randint(12, 22)),
                    "temperature": self.maybe(Decimal(rng.randint(360, 392)) / 10),
                    "weight_kg": self.maybe(Decimal(rng.randint(450, 1100)) / 10),
                    "height_cm": self.maybe(Decimal(rng.randint(1450, 1900)) / 10),
                    "oxygen_saturation": self.maybe(rng.randint(90, 100)),
                    "updated_at": self.stamp(),
                }
            )
            if self.chance(0.6):
                rx_id = len(rx) + 1
                rx.append(
                    {
                        "id": rx_id,
                        "medical_record_id": rec_id,
                        "patient_id": patient_id,
                        "doctor_id": sched["doctor_id"],
                        "issued_at": when + timedelta(minutes=15),
                        "status": rng.choice(["ACTIVE", "active", "COMPLETED", "Dispensada "]),
                        "notes": None,
                        "updated_at": self.stamp(),
                    }
                )
                for _ in range(rng.choice([1, 1, 2, 3])):
                    item_id = len(items) + 1
                    med = rng.randint(1, len(MEDICATIONS))
                    items.append(
                        {
                            "id": item_id,
                            "prescription_id": rx_id,
                            "medication_id": self.fk(len(MEDICATIONS)),
                            "dosage": rng.choice(["1 tableta", "2 tabletas", "5 ml", "1 cápsula"]),
                            "frequency_hours": rng.choice([8, 12, 24]),
                            "duration_days": rng.choice([3, 5, 7, 10, 30]),
                            "quantity": rng.choice([10, 14, 20, 30]),
                            "instructions": self.maybe("Tomar después de las comidas"),
                        }
                    )
                    if self.chance(0.7):
                        disp.append(
                            {
                                "id": len(disp) + 1,
                                "prescription_item_id": item_id,
                                "patient_id": patient_id,
                                "medication_id": med,
                                "batch_id": med * 2 - rng.randint(0, 1),
                                "quantity": items[-1]["quantity"],
                                "dispensed_at": when + timedelta(hours=rng.randint(1, 30)),
                                "dispensed_by_id": None,
                                "status": rng.choice(["DISPENSED", "dispensed", "DESPACHADO "]),
                                "updated_at": self.stamp(),
                            }
                        )
            inv_id = len(invoices) + 1
            fee = Decimal(rng.choice([25, 30, 35, 40, 50]))
            inv_lines = [("Consulta médica", 1, fee)]
            if self.chance(0.3):
                inv_lines.append(("Electrocardiograma", 1, Decimal("15.00")))
            subtotal = sum((q * p for _, q, p in inv_lines), Decimal("0"))
            iva = Decimal("0.00")  # medical services are IVA 0% in Ecuador
            for desc, q, p in inv_lines:
                lines.append(
                    {
                        "id": len(lines) + 1,
                        "invoice_id": inv_id,
                        "description": desc,
                        "quantity": q,
                        "unit_price": p,
                        "line_total": q * p,
                    }
                )
            invoices.append(
                {
                    "id": inv_id,
                    "number": f"001-001-{inv_id:09d}",
                    "patient_id": patient_id,
                    "clinic_id": next(
                        r["clinic_id"] for r in t["clinics_room"] if r["id"] == sched["room_id"]
                    ),
                    "appointment_id": a,
                    "customer_id_number": None,
                    "issued_at": when + timedelta(minutes=30),
                    "status": rng.choice(["PAGADA", "pagada", "PENDIENTE", "ANULADA "]),
                    "subtotal": subtotal,
                    "iva": iva,
                    "total": subtotal + iva,
                    "updated_at": self.stamp(),
                }
            )
        t["appointments_appointment"], t["appointments_appointmentaction"] = appts, actions
        t["medical_records_medicalrecord"], t["medical_records_vitalsigns"] = records, vitals
        t["medical_records_prescription"], t["medical_records_prescriptionitem"] = rx, items
        t["pharmacy_dispensation"], t["billing_invoice"], t["billing_invoiceline"] = (
            disp,
            invoices,
            lines,
        )
        t["pharmacy_medication"] = [
            {
                "id": i,
                "code": f"MED-{i:04d}",
                "name": f"{name} {strength}",
                "generic_name": name,
                "atc_code": atc,
                "form": form,
                "strength": strength,
                "price": Decimal(rng.randint(50, 2000)) / 100,
                "is_active": 1,
                "updated_at": self.stamp(),
            }
            for i, (atc, name, strength, form) in enumerate(MEDICATIONS, start=1)
        ]
        t["pharmacy_medicationbatch"] = [
            {
                "id": (m - 1) * 2 + b,
                "medication_id": m,
                "batch_number": f"L{rng.randrange(10**6):06d}",
                "expiry_date": date(2026, rng.randint(1, 12), 1),
                "quantity": rng.randint(0, 500),
            }
            for m in range(1, len(MEDICATIONS) + 1)
            for b in (1, 2)
        ]
        users = [
            {
                "id": 1,
                "username": "admin",
                "email": "admin@clinica.ec",
                "first_name": "Admin",
                "last_name": "Sistema",
                "password": self.password(),
                "role": "ADMIN",
                "is_active": 1,
                "doctor_id": None,
                "patient_id": None,
                "last_login": self.stamp(30),
                "date_joined": self.stamp(2000),
                "updated_at": self.stamp(),
            },
            {
                "id": 2,
                "username": "recepcion",
                "email": "recepcion@clinica.ec",
                "first_name": "Rocío",
                "last_name": "Yánez",
                "password": self.password(),
                "role": " operator",
                "is_active": 1,
                "doctor_id": None,
                "patient_id": None,
                "last_login": self.stamp(30),
                "date_joined": self.stamp(2000),
                "updated_at": self.stamp(),
            },
        ]
        for doc in doctors:
            uid = len(users) + 1
            doc["user_id"] = uid
            users.append(
                {
                    "id": uid,
                    "username": f"dr{doc['id']}",
                    "email": doc["email"],
                    "first_name": doc["first_name"],
                    "last_name": doc["last_name"],
                    "password": self.password(),
                    "role": "DOCTOR",
                    "is_active": doc["is_active"],
                    "doctor_id": doc["id"],
                    "patient_id": None,
                    "last_login": None,
                    "date_joined": doc["created_at"],
                    "updated_at": self.stamp(),
                }
            )
        for pat in rows[: max(1, len(rows) // 10)]:
            uid = len(users) + 1
            pat["user_id"] = uid
            users.append(
                {
                    "id": uid,
                    "username": f"paciente{pat['id']}",
                    "email": pat["email"],
                    "first_name": pat["first_name"],
                    "last_name": pat["last_name"],
                    "password": self.password(),
                    "role": "PATIENT",
                    "is_active": 1,
                    "doctor_id": None,
                    "patient_id": pat["id"],
                    "last_login": None,
                    "date_joined": pat["created_at"],
                    "updated_at": self.stamp(),
                }
            )
        t["accounts_user"] = users
        staff = [u["id"] for u in users[:2]] + [d["user_id"] for d in doctors]
        for act in actions:
            act["user_id"] = rng.choice(staff) if act["channel"] != "WHATSAPP" else None
        return t

    # --- historial_medico ------------------------------------------------------------
    def historial_medico(self, patients: int) -> dict[str, list[dict[str, Any]]]:
        rng = self.rng
        t: dict[str, list[dict[str, Any]]] = {}
        t["Rol"] = [
            {"ID_Rol": 1, "Nombre_Rol": "Administrador", "Descripción": "Acceso total"},
            {"ID_Rol": 2, "Nombre_Rol": "Médico", "Descripción": None},
            {"ID_Rol": 3, "Nombre_Rol": "Paciente", "Descripción": None},
        ]
        pac: list[Row] = []
        for i in range(1, patients + 1):
            gender = rng.choice("MF")
            first, last = self.name(gender)
            pac.append(
                {
                    "ID_Paciente": i,
                    "Nombre": first,
                    "Apellido": self.maybe(last),
                    "Cédula": self.maybe(self.cedula(), 0.1),
                    "Fecha_Nacimiento": self.birth_date(),
                    "Género": self.maybe(
                        rng.choice(
                            {
                                "M": ["Masculino", "M", "masculino "],
                                "F": ["Femenino", "F", " FEMENINO"],
                            }[gender]
                        )
                    ),
                    "Teléfono": self.phone(),
                    "Dirección": self.maybe(f"{rng.choice(STREETS)}, {rng.choice(CITIES)}"),
                    "Correo": self.maybe(f"p{i}@correo.ec", 0.5),
                    "Fecha_Actualización": self.stamp(),
                }
            )
        t["Paciente"] = pac
        n_med = max(3, patients // 60)
        t["Médico"] = [
            {
                "ID_Médico": i,
                "Nombre": "Dr. " + " ".join(self.name(rng.choice("MF"))),
                "Especialidad": self.maybe(rng.choice(SPECIALTIES)[1]),
                "Teléfono": self.phone(),
                "Correo": f"medico{i}@historial.ec",
            }
            for i in range(1, n_med + 1)
        ]
        t["Historial_Médico"] = [
            {
                "ID_Historial": i,
                "ID_Paciente": i,
                "Fecha_Creación": self.stamp(2000),
                "Antecedentes": self.maybe("Sin antecedentes de importancia", 0.5),
                "Alergias": self.maybe("Penicilina", 0.8),
                "Tipo_Sangre": self.maybe("O+", 0.5),
            }
            for i in range(1, patients + 1)
        ]
        citas: list[Row] = []
        diags: list[Row] = []
        trat: list[Row] = []
        meds: list[Row] = []
        for c in range(1, patients * 2 + 1):
            canonical, typed = self.status(HM_STATUSES, [50, 15, 15, 10, 10])
            day = (self.now - timedelta(days=rng.randrange(900))).date()
            fecha: Any = day
            if self.chance(self.dirt.zero_date) and self.dialect == "mysql":
                self.dirt.count("zero_date")
                fecha = ZERO_DATE
            patient = self.fk(patients)
            citas.append(
                {
                    "ID_Cita": c,
                    "Fecha": fecha,
                    "Hora": time(rng.randint(7, 17), rng.choice([0, 20, 40])),
                    "Estado": typed,
                    "Motivo": self.maybe(rng.choice(REASONS)),
                    "ID_Paciente": patient,
                    "ID_Médico": self.fk(n_med),
                }
            )
            if canonical != "COMPLETED" or patient > patients:
                continue
            code, desc = rng.choice(DIAGNOSES)
            d_id = len(diags) + 1
            diags.append(
                {
                    "ID_Diagnóstico": d_id,
                    "Descripción": desc,
                    "Código_CIE10": self.maybe(code, 0.1),
                    "Fecha": day,
                    "ID_Historial": patient,
                    "ID_Cita": c,
                }
            )
            if self.chance(0.7):
                t_id = len(trat) + 1
                procedure = rng.choice(PROCEDURES) if self.chance(0.25) else None
                trat.append(
                    {
                        "ID_Tratamiento": t_id,
                        "ID_Diagnóstico": d_id,
                        "Descripción": procedure or "Tratamiento ambulatorio",
                        "Fecha_Inicio": day,
                        "Fecha_Fin": day + timedelta(days=rng.choice([5, 7, 10])),
                    }
                )
                for _ in range(0 if procedure else rng.choice([1, 2])):
                    _, name, strength, _ = rng.choice(MEDICATIONS)
                    meds.append(
                        {
                            "ID_Medicamento": len(meds) + 1,
                            "ID_Tratamiento": t_id,
                            "Nombre": f"{name} {strength}",
                            "Dosis": "1 tableta",
                            "Frecuencia": rng.choice(
                                ["Cada 8 horas", "Cada 12 horas", "Una vez al día"]
                            ),
                            "Vía": rng.choice(["Oral", "oral ", "VO"]),
                        }
                    )
        t["Cita"], t["Diagnóstico"], t["Tratamiento"], t["Medicamento"] = citas, diags, trat, meds
        users = [
            {
                "ID_Usuario": 1,
                "Nombre_Usuario": "admin",
                "Correo": "admin@historial.ec",
                "Contraseña": self.password(),
                "ID_Rol": 1,
                "ID_Paciente": None,
                "ID_Médico": None,
                "Fecha_Creación": self.stamp(2000),
            }
        ]
        for m in t["Médico"]:
            users.append(
                {
                    "ID_Usuario": len(users) + 1,
                    "Nombre_Usuario": f"medico{m['ID_Médico']}",
                    "Correo": m["Correo"],
                    "Contraseña": self.password(),
                    "ID_Rol": 2,
                    "ID_Paciente": None,
                    "ID_Médico": m["ID_Médico"],
                    "Fecha_Creación": self.stamp(2000),
                }
            )
        t["Usuario"] = users
        return t


def _insert(conn: Connection, table: str, rows: list[dict[str, Any]], chunk: int = 2000) -> None:
    if not rows:
        return
    q = conn.dialect.identifier_preparer.quote
    columns = list(rows[0])
    sql = text(
        f"INSERT INTO {q(table)} ({', '.join(q(c) for c in columns)}) "
        f"VALUES ({', '.join(f':p{i}' for i in range(len(columns)))})"
    )
    for start in range(0, len(rows), chunk):
        params = [
            {f"p{i}": row[c] for i, c in enumerate(columns)} for row in rows[start : start + chunk]
        ]
        conn.execute(sql, params)


def ensure_database(url: str) -> None:
    """CREATE DATABASE for the URL's database when it does not exist yet."""
    u = make_url(url)
    name = u.database
    if not name:
        raise ValueError("the source URL must name a database")
    server = u._replace(database="postgres" if u.get_backend_name() == "postgresql" else None)
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            q = conn.dialect.identifier_preparer.quote
            if u.get_backend_name() == "postgresql":
                exists = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if not exists:
                    conn.execute(text(f"CREATE DATABASE {q(name)} ENCODING 'UTF8'"))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {q(name)} CHARACTER SET utf8mb4"))
    finally:
        engine.dispose()


def dialect_of(engine: Engine) -> str:
    return "postgresql" if engine.dialect.name == "postgresql" else "mysql"


def create_tables(engine: Engine, schema: str, replace: bool = False) -> None:
    dialect = dialect_of(engine)
    with engine.begin() as conn:
        for statement in statements(schema, dialect):
            if replace:
                table = statement.split("(", 1)[0].split()[-1]
                conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(text(statement))


def make_sample(
    url: str,
    schema: str,
    patients: int,
    seed: int = 7,
    replace: bool = False,
    dirt: Dirt | None = None,
) -> dict[str, int]:
    """Create ``schema``'s tables in the database at ``url`` and fill them; returns the row
    count per table, plus the dirt made (``dirt:*``)."""
    ensure_database(url)
    engine = create_engine(url)
    try:
        dialect = dialect_of(engine)
        gen = Generator(seed, dialect, dirt)
        tables = gen.clinica(patients) if schema == "clinica" else gen.historial_medico(patients)
        create_tables(engine, schema, replace)
        with engine.begin() as conn:
            if dialect == "mysql":
                conn.execute(text("SET SESSION sql_mode = ''"))  # lets 0000-00-00 in
            for table, rows in tables.items():
                _insert(conn, table, rows)
        counts = {table: len(rows) for table, rows in tables.items()}
        counts.update({f"dirt:{k}": v for k, v in gen.dirt.made.items()})
        return counts
    finally:
        engine.dispose()
