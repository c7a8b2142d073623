"""The words of the login, patient picker, consent and launch pages, in English and
Spanish. The language comes from ``?lang=`` or else ``Accept-Language``."""

from __future__ import annotations

from starlette.requests import Request

from smart_auth.scopes import InvalidScope, parse_scope

LANGUAGES = ("en", "es")

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "login_title": "Sign in",
        "username": "Username",
        "password": "Password",
        "totp": "One-time code from your authenticator app",
        "new_password": "New password (at least 8 characters)",
        "sign_in": "Sign in",
        "switch": "Español",
        "err_invalid": "The username or password is not correct.",
        "err_locked": "Too many failed attempts from this device. Wait a moment and try again.",
        "err_totp_required": "Enter the one-time code from your authenticator app.",
        "err_totp_invalid": "The one-time code is not correct.",
        "err_must_reset": "You must choose a new password (at least 8 characters, different "
        "from the current one) before signing in.",
        "err_csrf": "The form expired. Please try again.",
        "picker_title": "Choose a patient",
        "search": "Search patients by name",
        "search_button": "Search",
        "born": "born",
        "no_patients": "No patients match.",
        "consent_title": "Allow access?",
        "consent_intro": "The application {app} asks for the following access. "
        "Untick anything you do not want to allow.",
        "patient_context": "Patient",
        "allow": "Allow",
        "deny": "Deny",
        "launch_title": "Launch an application",
        "app": "Application",
        "launch_patient": "Patient id",
        "launch_encounter": "Encounter id (optional)",
        "launch": "Launch",
        "error_title": "Authorization error",
        "signed_in_as": "Signed in as {user}",
        "forbidden_role": "Your account may not launch applications.",
        "no_apps": "No application is registered with a launch URL.",
        "unknown_patient": "There is no patient with this id.",
        "unknown_encounter": "There is no encounter with this id.",
        "unknown_client": "Choose one of the listed applications.",
        # scope words
        "s_patient": "of the current patient",
        "s_user": "that you can access",
        "s_system": "of every patient",
        "s_all": "all data",
        "v_c": "create",
        "v_r": "read",
        "v_u": "update",
        "v_d": "delete",
        "v_s": "search",
        "filtered": "only where {params}",
        "launch_scope": "Use the context of the current EHR session",
        "launch/patient": "Know which patient you choose",
        "launch/encounter": "Know the current encounter",
        "openid": "Know who you are (sign-in)",
        "fhirUser": "Know your user record (Practitioner or Patient)",
        "profile": "Know your profile",
        "offline_access": "Keep access when you are offline (long-lived refresh)",
        "online_access": "Keep access while you are signed in",
    },
    "es": {
        "login_title": "Iniciar sesión",
        "username": "Usuario",
        "password": "Contraseña",
        "totp": "Código de un solo uso de su aplicación de autenticación",
        "new_password": "Nueva contraseña (al menos 8 caracteres)",
        "sign_in": "Entrar",
        "switch": "English",
        "err_invalid": "El usuario o la contraseña no son correctos.",
        "err_locked": "Demasiados intentos fallidos desde este dispositivo. Espere un "
        "momento e inténtelo de nuevo.",
        "err_totp_required": "Introduzca el código de un solo uso de su aplicación.",
        "err_totp_invalid": "El código de un solo uso no es correcto.",
        "err_must_reset": "Debe elegir una contraseña nueva (al menos 8 caracteres, distinta "
        "de la actual) antes de entrar.",
        "err_csrf": "El formulario ha caducado. Inténtelo de nuevo.",
        "picker_title": "Elija un paciente",
        "search": "Buscar pacientes por nombre",
        "search_button": "Buscar",
        "born": "nacido/a el",
        "no_patients": "Ningún paciente coincide.",
        "consent_title": "¿Permitir el acceso?",
        "consent_intro": "La aplicación {app} solicita el siguiente acceso. "
        "Desmarque lo que no quiera permitir.",
        "patient_context": "Paciente",
        "allow": "Permitir",
        "deny": "Denegar",
        "launch_title": "Lanzar una aplicación",
        "app": "Aplicación",
        "launch_patient": "Id del paciente",
        "launch_encounter": "Id del encuentro (opcional)",
        "launch": "Lanzar",
        "error_title": "Error de autorización",
        "signed_in_as": "Sesión iniciada como {user}",
        "forbidden_role": "Su cuenta no puede lanzar aplicaciones.",
        "no_apps": "Ninguna aplicación tiene una URL de lanzamiento registrada.",
        "unknown_patient": "No existe ningún paciente con este id.",
        "unknown_encounter": "No existe ningún encuentro con este id.",
        "unknown_client": "Elija una de las aplicaciones de la lista.",
        "s_patient": "del paciente actual",
        "s_user": "a los que usted tiene acceso",
        "s_system": "de todos los pacientes",
        "s_all": "todos los datos",
        "v_c": "crear",
        "v_r": "leer",
        "v_u": "modificar",
        "v_d": "borrar",
        "v_s": "buscar",
        "filtered": "solo donde {params}",
        "launch_scope": "Usar el contexto de la sesión actual de la historia clínica",
        "launch/patient": "Saber qué paciente elige",
        "launch/encounter": "Saber el encuentro actual",
        "openid": "Saber quién es usted (inicio de sesión)",
        "fhirUser": "Conocer su registro de usuario (Practitioner o Patient)",
        "profile": "Conocer su perfil",
        "offline_access": "Mantener el acceso sin conexión (renovación de larga duración)",
        "online_access": "Mantener el acceso mientras tenga la sesión iniciada",
    },
}


def language(request: Request) -> str:
    """``?lang=es|en`` first, then the first supported language in Accept-Language."""
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return asked
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "en"


def describe_scope(scope: str, lang: str) -> str:
    """A scope in words: "read, search: Observation of the current patient"."""
    t = TEXT[lang]
    try:
        parsed = parse_scope(scope)
    except InvalidScope:
        parsed = None
    if parsed is None:
        key = "launch_scope" if scope == "launch" else scope
        return t.get(key, scope)
    verbs = ", ".join(t[f"v_{c}"] for c in "cruds" if c in parsed.interactions)
    what = t["s_all"] if parsed.resource_type == "*" else parsed.resource_type
    text = f"{verbs.capitalize()}: {what} {t['s_' + parsed.context]}"
    if parsed.params:
        params = ", ".join(f"{k}={v}" for k, v in parsed.params)
        text += " (" + t["filtered"].format(params=params) + ")"
    return text
