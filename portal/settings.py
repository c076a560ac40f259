"""Wattle settings: one module, read from the environment.

With nothing set, the portal runs embedded (SQLite, an in-process Redis stand-in, the in-memory channel
layer, eager Celery, a local vLLM simulator). With ``DATABASE_URL`` and ``REDIS_URL`` set, the same code
runs on PostgreSQL, Redis, channels-redis and real Celery workers. See README.md for every variable.
"""

from __future__ import annotations

import json
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from core.backend_urls import check_backend_url
from core.env import env_bool, env_float, env_int, env_list, env_name, env_str
from core.privacy import PRIVACY_POLICY_VERSIONS
from core.proxies import parse_trusted_proxies

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("WATTLE_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off")
    # Development only: a key that is stable across restarts so sessions survive `make run` restarts.
    SECRET_KEY = "dev-only-insecure-" + str(BASE_DIR)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_htmx",
    "csp",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "portal",
    "tenants",
    "inference",
    "billing",
    "audit",
]

MIDDLEWARE = [
    "portal.middleware.ClientAddressMiddleware",  # first: everything after reads the resolved client address
    "portal.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.middleware.StripeFormActionMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
    "tenants.middleware.AccessGateMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
                "portal.context_processors.site",
                "tenants.context_processors.console",
                "billing.context_processors.banners",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A web process and the in-process usage ingester write at the same time; wait rather than fail.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, channels, Celery -----------------------------------------------------------------
# No REDIS_URL means "embedded": core.redis hands out fakeredis clients that share one in-process server,
# so the same Redis commands and Lua scripts run in both shapes.
REDIS_URL = env_str("REDIS_URL") or None
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "wattle:")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # Rate-limit counters, throttles and the like live here: namespaced like every other Wattle key.
            "KEY_PREFIX": f"{REDIS_KEY_PREFIX}cache",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_KEY_PREFIX}channels"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "Australia/Sydney"
# Jobs that repair what the data plane reads from Redis: key records whose publish after commit failed (the
# snapshot reconciliation republishes what changed since its last run, a missed publish heals within two runs)
# and the limit counters after Redis lost its data. Embedded mode has no beat: the web process runs them itself.
REDIS_REPAIR_INTERVAL_S = env_float("REDIS_REPAIR_INTERVAL_S", 10.0)
REDIS_REPAIR_IN_PROCESS = env_bool("REDIS_REPAIR_IN_PROCESS", not REDIS_URL)
# A change committed this long after its updated_at (a slow transaction, clock skew between servers) is still
# republished by the reconciliation.
SNAPSHOT_RECONCILE_OVERLAP_S = env_float("SNAPSHOT_RECONCILE_OVERLAP_S", 60.0)
CELERY_BEAT_SCHEDULE = {
    "publish-snapshots": {"task": "inference.tasks.publish_snapshots", "schedule": REDIS_REPAIR_INTERVAL_S},
    "publish-prices": {"task": "billing.tasks.publish_prices", "schedule": REDIS_REPAIR_INTERVAL_S},
    "rebuild-limit-counters": {"task": "billing.tasks.rebuild_limit_counters", "schedule": REDIS_REPAIR_INTERVAL_S},
    "ingest-usage": {"task": "billing.tasks.ingest_usage", "schedule": 2.0},
    "ingest-adm-decisions": {"task": "inference.tasks.ingest_adm_decisions", "schedule": 5.0},
    "probe-backends": {"task": "inference.tasks.probe_backends", "schedule": 15.0},
    "budget-alerts": {"task": "billing.tasks.check_budget_alerts", "schedule": 60.0},
    "cost-guard": {"task": "billing.tasks.check_cost_guard", "schedule": 300.0},
    "close-support-sessions": {"task": "tenants.tasks.close_expired_support_sessions", "schedule": 60.0},
    # Stripe: events whose processing failed (Stripe unreachable on a re-read), plans whose sync failed, and the
    # past-due notices (grace periods ending).
    "stripe-events-retry": {"task": "billing.tasks.retry_stripe_events", "schedule": 60.0},
    "stripe-plans-sync": {"task": "billing.tasks.sync_plans_to_stripe", "schedule": 300.0},
    "payment-notices": {"task": "billing.tasks.send_payment_notices", "schedule": 60.0},
}

# --- Auth -------------------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
ACCOUNT_ADAPTER = "tenants.adapters.AccountAdapter"
ACCOUNT_FORMS = {"signup": "tenants.forms.SignupForm"}
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env_str("ACCOUNT_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Wattle] "
# Failed logins: per client IP and per email address (allauth counts them in the cache). Password resets and
# sign-ups are limited too, so none of these forms can be used to enumerate or flood.
ACCOUNT_RATE_LIMITS = {
    "login_failed": env_str("ACCOUNT_RATE_LIMIT_LOGIN_FAILED", "10/m/ip,5/5m/key"),
    "signup": "20/h/ip",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
}
ACCOUNT_REAUTHENTICATION_TIMEOUT = env_int("ACCOUNT_REAUTHENTICATION_TIMEOUT", 300)
MFA_ADAPTER = "tenants.adapters.MFAAdapter"
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_PASSKEY_LOGIN_ENABLED = True
MFA_TOTP_ISSUER = "Wattle"
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
USERSESSIONS_TRACK_ACTIVITY = True

# Sign-up records acceptance of these document versions (APP 5 collection notice, terms, privacy policy).
TERMS_VERSION = "2026-11-01"
# A staff "act as tenant" session ends by itself after this many minutes.
STAFF_ACT_AS_MINUTES = env_int("STAFF_ACT_AS_MINUTES", 60)
TENANTS_INVITATION_DAYS = env_int("TENANTS_INVITATION_DAYS", 7)

EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Wattle <no-reply@wattle.example>")
# Absolute links in email sent outside a request (invitations made by API keys carry the request's host).
WATTLE_BASE_URL = env_str("WATTLE_BASE_URL", "http://127.0.0.1:8000")

# --- Security ---------------------------------------------------------------------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
CSRF_COOKIE_HTTPONLY = True  # htmx sends the token from hx-headers in the page, never from the cookie
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The proxies in front of Wattle (core/proxies.py): a hop count ("1": one load balancer) or addresses/networks
# ("10.0.0.0/8,192.168.1.7"). Only they may say who the client is (X-Forwarded-For), for the login throttle,
# the audit trail and the internal-caller rule of /metrics and /readyz. Unset: the header is ignored.
TRUSTED_PROXIES = env_str("TRUSTED_PROXIES", "") or ""
try:
    parse_trusted_proxies(TRUSTED_PROXIES)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
if env_bool("TRUST_X_FORWARDED_PROTO", bool(TRUSTED_PROXIES)):
    # Only behind a proxy (AWS ALB) that sets the header itself.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
        "base-uri": [NONE],
        "object-src": [NONE],
    }
}

# --- I18N -------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-au"
TIME_ZONE = "Australia/Sydney"
USE_I18N = True
USE_TZ = True

# --- Static -----------------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed, compressed files (run collectstatic at build time) unless STATIC_MANIFEST=false.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env_bool("STATIC_MANIFEST", not DEBUG)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", DEBUG)

# --- REST framework ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.auth.ApiKeyAuthentication",
        # The console's session (CSRF-checked on unsafe methods), for the API docs page and console scripts.
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.api.permissions.TenantMatrixPermission"],
    "DEFAULT_THROTTLE_CLASSES": [
        "tenants.api.throttling.ManagementThrottle",
        "tenants.api.throttling.ManagementWriteThrottle",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "tenants.api.pagination.ManagementPagination",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "portal.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Throttles key anonymous callers by REMOTE_ADDR, already resolved through TRUSTED_PROXIES; without this DRF
    # would read X-Forwarded-For itself, whoever wrote it.
    "NUM_PROXIES": 0,
    "PAGE_SIZE": 50,
}
# Requests per principal (API key or console user) to /api/v1/, counted in the cache (Redis when configured).
MANAGEMENT_API_THROTTLE_RATE = env_str("MANAGEMENT_API_THROTTLE_RATE", "600/min")
MANAGEMENT_API_WRITE_THROTTLE_RATE = env_str("MANAGEMENT_API_WRITE_THROTTLE_RATE", "60/min")
SPECTACULAR_SETTINGS = {
    "TITLE": "Wattle management API",
    "DESCRIPTION": (
        "Manage your Wattle organisation: members, invitations, API keys and usage. Authenticate with an API "
        "key that has the `management:read` (GET) or `management:write` (other methods) scope, or with a "
        "console session. Errors share one shape: `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "tenants.models.Role",
    },
}

# --- Logging ----------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # drop_bodies: no request body reaches a log line (COMPLIANCE R-REG-3; portal/logging.py).
    "filters": {"request_id": {"()": "portal.logging.RequestIdFilter"},
                "drop_bodies": {"()": "portal.logging.DropRequestBodies"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["drop_bodies", "request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "uvicorn.access": {"level": "WARNING"},
        # The SDK logs every request at INFO, and Stripe's error messages can echo what was sent (an email).
        "stripe": {"level": "WARNING"},
    },
}

# --- AWS --------------------------------------------------------------------------------------------
AWS_REGION = env_str("AWS_REGION", "ap-southeast-2")
AWS_ENDPOINT_URL = env_str("AWS_ENDPOINT_URL") or None
ALLOWED_DATA_REGIONS = env_list("ALLOWED_DATA_REGIONS", ["ap-southeast-2", "ap-southeast-4"])

# --- Audit ------------------------------------------------------------------------------------------
# The S3 bucket sealed audit segments are archived to, and the KMS key that encrypts them (an ARN, alias or id).
# Empty: not archived to S3. `check --deploy` proves both are in ALLOWED_DATA_REGIONS by asking AWS
# (audit/residency.py); a build with no route to AWS sets AUDIT_RESIDENCY_OFFLINE_OK to pass without that proof.
AUDIT_ARCHIVE_BUCKET = env_str("AUDIT_ARCHIVE_BUCKET", "") or ""
AUDIT_ARCHIVE_KMS_KEY_ID = env_str("AUDIT_ARCHIVE_KMS_KEY_ID", "") or ""
AUDIT_RESIDENCY_OFFLINE_OK = env_bool("AUDIT_RESIDENCY_OFFLINE_OK", False)
# Sealed segments of the chain (docs/audit.md, "Archive"): to AUDIT_ARCHIVE_BUCKET in ap-southeast-2 (SSE-KMS, Object
# Lock COMPLIANCE for AUDIT_ARCHIVE_RETENTION_DAYS), or with no bucket to AUDIT_ARCHIVE_DIR. A segment is cut once
# AUDIT_ARCHIVE_SEGMENT_S has passed since the last (at most 300: R-AUD-3 ships at least every 5 minutes).
AUDIT_ARCHIVE_RETENTION_DAYS = env_int("AUDIT_ARCHIVE_RETENTION_DAYS", 7 * 366)
AUDIT_ARCHIVE_DIR = Path(env_str("AUDIT_ARCHIVE_DIR", str(VAR_DIR / "audit-archive")))
AUDIT_ARCHIVE_SEGMENT_S = env_float("AUDIT_ARCHIVE_SEGMENT_S", 60.0)
if not 0 < AUDIT_ARCHIVE_SEGMENT_S <= 300 or AUDIT_ARCHIVE_RETENTION_DAYS < 1:
    raise ImproperlyConfigured("AUDIT_ARCHIVE_SEGMENT_S must be in (0, 300], AUDIT_ARCHIVE_RETENTION_DAYS >= 1")
# The sealer chains new entries this often; embedded mode runs it (and the archive) in the web process.
AUDIT_JOBS_INTERVAL_S = env_float("AUDIT_JOBS_INTERVAL_S", 5.0)
AUDIT_JOBS_IN_PROCESS = env_bool("AUDIT_JOBS_IN_PROCESS", REDIS_REPAIR_IN_PROCESS)
CELERY_BEAT_SCHEDULE["audit-jobs"] = {"task": "audit.tasks.audit_jobs", "schedule": AUDIT_JOBS_INTERVAL_S}
# Transcript retention (docs/privacy.md, "Transcript retention"): each tenant's data key is wrapped by the platform
# KMS key AUDIT_TRANSCRIPT_KMS_KEY_ID (in AWS_REGION); empty: by a local key-wrapping key, AUDIT_TRANSCRIPT_LOCAL_KEK
# (32 bytes, base64) or else the file AUDIT_TRANSCRIPT_LOCAL_KEK_FILE, created 0600 on first use (never SECRET_KEY).
AUDIT_TRANSCRIPT_KMS_KEY_ID = env_str("AUDIT_TRANSCRIPT_KMS_KEY_ID", "") or ""
AUDIT_TRANSCRIPT_LOCAL_KEK = env_str("AUDIT_TRANSCRIPT_LOCAL_KEK", "") or ""
AUDIT_TRANSCRIPT_LOCAL_KEK_FILE = Path(env_str("AUDIT_TRANSCRIPT_LOCAL_KEK_FILE", str(VAR_DIR / "transcript-kek.key")))
AUDIT_TRANSCRIPT_KEY_CACHE_S = env_float("AUDIT_TRANSCRIPT_KEY_CACHE_S", 300.0)  # plaintext data keys, in memory
AUDIT_TRANSCRIPT_SHRED_DAYS = env_int("AUDIT_TRANSCRIPT_SHRED_DAYS", 7)  # off-boarded tenant's keys: deleted after
AUDIT_BREAK_GLASS_MINUTES = env_int("AUDIT_BREAK_GLASS_MINUTES", 60)
AUDIT_RETENTION_JOBS_INTERVAL_S = env_float("AUDIT_RETENTION_JOBS_INTERVAL_S", 86400.0)  # the destruction job
if AUDIT_TRANSCRIPT_SHRED_DAYS < 0 or not 1 <= AUDIT_BREAK_GLASS_MINUTES <= 240:
    raise ImproperlyConfigured("AUDIT_TRANSCRIPT_SHRED_DAYS must be >= 0, AUDIT_BREAK_GLASS_MINUTES in 1..240")
CELERY_BEAT_SCHEDULE["transcripts-ingest"] = {"task": "audit.tasks.transcripts_ingest",
                                              "schedule": AUDIT_JOBS_INTERVAL_S}
CELERY_BEAT_SCHEDULE["retention-jobs"] = {"task": "audit.tasks.retention_jobs",
                                          "schedule": AUDIT_RETENTION_JOBS_INTERVAL_S}
# The access log's records are sealed into the chain this often, at most this many per audit entry (docs/audit.md);
# in the embedded default by the billing loop (BILLING_JOBS_INTERVAL_S).
ACCESS_SEAL_INTERVAL_S = env_float("ACCESS_SEAL_INTERVAL_S", 60.0)
ACCESS_SEAL_BATCH = env_int("ACCESS_SEAL_BATCH", 10_000)
if ACCESS_SEAL_BATCH < 1:
    raise ImproperlyConfigured("ACCESS_SEAL_BATCH must be at least 1")
CELERY_BEAT_SCHEDULE["access-seal"] = {"task": "billing.tasks.seal_access_log", "schedule": ACCESS_SEAL_INTERVAL_S}

# --- Stripe -----------------------------------------------------------------------------------------
# Every call to Stripe goes through billing/stripe_gateway.py (docs/billing.md, "Stripe"). With no secret key,
# payments are not configured: billing pages show usage and estimated charges only.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "") or ""
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "") or ""
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "") or ""
# Empty: Stripe's own API. Else the base URL of a Stripe stand-in (tests/fakes/stripe, e.g. http://127.0.0.1:12111)
# that the real SDK talks to for every kind of call (API, files, connect, meter events).
STRIPE_API_BASE = (env_str("STRIPE_API_BASE", "") or "").rstrip("/")
STRIPE_TIMEOUT_S = env_float("STRIPE_TIMEOUT_S", 10.0)
# The SDK's own retries of network errors, 409 and 5xx, with the same idempotency key.
STRIPE_MAX_RETRIES = env_int("STRIPE_MAX_RETRIES", 2)
if STRIPE_TIMEOUT_S <= 0 or STRIPE_MAX_RETRIES < 0:
    raise ImproperlyConfigured("STRIPE_TIMEOUT_S must be positive and STRIPE_MAX_RETRIES not negative")
BILLING_CURRENCY = "aud"
# Our ABN, shown on tax invoices and billing pages (optional until payments are live).
BILLING_ACCOUNT_ABN = env_str("BILLING_ACCOUNT_ABN", "") or ""
# Cost guard (billing/cost_guard.py): act on the top spender when its last hour passes SPIKE_FACTOR times its
# own hourly baseline (and at least MIN_HOURLY_AUD), or the platform's spend today passes PLATFORM_DAILY_AUD.
# Settings of an app carry its name; the cost guard's were read as COST_GUARD_* before, and still are.
def _billing_env(read, name: str, default):
    return read(env_name(f"BILLING_{name}", name), default)


BILLING_COST_GUARD_ENABLED = _billing_env(env_bool, "COST_GUARD_ENABLED", True)
BILLING_COST_GUARD_SPIKE_FACTOR = _billing_env(env_float, "COST_GUARD_SPIKE_FACTOR", 4.0)
BILLING_COST_GUARD_MIN_HOURLY_AUD = _billing_env(env_float, "COST_GUARD_MIN_HOURLY_AUD", 20.0)
BILLING_COST_GUARD_PLATFORM_DAILY_AUD = _billing_env(env_float, "COST_GUARD_PLATFORM_DAILY_AUD", 5000.0)
BILLING_COST_GUARD_ACTION = _billing_env(env_str, "COST_GUARD_ACTION", "throttle")
if BILLING_COST_GUARD_ACTION not in ("throttle", "suspend"):
    raise ImproperlyConfigured("BILLING_COST_GUARD_ACTION must be 'throttle' or 'suspend'")
BILLING_COST_GUARD_THROTTLE_RPM = _billing_env(env_int, "COST_GUARD_THROTTLE_RPM", 10)
BILLING_COST_GUARD_THROTTLE_TPM = _billing_env(env_int, "COST_GUARD_THROTTLE_TPM", 20_000)
# A past-due subscription (a payment failed) keeps its tenant served this many days, with console banners and
# emails; after it, /v1 answers 402 payment_required until the invoice is paid (billing/payment_access.py).
BILLING_GRACE_DAYS = env_float("BILLING_GRACE_DAYS", 7.0)
if BILLING_GRACE_DAYS < 0:
    raise ImproperlyConfigured("BILLING_GRACE_DAYS must not be negative")
STAFF_ALERT_EMAILS = env_list("STAFF_ALERT_EMAILS", [])
# Usage rollups and the Stripe meter outbox (billing/rollups.py, billing/meters.py; docs/billing.md, "Metering").
# Usage events read per rollup transaction.
BILLING_ROLLUP_BATCH = env_int("BILLING_ROLLUP_BATCH", 20_000)
# An hour is reported to Stripe this long after it ends: usage still on its way (the data plane's buffers, the
# ingest) lands first, so fewer hours need a correcting event.
BILLING_METER_SETTLE_S = env_int("BILLING_METER_SETTLE_S", 300)
# A meter event Stripe could not take is sent again after BASE, 2 x BASE, 4 x BASE … seconds, at most MAX apart.
BILLING_METER_RETRY_BASE_S = env_int("BILLING_METER_RETRY_BASE_S", 60)
BILLING_METER_RETRY_MAX_S = env_int("BILLING_METER_RETRY_MAX_S", 3600)
# Embedded mode has no beat: the web process runs the rollup and meter jobs itself, this often.
BILLING_JOBS_IN_PROCESS = env_bool("BILLING_JOBS_IN_PROCESS", REDIS_REPAIR_IN_PROCESS)
BILLING_JOBS_INTERVAL_S = env_float("BILLING_JOBS_INTERVAL_S", 60.0)
if BILLING_METER_SETTLE_S < 0 or not 0 < BILLING_METER_RETRY_BASE_S <= BILLING_METER_RETRY_MAX_S:
    raise ImproperlyConfigured("BILLING_METER_* settings: settle >= 0, 0 < retry base <= retry max")
CELERY_BEAT_SCHEDULE |= {
    "build-rollups": {"task": "billing.tasks.build_rollups", "schedule": 60.0},
    "plan-meter-reports": {"task": "billing.tasks.plan_meter_reports", "schedule": 60.0},
    "send-meter-reports": {"task": "billing.tasks.send_meter_reports", "schedule": 60.0},
}


# --- Inference (data plane) -------------------------------------------------------------------------
def _parse_backends(raw: str | None, default_url: str) -> list[dict]:
    """``INFERENCE_BACKENDS``: JSON list of objects, or ``name=url,name=url``, or bare URLs.

    Served models are discovered from each backend's ``/v1/models`` unless ``models`` is given.
    """
    if not raw:
        return [{"name": "local-simulator", "url": default_url}]
    raw = raw.strip()
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImproperlyConfigured(f"INFERENCE_BACKENDS is not valid JSON: {exc}") from exc
        if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("url") for i in items):
            raise ImproperlyConfigured("INFERENCE_BACKENDS JSON must be a list of objects with a 'url'")
    else:
        items = []
        for n, part in enumerate(p.strip() for p in raw.split(",") if p.strip()):
            name, _, url = part.rpartition("=") if "=" in part else (f"backend-{n + 1}", "", part)
            items.append({"name": name, "url": url})
    for item in items:
        item["url"] = item["url"].rstrip("/")
        if not item["url"].startswith(("http://", "https://")):
            raise ImproperlyConfigured(f"INFERENCE_BACKENDS url {item['url']!r} must start with http(s)://")
        try:
            # Literal addresses only: no DNS lookups while settings load (seeding the rows looks names up).
            check_backend_url(item["url"], resolve=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"INFERENCE_BACKENDS: {exc}") from None
    for n, item in enumerate(items, start=1):
        item.setdefault("name", f"backend-{n}")
    return items


SIMULATOR_PORT = env_int("SIMULATOR_PORT", 8001)
INFERENCE_BACKENDS = _parse_backends(env_str("INFERENCE_BACKENDS"), f"http://127.0.0.1:{SIMULATOR_PORT}")
INFERENCE_DEFAULT_REGION = env_str("INFERENCE_DEFAULT_REGION", AWS_REGION)
INFERENCE_KEY_CACHE_TTL_S = env_float("INFERENCE_KEY_CACHE_TTL_S", 0.5)
INFERENCE_KEY_CACHE_SIZE = env_int("INFERENCE_KEY_CACHE_SIZE", 100_000)  # key records per worker (LRU)
INFERENCE_BACKEND_REFRESH_S = env_float("INFERENCE_BACKEND_REFRESH_S", 1.0)
INFERENCE_PROBE_INTERVAL_S = env_float("INFERENCE_PROBE_INTERVAL_S", 5.0)
INFERENCE_PROBE_TIMEOUT_S = env_float("INFERENCE_PROBE_TIMEOUT_S", 2.0)
INFERENCE_UPSTREAM_CONNECT_TIMEOUT_S = env_float("INFERENCE_UPSTREAM_CONNECT_TIMEOUT_S", 2.0)
INFERENCE_UPSTREAM_READ_TIMEOUT_S = env_float("INFERENCE_UPSTREAM_READ_TIMEOUT_S", 120.0)
INFERENCE_MAX_BODY_BYTES = env_int("INFERENCE_MAX_BODY_BYTES", 4 * 1024 * 1024)
INFERENCE_USAGE_STREAM = f"{REDIS_KEY_PREFIX}usage"
INFERENCE_USAGE_SPOOL_DIR = Path(env_str("INFERENCE_USAGE_SPOOL_DIR", str(VAR_DIR / "usage-spool")))
# Scale to zero: how long a request waits for a replica to come up, and the hook that asks for one.
INFERENCE_COLD_START_HOLD_S = env_float("INFERENCE_COLD_START_HOLD_S", 30.0)
INFERENCE_WARMUP_URL = env_str("INFERENCE_WARMUP_URL", "")
INFERENCE_WARMUP_MIN_INTERVAL_S = env_float("INFERENCE_WARMUP_MIN_INTERVAL_S", 30.0)
INFERENCE_RETRY_AFTER_S = env_int("INFERENCE_RETRY_AFTER_S", 10)
# Pre-warm before business hours (cron fields in Australia/Sydney time): minute hour day month weekday.
INFERENCE_PREWARM_CRON = env_str("INFERENCE_PREWARM_CRON", "0 7 * * 1-5")
INFERENCE_PREWARM_MODELS = env_list("INFERENCE_PREWARM_MODELS", [])
_prewarm = INFERENCE_PREWARM_CRON.split()
if len(_prewarm) != 5:
    raise ImproperlyConfigured(f"INFERENCE_PREWARM_CRON={INFERENCE_PREWARM_CRON!r} needs five cron fields")
CELERY_BEAT_SCHEDULE["prewarm-models"] = {
    "task": "inference.tasks.prewarm_models",
    "schedule": crontab(
        minute=_prewarm[0], hour=_prewarm[1], day_of_month=_prewarm[2], month_of_year=_prewarm[3],
        day_of_week=_prewarm[4],
    ),
}
INFERENCE_DEFAULT_MAX_MODEL_LEN = env_int("INFERENCE_DEFAULT_MAX_MODEL_LEN", 32768)
# While Redis is unreachable, a worker keeps authenticating keys it saw recently, for at most this long.
INFERENCE_KEY_STALE_OK_S = env_float("INFERENCE_KEY_STALE_OK_S", 120.0)
INFERENCE_SNAPSHOT_WAIT_S = env_float("INFERENCE_SNAPSHOT_WAIT_S", 3.0)  # hold a request while Redis is repopulated
# Limits (see inference/gateway/limits.py). With Redis unreachable: "closed" answers 503; "open" admits against
# per-worker counters at LOCAL_FRACTION of each limit, for at most FAIL_OPEN_MAX_S.
INFERENCE_LIMITS_ON_REDIS_ERROR = env_str("INFERENCE_LIMITS_ON_REDIS_ERROR", "closed")
if INFERENCE_LIMITS_ON_REDIS_ERROR not in ("open", "closed"):
    raise ImproperlyConfigured("INFERENCE_LIMITS_ON_REDIS_ERROR must be 'open' or 'closed'")
INFERENCE_LIMITS_LOCAL_FRACTION = env_float("INFERENCE_LIMITS_LOCAL_FRACTION", 0.25)
INFERENCE_LIMITS_FAIL_OPEN_MAX_S = env_float("INFERENCE_LIMITS_FAIL_OPEN_MAX_S", 300.0)
INFERENCE_LIMITS_SLOT_TTL_S = env_float("INFERENCE_LIMITS_SLOT_TTL_S", 600.0)
# Send the request to its replica while the limits check is in flight (nothing reaches the client before it
# passes; a refused request is cancelled upstream). A key refused once waits for the check for
# INFERENCE_LIMITS_PARALLEL_BACKOFF_S, so an over-limit client can't keep replicas busy.
INFERENCE_LIMITS_PARALLEL = env_bool("INFERENCE_LIMITS_PARALLEL", True)
INFERENCE_LIMITS_PARALLEL_BACKOFF_S = env_float("INFERENCE_LIMITS_PARALLEL_BACKOFF_S", 30.0)
# A chat request without max_tokens generates at most this many tokens per choice: the gateway tells vLLM so
# (max_tokens upstream) and reserves exactly that, so no request uses more than it reserved.
INFERENCE_DEFAULT_COMPLETION_RESERVE = env_int("INFERENCE_DEFAULT_COMPLETION_RESERVE", 1024)
# The most choices (`n`) one request may ask for; above it, 400.
INFERENCE_MAX_N = env_int("INFERENCE_MAX_N", 8)
# The playground's socket (inference/consumers.py, docs/playground.md): the largest frame a browser may send,
# and each connection's allowance of frames, RATE a second with bursts of BURST.
INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES = env_int("INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES", 64 * 1024)
INFERENCE_PLAYGROUND_RATE = env_float("INFERENCE_PLAYGROUND_RATE", 1.0)
INFERENCE_PLAYGROUND_BURST = env_int("INFERENCE_PLAYGROUND_BURST", 8)
# The conversation API (docs/conversations.md): a conversation's bounds, how long an idle or closed one is kept in
# Redis, and how long a turn waits for another turn of the same conversation.
INFERENCE_CONVERSATION_MAX_MESSAGE_CHARS = env_int("INFERENCE_CONVERSATION_MAX_MESSAGE_CHARS", 8_000)
INFERENCE_CONVERSATION_MAX_METADATA_BYTES = env_int("INFERENCE_CONVERSATION_MAX_METADATA_BYTES", 2_048)
INFERENCE_CONVERSATION_MAX_TURNS = env_int("INFERENCE_CONVERSATION_MAX_TURNS", 200)
INFERENCE_CONVERSATION_MAX_STATE_BYTES = env_int("INFERENCE_CONVERSATION_MAX_STATE_BYTES", 512 * 1024)
INFERENCE_CONVERSATION_IDLE_TTL_S = env_float("INFERENCE_CONVERSATION_IDLE_TTL_S", 24 * 3600.0)
INFERENCE_CONVERSATION_CLOSED_TTL_S = env_float("INFERENCE_CONVERSATION_CLOSED_TTL_S", 24 * 3600.0)
INFERENCE_CONVERSATION_LOCK_WAIT_S = env_float("INFERENCE_CONVERSATION_LOCK_WAIT_S", 30.0)
if INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES < 1024 or INFERENCE_PLAYGROUND_RATE <= 0 or INFERENCE_PLAYGROUND_BURST < 1:
    raise ImproperlyConfigured("INFERENCE_PLAYGROUND_*: at least 1 KiB a frame, a positive rate and a burst of 1")
# One JSON line per /v1 request: "stderr", a file path, or "off" (inference/gateway/accesslog.py).
INFERENCE_ACCESS_LOG = env_str("INFERENCE_ACCESS_LOG", "stderr")
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = env_list(
    "METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
)
# Embedded mode has no Celery worker: the web process drains the usage stream itself.
USAGE_INGEST_IN_PROCESS = env_bool("USAGE_INGEST_IN_PROCESS", not REDIS_URL)
USAGE_INGEST_BATCH = env_int("USAGE_INGEST_BATCH", 5000)
USAGE_INGEST_GROUP = "ingest"
# An event a crashed ingester read but never stored is taken over by another after this long.
USAGE_INGEST_CLAIM_IDLE_MS = env_int("USAGE_INGEST_CLAIM_IDLE_MS", 60_000)
# A web process republishes the backend list and key snapshot to Redis when it starts.
INFERENCE_PUBLISH_ON_START = env_bool("INFERENCE_PUBLISH_ON_START", True)
# Post-call analytics (inference.analytics, docs/analytics.md): the model every analysis uses (empty: the
# conversation's own model), tries per analysis, its answer's budget, one call's time limit, and how long a closed
# conversation's transcript may wait in Redis for its analysis before it is trimmed unread.
INFERENCE_ANALYTICS_MODEL = env_str("INFERENCE_ANALYTICS_MODEL", "")
INFERENCE_ANALYTICS_MAX_ATTEMPTS = env_int("INFERENCE_ANALYTICS_MAX_ATTEMPTS", 3)
INFERENCE_ANALYTICS_MAX_TOKENS = env_int("INFERENCE_ANALYTICS_MAX_TOKENS", 1024)
INFERENCE_ANALYTICS_TIMEOUT_S = env_int("INFERENCE_ANALYTICS_TIMEOUT_S", 180)
INFERENCE_ANALYTICS_TRANSCRIPT_MAX_AGE_S = env_int("INFERENCE_ANALYTICS_TRANSCRIPT_MAX_AGE_S", 86_400)
INFERENCE_ANALYTICS_INGEST_INTERVAL_S = env_float("INFERENCE_ANALYTICS_INGEST_INTERVAL_S", 2.0)
INFERENCE_ANALYTICS_IN_PROCESS = env_bool("INFERENCE_ANALYTICS_IN_PROCESS", REDIS_REPAIR_IN_PROCESS)
CELERY_BEAT_SCHEDULE["ingest-closed-conversations"] = {
    "task": "inference.tasks.ingest_closed_conversations", "schedule": INFERENCE_ANALYTICS_INGEST_INTERVAL_S}

# API keys are stored as HMAC-SHA256(pepper, secret). Keep the pepper apart from SECRET_KEY in production
# so rotating one doesn't invalidate the other.
API_KEY_PEPPER = env_str("API_KEY_PEPPER") or ("pepper:" + SECRET_KEY)
# Keys the per-tenant `cache_salt` sent to vLLM (HMAC of the tenant id), which keeps one tenant's cached prompt
# prefixes invisible to another's timing. Changing it only makes the prefix cache cold once.
INFERENCE_CACHE_SALT_SECRET = env_str("INFERENCE_CACHE_SALT_SECRET") or ("cache-salt:" + SECRET_KEY)

WATTLE_SITE_NAME = "Wattle"
# The privacy policy in force: the newest of core.privacy's versions (the page lists them all).
PRIVACY_POLICY_VERSION = PRIVACY_POLICY_VERSIONS[0].version
