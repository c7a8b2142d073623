"""Server configuration: one ``Settings`` object, read from ``FHIR_*`` environment variables.

The CLI documents every field from here (``fhir-server serve --help``), so the
description of each field is also its user-facing help text.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fhir_server.input_limits import InputLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    base_url: str | None = Field(
        None,
        description="Public base URL of the FHIR API (e.g. https://fhir.example.org/fhir), "
        "used in Location headers and Bundle links. Default: derived from each request.",
    )
    mongo_url: str | None = Field(
        None,
        description="MongoDB connection string (replica set or sharded cluster). "
        "Unset: start an embedded mongod in --data-dir.",
    )
    database: str = Field("fhir", description="MongoDB database name.")
    mongo_select_timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Seconds a request waits for a reachable MongoDB before it is answered "
        "503 with Retry-After (serverSelectionTimeoutMS).",
    )
    mongo_transaction_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest a write transaction may take, its retries included (PyMongo's "
        "own limit is 120 s); then 503 with Retry-After, or, when the commit was sent, "
        "the write is looked up: 2xx if it committed, 503 if not, 504 if still unknown.",
    )
    read_preference: Literal["primary", "secondaryPreferred", "nearest"] = Field(
        "primary",
        description="Where searches read on a replica set: primary, or secondaryPreferred / "
        "nearest to spread them over the secondaries. A search still sees every write "
        "acknowledged before it began, through any API process (it starts at the "
        "primary's majority commit point; a secondary behind it waits). Reads by id, "
        "history and writes always use the primary.",
    )
    supervisor_backoff_seconds: float = Field(
        1.0,
        gt=0,
        le=600,
        description="Wait before restarting a dead embedded mongod or export worker; it "
        "doubles while restarts keep failing.",
    )
    supervisor_backoff_max_seconds: float = Field(
        60.0, gt=0, le=3600, description="Longest wait between restarts of a dead child."
    )
    data_dir: Path = Field(Path(".fhir-data"), description="Data directory of the embedded mongod.")
    mongod_bin: str | None = Field(
        None, description="Path of the mongod binary for the embedded default."
    )
    workers: int = Field(1, ge=1, le=64, description="Number of uvicorn worker processes.")
    allow_update_create: bool = Field(
        True, description="Allow PUT to create a resource with a client-chosen id."
    )
    appointment_min_notice: timedelta = Field(
        timedelta(hours=24),
        ge=timedelta(0),
        description="How long before an appointment's start a patient (a token in patient "
        "context) may still change or cancel it; staff may at any time. An ISO 8601 "
        "duration (PT24H) or seconds.",
    )
    appointment_hold: timedelta = Field(
        timedelta(minutes=10),
        gt=timedelta(0),
        description="How long a hold ($hold, or a pending appointment tagged "
        "urn:fhir-server:appointment-hold|hold) keeps its slot and times: "
        "after that a booking of them succeeds. An ISO 8601 duration (PT10M) or seconds.",
    )
    appointment_hold_sweep: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Seconds between sweeps that cancel expired holds nobody displaced yet.",
    )
    slot_horizon: timedelta = Field(
        timedelta(weeks=8),
        gt=timedelta(0),
        description="How far ahead Slots are generated from a Schedule's hours when its "
        "planningHorizon has no end. An ISO 8601 duration (P56D) or seconds.",
    )
    slot_timezone: str = Field(
        "UTC",
        description="IANA time zone in which the hours of a Schedule without the timezone "
        "extension are read.",
    )
    slot_roll_interval: float = Field(
        3600.0,
        gt=0,
        description="Seconds between runs that roll a Schedule's generated Slots on over "
        "its horizon (a change of hours is generated at the next check).",
    )
    slot_check_interval: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds between a worker's checks for Schedules whose Slots are due "
        "to be generated (after a change of hours, or to roll on).",
    )
    billing_iva_rate: Decimal = Field(
        Decimal("0.15"),
        ge=0,
        le=1,
        description="IVA rate of a charge whose ChargeItemDefinition states no tax "
        "component (0.15: 15 %); exempt items state a tax component with factor 0.",
    )
    billing_issuer: str | None = Field(
        None,
        description="The clinic's Organization (Organization/<id>, with its RUC): it issues "
        "the invoices Invoice/$generate builds and those of an Account without an owner, and "
        "the Encounters whose serviceProvider it is are charged (none when unset).",
    )
    report_clinic_name: str = Field(
        "Clínica",
        description="The clinic's name at the head of $report PDFs and spreadsheets when "
        "FHIR_BILLING_ISSUER names no Organization with a name (docs/reports.md).",
    )
    billing_establishment: str = Field(
        "001",
        pattern=r"^[0-9]{3}$",
        description="Establecimiento (3 digits) of the invoice numbers (001-001-000000123).",
    )
    billing_emission_point: str = Field(
        "001",
        pattern=r"^[0-9]{3}$",
        description="Punto de emisión (3 digits) of the invoice numbers (001-001-000000123).",
    )
    conditional_delete: Literal["single", "multiple"] = Field(
        "single",
        description="Conditional delete matching several resources: 'single' answers 412, "
        "'multiple' deletes them all.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's headers, from connecting or "
        "from the request's first byte; then 408 and the connection is closed (slow loris).",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Seconds a client has to send a request's whole body, from the end of "
        "its headers; then 408 and the connection is closed (slow body). Raise it for large "
        "uploads over slow links.",
    )
    keep_alive_timeout_seconds: int = Field(
        5, ge=1, le=3600, description="Seconds an idle keep-alive connection stays open."
    )
    limit_concurrency: int = Field(
        1000,
        ge=0,
        description="Most open connections (or requests in flight) per worker process; "
        "beyond it requests get 503 with Retry-After. 0: no limit.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes)."
    )
    json_max_depth: int = Field(
        128, ge=8, le=900, description="Deepest nesting of objects and arrays in request JSON."
    )
    json_max_array_length: int = Field(
        100_000, ge=100, description="Most items in one JSON array of a request."
    )
    json_max_string_chars: int = Field(
        8 * 1024 * 1024, ge=1024, description="Longest JSON string in a request (characters)."
    )
    json_max_number_digits: int = Field(
        64, ge=18, le=4000, description="Most digits of a JSON number in a request."
    )
    json_max_number_exponent: int = Field(
        308, ge=18, le=6000, description="Largest exponent of a JSON number in a request."
    )
    json_max_decimals: int = Field(
        100_000,
        ge=1000,
        description="Most decimal numbers (with a fraction or exponent) in one request body.",
    )
    validation_max_issues: int = Field(
        1000,
        ge=10,
        description="Validation stops after this many issues and says so (informational).",
    )
    cpu_pool_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Processes (and threads) per server process for CPU-bound request work "
        "(parsing, validation, indexing). Default: the cores divided by --workers.",
    )
    parse_in_processes: bool = Field(
        False,
        description="Parse large request bodies in child processes rather than in the "
        "thread pool (measured: no gain in latency, ~20% more CPU on ingest; see "
        "docs/benchmarks.md).",
    )
    graceful_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="On SIGTERM, seconds in-flight requests get to finish before the server "
        "stops anyway.",
    )
    validate_r4b_models: bool = Field(
        False,
        description="Also run the fhir.resources R4B models over every write (slower; the "
        "definition-driven pass already covers what they catch for R4).",
    )
    validate_invariants: bool = Field(
        False,
        description="Evaluate the FHIRPath invariants (constraints) of the R4 base definitions "
        "(dom-2..dom-6, obs-6, ref-1, ...) on every write: a failed error invariant "
        "refuses the write. $validate evaluates them whatever this says (a warning one is a "
        "$validate warning). Opt-in for writes while it is new.",
    )
    validate_bindings: bool = Field(
        True,
        description="Check the required and extensible bindings of the R4 base definitions "
        "against the value sets this server holds: a code outside a required one refuses "
        "the write, an extensible one is a $validate warning (false: only the required "
        "bindings of code elements, from the definitions).",
    )
    profile_enforcement: Literal["reject", "warn"] = Field(
        "reject",
        description="What a create or update does when the resource breaks a profile in its "
        "meta.profile that the server holds: reject (422) or warn (accept it; $validate "
        "reports the issues as warnings). Profiles the server does not hold are ignored.",
    )
    profile_enforcement_overrides: str = Field(
        "",
        description="Per-profile exceptions to FHIR_PROFILE_ENFORCEMENT, comma-separated "
        "url=reject or url=warn pairs (e.g. http://x/StructureDefinition/p=warn).",
    )
    required_profiles: str = Field(
        "",
        description="Profiles every resource of a type must conform to, with or without "
        "meta.profile: comma-separated Type=url pairs (a type may repeat: all apply). A "
        "violation is refused (422); a required profile the server does not hold refuses "
        "the writes of its type (and is logged as a warning at start).",
    )
    unknown_extensions: Literal["warn", "error", "ignore"] = Field(
        "warn",
        description="An extension whose url names no StructureDefinition the server holds: "
        "warn (accepted; $validate reports a warning), error (refused, 422; an R4 core "
        "extension stays a warning) or ignore.",
    )
    history_max_count: int = Field(1000, ge=1, description="Largest _count honoured on _history.")
    history_default_count: int = Field(50, ge=1, description="Default page size of _history.")
    bundle_max_entries: int = Field(
        10_000, ge=1, description="Most entries accepted in a transaction or batch Bundle."
    )
    bundle_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest transaction or batch Bundle (bytes)."
    )
    search_default_count: int = Field(20, ge=1, description="Default page size of searches.")
    search_max_count: int = Field(1000, ge=1, description="Largest _count honoured on searches.")
    log_level: str = Field("info", description="Log level (debug, info, warning, error).")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Format of the server's logs on stderr: text, or json (one JSON object "
        "per line: time, level, request_id, method, path, status, duration_ms).",
    )
    metrics: bool = Field(
        True,
        description="Collect Prometheus metrics and serve them at /metrics (false: neither, "
        "and no per-request cost).",
    )
    metrics_token: str | None = Field(
        None,
        description="Bearer token /metrics requires. Unset: /metrics answers loopback "
        "clients (127.0.0.1, ::1) only.",
    )
    audit: bool = Field(
        True,
        description="Record a BALP AuditEvent for every FHIR interaction and auth event "
        "(docs/audit.md); false only where another system keeps the audit trail.",
    )
    audit_retention_days: float = Field(
        2190,
        gt=0,
        description="Days audit records are kept before MongoDB deletes them (default six years).",
    )
    audit_max_lag_seconds: float = Field(
        60.0,
        gt=0,
        description="While requests leave no gap, audit facts are staged and their records "
        "made in a later gap, or once this many seconds old whatever the load (docs/audit.md).",
    )
    worker_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="How often a Celery worker records its heartbeat in MongoDB; "
        "/health/ready calls it stale after three missed beats.",
    )
    # SMART on FHIR authorization (smart_auth/); on by default.
    auth_enabled: bool = Field(
        True,
        description="Require SMART on FHIR access tokens on the FHIR API (false only for "
        "local development).",
    )
    auth_access_token_seconds: int = Field(
        900, ge=30, le=86_400, description="Lifetime of access tokens, in seconds."
    )
    auth_refresh_token_seconds: int = Field(
        90 * 86_400, ge=60, description="Lifetime of offline_access refresh tokens, in seconds."
    )
    auth_online_refresh_token_seconds: int = Field(
        8 * 3600, ge=60, description="Lifetime of online_access refresh tokens, in seconds."
    )
    auth_key_rotation_seconds: int = Field(
        7 * 86_400, ge=3600, description="Seconds a token signing key signs before rotation."
    )
    auth_lockout_attempts: int = Field(
        5,
        ge=1,
        description="Failed logins for one username from one client IP before each further "
        "attempt from that IP must wait (1 s, doubling per failure; other IPs unaffected).",
    )
    # --- outbound messages: subscriptions (docs/subscriptions.md), mail -----------------
    outbound_allow: str = Field(
        "public",
        description="Where subscription notifications may be sent (rest-hook endpoints), a "
        "comma-separated list: 'public' (any address that is not loopback, private, "
        "link-local, multicast or reserved), host names (example.org, *.example.org), "
        "host:port, IP addresses and networks (10.1.2.0/24). Every address a name resolves "
        "to must be allowed. Empty: nothing is sent.",
    )
    subscription_max_attempts: int = Field(
        8,
        ge=1,
        le=100,
        description="Failed deliveries in a row after which a Subscription goes to 'error'.",
    )
    subscription_retry_base_seconds: float = Field(
        2.0, gt=0, le=3600, description="Wait before the first retry (doubled each time)."
    )
    subscription_retry_max_seconds: float = Field(
        600.0, gt=0, le=86400, description="Longest wait between two retries."
    )
    subscription_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Timeout of one delivery (connect, send, answer)."
    )
    subscription_lease_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a worker holds a Subscription's deliveries without progress "
        "before another worker takes them over (after a worker died).",
    )
    subscription_poll_interval: float = Field(
        0.25, gt=0, le=60, description="Seconds between a worker's looks for due notifications."
    )
    smtp_host: str | None = Field(
        None, description="SMTP server for email notifications and reminders (unset: none)."
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="starttls (STARTTLS, required), tls (TLS from the start, port 465) or "
        "none (plain, for a relay on the same host).",
    )
    smtp_user: str | None = Field(None, description="SMTP login (unset: no AUTH).")
    smtp_password: str | None = Field(None, description="SMTP password.")
    smtp_from: str = Field(
        "FHIR server <fhir-server@localhost>", description="Sender of the messages."
    )
    smtp_timeout_seconds: float = Field(10.0, gt=0, le=300, description="SMTP timeout.")
    smtp_verify_tls: bool = Field(
        True, description="Verify the SMTP server's certificate (off only for tests)."
    )
    auth_lockout_seconds: int = Field(
        900, ge=1, description="Longest wait between failed logins (the doubling stops here)."
    )
    rate_limit_client: str = Field(
        "30000/60s",
        description="Requests one client (client_id, all its users together) may make: "
        "N/period (units s, m, h, d), a burst of N then N per period; 429 with Retry-After "
        "beyond it. 0 or empty: no limit. A client's registration may set its own "
        "(the rate limit option of auth create-client).",
    )
    rate_limit_user: str = Field(
        "3000/60s",
        description="Requests one user (the token's subject, whatever the app) may make: "
        "N/period as FHIR_RATE_LIMIT_CLIENT; backend clients have no user. 0 or empty: no "
        "limit.",
    )
    rate_limit_redis_url: str | None = Field(
        None,
        description="Redis (redis://host:6379/0) holding the rate limit buckets the API "
        "processes share. Unset: the server's MongoDB holds them (auth_rate_limits).",
    )
    trusted_proxies: str = Field(
        "127.0.0.1,::1",
        description="Addresses and networks of the reverse proxies whose X-Forwarded-Proto and "
        "X-Forwarded-For are believed (uvicorn's forwarded_allow_ips), comma-separated "
        "(10.0.0.5,172.16.0.0/12), or '*' for any peer. The request's scheme (https for the "
        "token endpoint, the URLs discovery advertises) and client address come from them.",
    )
    cors_origins: str = Field(
        "*",
        description="Origins allowed to call the FHIR API and the token endpoint from a "
        "browser (CORS): '*' or a comma-separated list such as "
        "https://app.example.org,http://localhost:3000. Login pages never allow CORS.",
    )
    celery_broker_url: str | None = Field(
        None,
        description="Celery broker of the bulk export workers (redis://... or amqp://...). "
        "Unset: the MongoDB of the server (kombu's MongoDB transport), and `serve` starts "
        "one worker process itself.",
    )
    celery_queue: str = Field("fhir-bulk", description="Celery queue of bulk export tasks.")
    export_file_max_resources: int = Field(
        50_000, ge=1, description="Most resources in one bulk export NDJSON file."
    )
    export_expiry_seconds: int = Field(
        3600, ge=1, description="Seconds a finished bulk export's files stay downloadable."
    )
    export_lease_seconds: int = Field(
        60,
        ge=1,
        description="Seconds without progress after which a bulk export unit whose worker "
        "died is given to another worker.",
    )
    import_dirs: str = Field(
        "",
        description="Directories whose files a bulk $import may read as file:// inputs, "
        "comma-separated (/srv/imports,/data/ndjson). Empty: file:// inputs are refused.",
    )
    import_url_allow: str = Field(
        "",
        description="URL prefixes a bulk $import may fetch http(s):// inputs from, "
        "comma-separated (https://data.example.org/exports/). Empty: http(s) inputs are "
        "refused. Redirects are not followed.",
    )
    import_unit_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="Bytes of a file:// $import input per unit of work: a larger input is "
        "split into ranges that several workers import side by side.",
    )
    import_chunk_resources: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Resources per $import chunk: one MongoDB transaction and one "
        "checkpoint, the most a killed worker's successor redoes.",
    )
    terminology_load_core: bool = Field(
        True,
        description="Load the R4 core code systems, value sets and concept maps when "
        "`serve` starts and they are not loaded yet (`fhir-server terminology load-core`).",
    )
    terminology_max_expansion: int = Field(
        10_000,
        ge=1,
        description="Most concepts a ValueSet/$expand returns; larger ones answer too-costly.",
    )
    # --- appointment reminders and replies (docs/reminders.md) ---------------------------
    reminder_lead_times: str = Field(
        "48h",
        description="How long before an appointment's start its reminders are due, "
        "comma-separated, each a number and a unit s, m, h or d (48h, or 48h,2h). Server "
        "and workers must agree.",
    )
    reminder_timezone: str = Field(
        "America/Guayaquil",
        description="IANA time zone in which reminders and replies give the date and time.",
    )
    reminder_language: str = Field(
        "es",
        description="Language of the messages for a patient whose Patient.communication "
        "names none the templates have.",
    )
    reminder_phone_channel: Literal["whatsapp", "sms"] = Field(
        "whatsapp",
        description="Channel of a Patient.telecom with system 'phone' (system 'sms' is "
        "always SMS).",
    )
    reminder_country_code: str = Field(
        "593",
        pattern=r"^[1-9][0-9]{0,2}$",
        description="Country calling code of national phone numbers (09... is +5939...).",
    )
    reminder_check_interval: float = Field(
        5.0,
        gt=0,
        le=50,
        description="Seconds between a worker's looks for due reminders (each is sent "
        "within this much of its time, plus the sending).",
    )
    reminder_lease_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a worker holds a reminder it claimed before another worker "
        "takes it over (after the first died); longer than FHIR_TWILIO_TIMEOUT_SECONDS.",
    )
    reminder_concurrency: int = Field(
        16, ge=1, le=256, description="Messages one worker sends at once."
    )
    twilio_account_sid: str | None = Field(
        None, description="Twilio account SID (unset: no WhatsApp or SMS reminders)."
    )
    twilio_auth_token: str | None = Field(
        None, description="Twilio auth token: the API's password and the webhook's signing key."
    )
    twilio_whatsapp_from: str | None = Field(
        None, description="WhatsApp sender (whatsapp:+14155238886; unset: no WhatsApp)."
    )
    twilio_sms_from: str | None = Field(None, description="SMS sender (+1...; unset: no SMS).")
    twilio_api_base: str = Field(
        "https://api.twilio.com", description="Base URL of Twilio's REST API."
    )
    twilio_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Timeout of one Twilio API request."
    )
    twilio_webhook_url: str | None = Field(
        None,
        description="Public URL Twilio posts replies to, which its signature covers. Unset: "
        "FHIR_BASE_URL's parent + /webhooks/twilio, else the URL the request came to.",
    )

    @field_validator("appointment_min_notice", "appointment_hold", "slot_horizon", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        """The environment gives strings: "90" means 90 seconds, as the descriptions
        say (pydantic reads only ISO 8601 or [-][DD]D[,][HH:MM:]SS from a string)."""
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @field_validator("slot_timezone", "reminder_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        """A zone the generator can read hours in (refused at start, not at each run)."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("profile_enforcement_overrides")
    @classmethod
    def _overrides(cls, value: str) -> str:
        """Malformed pairs stop the server at start, not at the first write."""
        from profiles.enforcement import parse_overrides

        parse_overrides(value)
        return value

    @field_validator("required_profiles")
    @classmethod
    def _required(cls, value: str) -> str:
        from profiles.enforcement import parse_required

        parse_required(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        """uvicorn takes a malformed entry as a literal that never matches, so a typo
        would silently distrust the proxy: refused at start instead."""
        return normalise_proxies(value)

    @field_validator("rate_limit_client", "rate_limit_user")
    @classmethod
    def _quota(cls, value: str) -> str:
        """A malformed quota stops the server at start; kept as "1200/60s" or "0"."""
        from smart_auth.ratelimit import normalise_quota

        return normalise_quota(value)

    @field_validator("rate_limit_redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if not value:
            return None  # FHIR_RATE_LIMIT_REDIS_URL= (empty): MongoDB
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("reminder_lead_times")
    @classmethod
    def _leads(cls, value: str) -> str:
        """Malformed lead times stop the server and the workers at start."""
        from fhir_server.workflows.reminders.leads import parse_leads

        parse_leads(value)
        return value

    def input_limits(self) -> InputLimits:
        """The bounds on one request's JSON."""
        return InputLimits(
            max_depth=self.json_max_depth,
            max_array_length=self.json_max_array_length,
            max_string_chars=self.json_max_string_chars,
            max_number_digits=self.json_max_number_digits,
            max_number_exponent=self.json_max_number_exponent,
            max_decimals=self.json_max_decimals,
        )


_SECRET_PARTS = ("password", "auth_token", "secret")


def normalise_proxies(value: str) -> str:
    """``FHIR_TRUSTED_PROXIES`` checked and tidied: ``*``, or IP addresses and networks
    (host bits unset) separated by commas."""
    entries = [part.strip() for part in value.split(",") if part.strip()]
    if entries == ["*"]:
        return "*"
    if not entries:
        raise ValueError("name at least one address or network, or '*'")
    for entry in entries:
        try:
            if "/" in entry:
                ipaddress.ip_network(entry)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or network ('*' alone trusts any peer)"
            ) from None
    return ",".join(entries)


def settings_error_line(exc: ValidationError) -> str:
    """A Settings validation error as one line naming each bad ``FHIR_*`` variable, for
    the command line (pydantic's own report is a multi-line traceback that names the
    field, not the variable a user sets)."""
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"FHIR_{field.upper()}" if field else "settings"
        value = error.get("input")
        shown = ""
        secret = any(part in field for part in _SECRET_PARTS)
        if isinstance(value, str | int | float) and not secret and len(str(value)) <= 80:
            shown = f"={value}"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}{shown}: {message}")
    return "invalid setting " + "; ".join(parts)
