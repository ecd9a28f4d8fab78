"""Onramp settings: one module, every knob read from the environment.

Defaults are safe for a first local run (SQLite under ./var); production sets
SECRET_KEY, DATABASE_URL and ALLOWED_HOSTS. Every variable is listed in
docs/settings.md, and tests/test_settings_reference.py keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# pytest ≥ 8.2 exports PYTEST_VERSION; test subprocesses inherit it.
TESTING = bool(os.environ.get("PYTEST_VERSION"))
DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in the environment (or set DEBUG=1 for local development)."
        )
    SECRET_KEY = "insecure-dev-only-key-never-use-in-production-0123456789abcdef"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# HTTPS hardening is on by default outside development; turn it off with HTTPS=0
# only when serving plain HTTP on loopback (make run, tests).
HTTPS = env_bool("HTTPS", not (DEBUG or TESTING))
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (set SECURE_PROXY_SSL_HEADER=1).
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# /healthz is probed over plain HTTP by load balancers and the Docker HEALTHCHECK.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_q",
    "pool",
    "onboarding",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            # {% partialdef %} everywhere: htmx fragments are named partials of their page.
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'onramp.sqlite3'}")
# Persistent connections matter: django-q2's ORM broker runs close_old_connections()
# on every operation, and with CONN_MAX_AGE=0 it measured 5x slower here.
CONN_MAX_AGE = env_int("CONN_MAX_AGE", 60)
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + IMMEDIATE transactions: web, runpool and workers write concurrently
    # without "database is locked" (measured: see shared notes).
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so integration tests' subprocesses share the test database;
    # one per test run so concurrent runs on one machine do not trample each other.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    _db.setdefault("OPTIONS", {})
    # Fail fast while PostgreSQL restarts so clients get a 503, not a hung request.
    _db["OPTIONS"].setdefault("connect_timeout", 5)
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-q2's Stat must be visible to every process of a host: a file cache is shared
# between processes without putting load on the database.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": env_str("CACHE_DIR", str(VAR_DIR / "cache")),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG or TESTING:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django-q": {"level": env_str("Q_LOG_LEVEL", "WARNING")}},
}

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "onramp@localhost")

# --- Alerts -------------------------------------------------------------------
ALERT_SEND_TIMEOUT_S = env_int("ALERT_SEND_TIMEOUT_S", 5)
ALERT_RETRY_BASE_S = env_int("ALERT_RETRY_BASE_S", 30)
ALERT_RETRY_MAX_S = env_int("ALERT_RETRY_MAX_S", 900)
ALERT_MAX_ATTEMPTS = env_int("ALERT_MAX_ATTEMPTS", 10)
# Prefix for links in alert messages, e.g. https://onramp.example.com
ALERT_BASE_URL = env_str("ALERT_BASE_URL")

# --- Ingest and processing ----------------------------------------------------
INGEST_MAX_BYTES = env_int("INGEST_MAX_BYTES", 10 * 1024 * 1024)
# Django's own cap would answer 400 before our 413; we enforce INGEST_MAX_BYTES ourselves.
DATA_UPLOAD_MAX_MEMORY_SIZE = None
SESSION_IDLE_S = env_int("SESSION_IDLE_S", 30)
SESSION_MAX_ATTEMPTS = env_int("SESSION_MAX_ATTEMPTS", 5)
# A claim older than this is presumed dead (worker killed, host gone) and the session
# returns to ready. Longer than any processing run, shorter than django-q2's retry.
SESSION_LEASE_S = env_int("SESSION_LEASE_S", 120)
# A queued session whose task never got claimed (lost broker message, or a worker killed
# between taking the task and claiming the session) is re-dispatched; the queue is shallow,
# so a healthy task waits well under a second. A late duplicate task finds it claimed.
SESSION_QUEUED_TIMEOUT_S = env_int("SESSION_QUEUED_TIMEOUT_S", 30)
POOL_MAX_WORKERS = env_int("POOL_MAX_WORKERS", 32)
POOL_HEARTBEAT_S = env_int("POOL_HEARTBEAT_S", 2)
POOL_STALE_AFTER_S = env_int("POOL_STALE_AFTER_S", 15)
# Autoscaler and advisor add workers only if the hosts have the CPU for them (0: ignore CPU).
AUTOSCALE_CPU_CAP = env_bool("AUTOSCALE_CPU_CAP", True)
# Bearer token for /api/v1/lag and /metrics without a login (empty: login only).
OPS_API_TOKEN = env_str("OPS_API_TOKEN")
# Serve /metrics without any credentials (only behind a private network).
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)

# --- django-q2 ----------------------------------------------------------------
Q_TASK_TIMEOUT_S = env_int("Q_TASK_TIMEOUT_S", 90)
Q_CLUSTER = {
    "name": "onramp",
    "orm": "default",
    # The ORM broker, woken by NOTIFY on PostgreSQL instead of polling (pool/broker.py).
    "broker_class": "pool.broker.NotifiedORM",
    "workers": 1,  # runpool sets the real count per cluster before it forks
    "timeout": Q_TASK_TIMEOUT_S,
    # retry > timeout + the wait in the local buffer (the dispatcher keeps the broker
    # queue at ~2x live workers, so a task waits seconds, not minutes); a task redelivered
    # anyway finds its session already claimed and does nothing.
    "retry": Q_TASK_TIMEOUT_S + 210,
    "max_attempts": 1,
    "bulk": 1,
    # How long a pusher waits when its broker queue is empty. Each look is two queries;
    # at 0.05 s an idle cluster cost ~40 ms CPU per second (pusher + database) on 2
    # cores. On PostgreSQL the dispatcher's NOTIFY ends the wait at once; elsewhere it
    # delays the first session after an idle spell, by 0.1 s on average.
    "poll": 0.2,
    "guard_cycle": 0.5,
    "recycle": 1000,
    "save_limit": 100,
    "ack_failures": True,
    "catch_up": False,
    "scheduler": False,
    "log_level": env_str("Q_LOG_LEVEL", "WARNING"),
}
