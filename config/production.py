"""Production settings: everything from the environment, nothing insecure by default."""
from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DEBUG", "false")
# One JSON object per log line for the log collector; LOG_FORMAT=text for reading by eye.
os.environ.setdefault("LOG_FORMAT", "json")

from config.settings import *  # noqa: E402,F403
from config.settings import env_bool  # noqa: E402

_secret = os.environ.get("SECRET_KEY", "")
if len(_secret) < 50 or _secret.startswith("django-insecure"):
    raise ImproperlyConfigured("SECRET_KEY must be set to a random value of 50+ characters.")
if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL in production.")
if not os.environ.get("REDIS_URL"):
    raise ImproperlyConfigured("REDIS_URL must be set in production (job queue).")
if not os.environ.get("ALLOWED_HOSTS"):
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the host names this site answers to.")

if not os.environ.get("STRIPE_SECRET_KEY") or not os.environ.get("STRIPE_WEBHOOK_SECRET"):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET must be set in production.")

SECRET_KEY = _secret
DEBUG = False
PACKDESK_INPROCESS_WORKER = False

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
# /healthz is answered before SecurityMiddleware (core.middleware.HealthCheckMiddleware); this
# keeps a load balancer's plain-HTTP probe working should that middleware ever move down.
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$"]
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(60 * 60 * 24 * 365)))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
