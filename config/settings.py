"""Packdesk settings, read from the environment.

With nothing set this is the demo: SQLite under var/, an in-process job queue, DEBUG on.
Production imports this module from config.production, which refuses unsafe values.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PACKDESK_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get("SECRET_KEY") or "django-insecure-demo-key-do-not-use-in-production"
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    # unfold and its contrib apps must come before django.contrib.admin, import_export and
    # simple_history, or admin pages lose their theme (or 404) without any error.
    "unfold",
    "unfold.contrib.filters",
    "unfold.contrib.forms",
    "unfold.contrib.inlines",
    "unfold.contrib.import_export",
    "unfold.contrib.simple_history",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "import_export",
    "simple_history",
    "django_dramatiq",
    "core",
    "catalog",
    "ledger",
    "payments",
    "reports",
    # The scheduler (`manage.py crontab`). After core, whose crontab command (the library's, plus
    # our config.schedule) must win: Django takes a command from the first app that has it.
    "dramatiq_crontab",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "packdesk.sqlite3",
            # Demo only: wait for the in-process worker's write instead of failing at once.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TIME_ZONE", "Europe/London")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "admin:login"
# Staff work only in the admin; a login without "next" lands there, not on /accounts/profile/.
LOGIN_REDIRECT_URL = "admin:index"

# One business, one currency by default (ISO 4217).
DEFAULT_CURRENCY = os.environ.get("DEFAULT_CURRENCY", "GBP").upper()
BUSINESS_NAME = os.environ.get("BUSINESS_NAME", "Packdesk Demo Studio")

STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
# Without a Stripe account (the demo) the real stripe SDK talks to a local test-mode double and
# events are signed with this demo secret, so the demo runs the same webhook pipeline.
STRIPE_TEST_DOUBLE = not STRIPE_SECRET_KEY
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "") or (
    "whsec_packdesk_demo_only" if STRIPE_TEST_DOUBLE else ""
)
STRIPE_WEBHOOK_TOLERANCE = int(os.environ.get("STRIPE_WEBHOOK_TOLERANCE", "300"))
# A client's personal link (no password) stays valid this long; a new one can be asked for.
PORTAL_LINK_MAX_AGE = int(os.environ.get("PORTAL_LINK_MAX_AGE_DAYS", "30")) * 24 * 3600
# Asking for a new link by email (/me/link/), per hour: requests per email address and per IP.
PORTAL_LINK_REQUESTS_PER_EMAIL = int(os.environ.get("PORTAL_LINK_REQUESTS_PER_EMAIL", "3"))
PORTAL_LINK_REQUESTS_PER_IP = int(os.environ.get("PORTAL_LINK_REQUESTS_PER_IP", "10"))
# Reverse proxies in front of gunicorn that append to X-Forwarded-For (0: none, use REMOTE_ADDR).
# Behind one, REMOTE_ADDR is the proxy's, and every client would share one per-IP limit.
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))

# Emails to clients (their personal link, later the reminders) go through Django's email backend.
# The demo prints them on the console; production sets an SMTP (or provider) backend and its EMAIL_* settings.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Packdesk <noreply@packdesk.localhost>")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = int(os.environ.get("EMAIL_TIMEOUT", "10"))  # a stuck SMTP server must not hang a request

# Absolute base URL of the public page (Stripe's success / cancel redirects come back here).
PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

# Job queue: dramatiq on Redis when REDIS_URL is set, otherwise an in-process stub broker
# whose worker runs inside the web process (demo only; see config/dramatiq.py).
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": REDIS_URL},
        "MIDDLEWARE": [
            "dramatiq.middleware.AgeLimit",
            "dramatiq.middleware.TimeLimit",
            "dramatiq.middleware.Callbacks",
            "dramatiq.middleware.Retries",
            "django_dramatiq.middleware.DbConnectionsMiddleware",
            # Keeps the last failure's traceback with a dead message (admin: Tasks > Dead letters).
            "config.dead_letters.DeadLetterFailure",
        ],
    }
else:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": [
            "dramatiq.middleware.AgeLimit",
            "dramatiq.middleware.TimeLimit",
            "dramatiq.middleware.Callbacks",
            "dramatiq.middleware.Retries",
            "django_dramatiq.middleware.DbConnectionsMiddleware",
            # Keeps the last failure's traceback with a dead message (admin: Tasks > Dead letters).
            "config.dead_letters.DeadLetterFailure",
        ],
    }
# Shared cache (rate limits need one store for every web process): Redis when configured.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

PACKDESK_INPROCESS_WORKER = env_bool("PACKDESK_INPROCESS_WORKER", not REDIS_URL)
# The demo also runs the periodic jobs (config/schedule.py) in a thread of the web process;
# production runs `manage.py crontab` as its own process instead.
PACKDESK_INPROCESS_SCHEDULER = env_bool("PACKDESK_INPROCESS_SCHEDULER", PACKDESK_INPROCESS_WORKER)
# With Redis the scheduler holds a Redis lock, so a second `manage.py crontab` waits instead of
# sending every job twice. Cron expressions are read in TIME_ZONE (the business's time zone).
DRAMATIQ_CRONTAB = {"REDIS_URL": REDIS_URL or None}

# Expiry sweep: grants per transaction, so bookings never wait long behind its row locks.
LEDGER_EXPIRY_BATCH_SIZE = int(os.environ.get("LEDGER_EXPIRY_BATCH_SIZE", "2000"))

UNFOLD = {
    "SITE_TITLE": "Packdesk",
    "SITE_HEADER": "Packdesk",
    "SITE_SYMBOL": "confirmation_number",
    "SHOW_HISTORY": True,
    "SHOW_VIEW_ON_SITE": False,
    # The admin home is the dashboard (templates/admin/index.html); figures in core.dashboard.
    "DASHBOARD_CALLBACK": "core.dashboard.dashboard_callback",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Django's own logger already has a handler; without this each line printed twice.
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # The SDK logs every request at INFO; keep its warnings and errors only.
        "stripe": {"level": "WARNING"},
        # The scheduler logs every run (its lock is renewed every 5 s); keep failures only.
        "apscheduler.executors.default": {"level": "WARNING"},
    },
}
