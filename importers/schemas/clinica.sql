-- One Django-style schema (app_model table names, integer "id" keys, created_at /
-- updated_at audit columns) merging the appointment, records and pharmacy systems of
-- seeds 000, 001 and 003 with the Ecuadorian clinic system of seed 004 (cédula/RUC,
-- invoices). Written for MySQL/MariaDB; importers.schemas.ddl() turns it into
-- PostgreSQL for the systems that ran there. No FOREIGN KEY constraints (the legacy
-- data holds orphan keys). Statements end with ";" at the end of a line.

CREATE TABLE accounts_user (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  username VARCHAR(150) NOT NULL,
  email VARCHAR(254) NULL,
  first_name VARCHAR(150) NULL,
  last_name VARCHAR(150) NULL,
  password VARCHAR(128) NOT NULL,
  role VARCHAR(20) NOT NULL,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  doctor_id INT NULL,
  patient_id INT NULL,
  last_login DATETIME NULL,
  date_joined DATETIME NULL,
  updated_at DATETIME NULL
);

CREATE TABLE clinics_clinic (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(150) NOT NULL,
  ruc VARCHAR(13) NULL,
  address VARCHAR(255) NULL,
  city VARCHAR(80) NULL,
  phone VARCHAR(20) NULL,
  email VARCHAR(254) NULL,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  updated_at DATETIME NULL
);

CREATE TABLE clinics_room (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  clinic_id INT NULL,
  name VARCHAR(80) NOT NULL,
  floor VARCHAR(10) NULL,
  room_type VARCHAR(30) NULL,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  updated_at DATETIME NULL
);

CREATE TABLE doctors_specialty (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  code VARCHAR(20) NULL,
  name VARCHAR(100) NOT NULL,
  description TEXT NULL
);

CREATE TABLE doctors_doctor (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id INT NULL,
  clinic_id INT NULL,
  cedula VARCHAR(13) NULL,
  first_name VARCHAR(100) NOT NULL,
  last_name VARCHAR(100) NOT NULL,
  gender VARCHAR(10) NULL,
  license_number VARCHAR(50) NULL,
  phone VARCHAR(20) NULL,
  email VARCHAR(254) NULL,
  consultation_fee DECIMAL(10,2) NULL,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  created_at DATETIME NULL,
  updated_at DATETIME NULL
);

CREATE TABLE doctors_doctor_specialties (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  doctor_id INT NOT NULL,
  specialty_id INT NOT NULL
);

CREATE TABLE patients_patient (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id INT NULL,
  cedula VARCHAR(13) NULL,
  first_name VARCHAR(100) NULL,
  last_name VARCHAR(100) NULL,
  birth_date DATE NULL,
  gender VARCHAR(12) NULL,
  phone VARCHAR(20) NULL,
  email VARCHAR(254) NULL,
  address VARCHAR(255) NULL,
  city VARCHAR(80) NULL,
  emergency_contact VARCHAR(100) NULL,
  emergency_phone VARCHAR(20) NULL,
  blood_type VARCHAR(5) NULL,
  allergies TEXT NULL,
  created_at DATETIME NULL,
  updated_at DATETIME NULL
);

CREATE TABLE schedules_schedule (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  doctor_id INT NULL,
  room_id INT NULL,
  date DATE NULL,
  start_time TIME NULL,
  end_time TIME NULL,
  slot_minutes INT NOT NULL DEFAULT 20,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  updated_at DATETIME NULL
);

CREATE TABLE appointments_appointment (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  patient_id INT NULL,
  doctor_id INT NULL,
  schedule_id INT NULL,
  room_id INT NULL,
  date DATE NULL,
  time TIME NULL,
  duration_minutes INT NULL,
  status VARCHAR(20) NULL,
  reason VARCHAR(255) NULL,
  notes TEXT NULL,
  created_at DATETIME NULL,
  updated_at DATETIME NULL
);

CREATE TABLE appointments_appointmentaction (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  appointment_id INT NULL,
  user_id INT NULL,
  action VARCHAR(30) NOT NULL,
  from_status VARCHAR(20) NULL,
  to_status VARCHAR(20) NULL,
  channel VARCHAR(20) NULL,
  note VARCHAR(255) NULL,
  created_at DATETIME NULL
);

CREATE TABLE medical_records_medicalrecord (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  patient_id INT NULL,
  doctor_id INT NULL,
  appointment_id INT NULL,
  visit_date DATETIME NULL,
  reason VARCHAR(255) NULL,
  notes TEXT NULL,
  diagnosis VARCHAR(255) NULL,
  diagnosis_code VARCHAR(10) NULL,
  created_at DATETIME NULL,
  updated_at DATETIME NULL
);

CREATE TABLE medical_records_vitalsigns (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  medical_record_id INT NULL,
  patient_id INT NULL,
  measured_at DATETIME NULL,
  systolic INT NULL,
  diastolic INT NULL,
  heart_rate INT NULL,
  respiratory_rate INT NULL,
  temperature DECIMAL(4,1) NULL,
  weight_kg DECIMAL(5,1) NULL,
  height_cm DECIMAL(5,1) NULL,
  oxygen_saturation INT NULL,
  updated_at DATETIME NULL
);

CREATE TABLE pharmacy_medication (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  code VARCHAR(20) NULL,
  name VARCHAR(150) NOT NULL,
  generic_name VARCHAR(150) NULL,
  atc_code VARCHAR(10) NULL,
  form VARCHAR(30) NULL,
  strength VARCHAR(30) NULL,
  price DECIMAL(10,2) NULL,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  updated_at DATETIME NULL
);

CREATE TABLE pharmacy_medicationbatch (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  medication_id INT NULL,
  batch_number VARCHAR(30) NOT NULL,
  expiry_date DATE NULL,
  quantity INT NOT NULL DEFAULT 0
);

CREATE TABLE medical_records_prescription (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  medical_record_id INT NULL,
  patient_id INT NULL,
  doctor_id INT NULL,
  issued_at DATETIME NULL,
  status VARCHAR(20) NULL,
  notes TEXT NULL,
  updated_at DATETIME NULL
);

CREATE TABLE medical_records_prescriptionitem (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  prescription_id INT NULL,
  medication_id INT NULL,
  dosage VARCHAR(50) NULL,
  frequency_hours INT NULL,
  duration_days INT NULL,
  quantity INT NULL,
  instructions VARCHAR(255) NULL
);

CREATE TABLE pharmacy_dispensation (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  prescription_item_id INT NULL,
  patient_id INT NULL,
  medication_id INT NULL,
  batch_id INT NULL,
  quantity INT NULL,
  dispensed_at DATETIME NULL,
  dispensed_by_id INT NULL,
  status VARCHAR(20) NULL,
  updated_at DATETIME NULL
);

CREATE TABLE billing_invoice (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  number VARCHAR(20) NOT NULL,
  patient_id INT NULL,
  clinic_id INT NULL,
  appointment_id INT NULL,
  customer_id_number VARCHAR(13) NULL,
  issued_at DATETIME NULL,
  status VARCHAR(20) NULL,
  subtotal DECIMAL(10,2) NULL,
  iva DECIMAL(10,2) NULL,
  total DECIMAL(10,2) NULL,
  updated_at DATETIME NULL
);

CREATE TABLE billing_invoiceline (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  invoice_id INT NULL,
  description VARCHAR(255) NOT NULL,
  quantity INT NOT NULL DEFAULT 1,
  unit_price DECIMAL(10,2) NULL,
  line_total DECIMAL(10,2) NULL
);
