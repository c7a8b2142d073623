-- Legacy schema of the Flask + MySQL medical-history system (seed 002, "Base de Datos
-- Final.sql"). Table and column names keep their accents, as the original export does.
-- Columns the seed does not list (Apellido, Cédula, Dirección, Correo, Motivo, the
-- Historial_Médico/Tratamiento/Medicamento/Usuario/Rol columns) are filled in the way
-- such a system has them. Statements are separated by ";" at the end of a line.

CREATE TABLE `Rol` (
  `ID_Rol` INT NOT NULL AUTO_INCREMENT,
  `Nombre_Rol` VARCHAR(50) NOT NULL,
  `Descripción` VARCHAR(255) NULL,
  PRIMARY KEY (`ID_Rol`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Paciente` (
  `ID_Paciente` INT NOT NULL AUTO_INCREMENT,
  `Nombre` VARCHAR(100) NOT NULL,
  `Apellido` VARCHAR(100) NULL,
  `Cédula` VARCHAR(13) NULL,
  `Fecha_Nacimiento` DATE NULL,
  `Género` VARCHAR(20) NULL,
  `Teléfono` VARCHAR(20) NULL,
  `Dirección` VARCHAR(255) NULL,
  `Correo` VARCHAR(120) NULL,
  `Fecha_Actualización` DATETIME NULL,
  PRIMARY KEY (`ID_Paciente`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Médico` (
  `ID_Médico` INT NOT NULL AUTO_INCREMENT,
  `Nombre` VARCHAR(100) NOT NULL,
  `Especialidad` VARCHAR(100) NULL,
  `Teléfono` VARCHAR(20) NULL,
  `Correo` VARCHAR(120) NULL,
  PRIMARY KEY (`ID_Médico`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- No FOREIGN KEY constraints: the legacy system never declared them, which is how its
-- data came to hold orphan keys.
CREATE TABLE `Cita` (
  `ID_Cita` INT NOT NULL AUTO_INCREMENT,
  `Fecha` DATE NULL,
  `Hora` TIME NULL,
  `Estado` VARCHAR(30) NULL,
  `Motivo` VARCHAR(255) NULL,
  `ID_Paciente` INT NULL,
  `ID_Médico` INT NULL,
  PRIMARY KEY (`ID_Cita`),
  KEY `idx_cita_paciente` (`ID_Paciente`),
  KEY `idx_cita_medico` (`ID_Médico`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Historial_Médico` (
  `ID_Historial` INT NOT NULL AUTO_INCREMENT,
  `ID_Paciente` INT NULL,
  `Fecha_Creación` DATETIME NULL,
  `Antecedentes` TEXT NULL,
  `Alergias` TEXT NULL,
  `Tipo_Sangre` VARCHAR(5) NULL,
  PRIMARY KEY (`ID_Historial`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Diagnóstico` (
  `ID_Diagnóstico` INT NOT NULL AUTO_INCREMENT,
  `Descripción` VARCHAR(500) NULL,
  `Código_CIE10` VARCHAR(10) NULL,
  `Fecha` DATE NULL,
  `ID_Historial` INT NULL,
  `ID_Cita` INT NULL,
  PRIMARY KEY (`ID_Diagnóstico`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Tratamiento` (
  `ID_Tratamiento` INT NOT NULL AUTO_INCREMENT,
  `ID_Diagnóstico` INT NULL,
  `Descripción` VARCHAR(500) NULL,
  `Fecha_Inicio` DATE NULL,
  `Fecha_Fin` DATE NULL,
  PRIMARY KEY (`ID_Tratamiento`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Medicamento` (
  `ID_Medicamento` INT NOT NULL AUTO_INCREMENT,
  `ID_Tratamiento` INT NULL,
  `Nombre` VARCHAR(150) NOT NULL,
  `Dosis` VARCHAR(50) NULL,
  `Frecuencia` VARCHAR(50) NULL,
  `Vía` VARCHAR(30) NULL,
  PRIMARY KEY (`ID_Medicamento`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `Usuario` (
  `ID_Usuario` INT NOT NULL AUTO_INCREMENT,
  `Nombre_Usuario` VARCHAR(80) NOT NULL,
  `Correo` VARCHAR(120) NULL,
  `Contraseña` VARCHAR(255) NOT NULL,
  `ID_Rol` INT NULL,
  `ID_Paciente` INT NULL,
  `ID_Médico` INT NULL,
  `Fecha_Creación` DATETIME NULL,
  PRIMARY KEY (`ID_Usuario`),
  UNIQUE KEY `uq_usuario_nombre` (`Nombre_Usuario`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
