"""Settings, production guard rails and the demo data command."""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from ledger.integrity import ledger_check
from ledger.models import LedgerEntry

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args, env_extra, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def production_env():
    return {
        "DJANGO_SETTINGS_MODULE": "config.production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ["REDIS_URL"],
        "ALLOWED_HOSTS": "packdesk.example.com",
        "STRIPE_SECRET_KEY": "sk_test_" + secrets.token_hex(12),
        "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(12),
    }


def test_production_settings_pass_check_deploy():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env_extra=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "missing, message",
    [
        ("SECRET_KEY", "SECRET_KEY must be set"),
        ("DATABASE_URL", "DATABASE_URL must point at PostgreSQL"),
        ("REDIS_URL", "REDIS_URL must be set"),
        ("ALLOWED_HOSTS", "ALLOWED_HOSTS must list"),
        ("STRIPE_SECRET_KEY", "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET must be set"),
        ("STRIPE_WEBHOOK_SECRET", "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET must be set"),
    ],
)
def test_production_refuses_to_start_without(missing, message):
    env = production_env()
    del env[missing]
    result = run_manage("check", env_extra=env, drop=(missing,))
    assert result.returncode != 0
    assert message in result.stderr


def test_unfold_comes_before_admin_and_friends():
    from django.conf import settings

    apps = settings.INSTALLED_APPS
    for other in ("django.contrib.admin", "import_export", "simple_history"):
        assert apps.index("unfold") < apps.index(other)


@pytest.mark.django_db
def test_demo_data_loads_a_balanced_ledger_and_prints_a_login(capsys):
    call_command("demo_data")
    out = capsys.readouterr().out
    assert "Login:    admin / " in out
    assert LedgerEntry.objects.count() > 10
    assert ledger_check().ok
    call_command("demo_data")  # a second run keeps the data and prints a fresh login
    assert "Demo data already loaded." in capsys.readouterr().out
