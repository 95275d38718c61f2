"""Packdesk settings, read from the environment.

With nothing set this is the demo: SQLite under var/, an in-process job queue, DEBUG on.
Production imports this module from config.production, which refuses unsafe values.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF, UNSAFE_EVAL, UNSAFE_INLINE

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
    "csp",
    "axes",
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
    # /healthz is answered here, before host checks, the HTTPS redirect and sessions.
    "core.middleware.HealthCheckMiddleware",
    "core.middleware.RequestIdMiddleware",
    # A lost database connection answers a plain 503 (no traceback) and recovers by itself.
    "core.db_errors.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.SecurityHeadersMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Last, as django-axes requires: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out username + address before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
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
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    # An unreachable database host fails a request (and /healthz) in seconds, not a TCP timeout.
    # A connect_timeout in the URL's query string wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", int(os.environ.get("DATABASE_CONNECT_TIMEOUT", "5"))
    )
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
            # The enqueuing request's id travels with the job, for its log lines.
            "core.middleware.DramatiqRequestId",
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
            # The enqueuing request's id travels with the job, for its log lines.
            "core.middleware.DramatiqRequestId",
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

# --- Health check (/healthz, core.health) ---------------------------------------------------
# Above these waits the check answers "degraded" (still 200): jobs waiting in the queue, and
# Stripe events stored but not yet processed (the sweep runs every 5 minutes).
HEALTHZ_QUEUE_LAG_SECONDS = int(os.environ.get("HEALTHZ_QUEUE_LAG_SECONDS", "300"))
HEALTHZ_STRIPE_EVENT_LAG_SECONDS = int(os.environ.get("HEALTHZ_STRIPE_EVENT_LAG_SECONDS", "900"))
HEALTHZ_TIMEOUT_SECONDS = float(os.environ.get("HEALTHZ_TIMEOUT_SECONDS", "1"))

# --- Security headers ---------------------------------------------------------------------
# Django itself sends X-Content-Type-Options, Referrer-Policy, X-Frame-Options and COOP.
SECURE_CONTENT_TYPE_NOSNIFF = True
# same-origin: a client's personal link (/me/<token>/) never leaves in a Referer header.
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), "
    "payment=(), usb=()"
)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""


# Content-Security-Policy (django-csp; core.middleware.ContentSecurityPolicyMiddleware).
# Public and portal pages: scripts and <style> only from this site or carrying the request's
# nonce (templates: nonce="{{ request.csp_nonce }}"); no inline event handlers (onsubmit=...).
# Forms may post here only; the buy form's answer redirects to Stripe Checkout, which
# form-action also governs, and PUBLIC_BASE_URL's origin (the test-mode checkout) when the
# site is reached under another name.
_FORM_TARGETS = [SELF, "https://checkout.stripe.com", _origin(PUBLIC_BASE_URL)]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [value for value in _FORM_TARGETS if value],
        "frame-ancestors": [NONE],
    },
}
# The admin (unfold) runs inline scripts and Alpine.js, which evaluates strings: it gets its own
# enforced policy that still forbids framing, other sites' scripts, off-site form posts and plugins.
ADMIN_CSP_PATH = "/admin/"
ADMIN_CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, UNSAFE_INLINE, UNSAFE_EVAL],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- Admin sign-in throttling (django-axes) -------------------------------------------------
# After AXES_FAILURE_LIMIT wrong passwords for one username from one address, that pair is
# refused (even with the right password) for AXES_COOLOFF_MINUTES; other users and other
# addresses are not affected. A successful sign-in clears the count. Attempts are kept in the
# database (shared by every web process, no Redis needed). Unlock early with
# `manage.py axes_reset_username <username>`.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("AXES_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
# The same client address as the portal's rate limit: honours TRUSTED_PROXY_COUNT.
AXES_CLIENT_IP_CALLABLE = "core.portal_link_views.client_ip"
AXES_LOCKOUT_CALLABLE = "core.login_lockout.admin_lockout_response"
# Its admin pages are not unfold pages; attempts are listed with `manage.py axes_list_attempts`.
AXES_ENABLE_ADMIN = False
# Successful sign-ins are in the log already (and would grow a table without limit).
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False  # its start-up banner on every manage.py command

# --- Logging ------------------------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line (config.production's default); "text" for people.
# Every line carries the request id (X-Request-ID in and out; jobs inherit their request's).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
if LOG_FORMAT not in ("text", "json"):
    LOG_FORMAT = "text"
# Error pages and error reports also hide the password inside URL-valued settings.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.log.ExceptionReporterFilter"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "config.log.RequestIdFilter"},
        "redact_secrets": {"()": "config.log.RedactSecretsFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "config.log.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id", "redact_secrets"],
            "formatter": LOG_FORMAT,
        },
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Django's own logger already has a handler; without this each line printed twice.
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # runserver's request lines: through our filters too (a portal link is in the path).
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # The SDK logs every request at INFO; keep its warnings and errors only.
        "stripe": {"level": "WARNING"},
        # The scheduler logs every run (its lock is renewed every 5 s); keep failures only.
        "apscheduler.executors.default": {"level": "WARNING"},
    },
}
