"""What every measurement shares: Django setup, the database guard, resets and the output line."""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

APP_LABELS = ("core", "catalog", "ledger", "payments", "reports")
BENCH_USERNAME = "packdesk-bench"


def log(message: str) -> None:
    # Progress goes to stderr so stdout carries only the result lines.
    print(f"bench: {message}", file=sys.stderr, flush=True)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def setup_django() -> None:
    """Set up Django in this process (the parent and every spawned worker call it)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Measure what production runs: with DEBUG on, Django also keeps every query in memory.
    os.environ["DEBUG"] = "0"
    import django

    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench: DATABASE_URL must name a PostgreSQL database.")


def psycopg_params() -> dict:
    """Plain psycopg parameters for Django's database: psycopg's own defaults (server-side
    binding, statements prepared after a few uses), as a hand-written SQL path would run."""
    from django.db import connection

    settings_dict = connection.settings_dict
    params = {"dbname": settings_dict["NAME"]}
    for key in ("USER", "PASSWORD", "HOST", "PORT"):
        if settings_dict.get(key):
            params[key.lower()] = settings_dict[key]
    django_only = {
        "pool", "server_side_binding", "assume_role", "isolation_level", "cursor_factory",
    }
    options = settings_dict.get("OPTIONS", {})
    params.update({k: v for k, v in options.items() if k not in django_only})
    return params


def raw_connection():
    import psycopg

    return psycopg.connect(**psycopg_params())


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str
    baseline: float

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    def line(self) -> str:
        return (
            f"{self.name} {_num(self.value)} {self.unit} "
            f"(baseline {_num(self.baseline)}, ratio {self.ratio:.2f}x)"
        )


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def emit(result: Result) -> None:
    print(result.line(), flush=True)


def median_ms(fn, *, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def app_tables() -> list[str]:
    from django.apps import apps

    tables = set()
    for label in APP_LABELS:
        for model in apps.get_app_config(label).get_models(include_auto_created=True):
            if model._meta.managed and not model._meta.proxy:
                tables.add(model._meta.db_table)
    return sorted(tables)


def guard_database(*, allow_wipe: bool) -> None:
    """Refuse to truncate a database that holds data the bench did not make."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM core_client)"
            " OR EXISTS (SELECT 1 FROM catalog_creditpack)"
            " OR EXISTS (SELECT 1 FROM ledger_ledgerentry)"
            " OR EXISTS (SELECT 1 FROM payments_purchase)"
        )
        has_data = cursor.fetchone()[0]
    ours = get_user_model().objects.filter(username=BENCH_USERNAME).exists()
    if has_data and not ours and not allow_wipe:
        raise SystemExit(
            f"bench: {connection.settings_dict['NAME']} holds clients or credits the bench did not "
            "create, and every measurement truncates the app tables. Point DATABASE_URL at a "
            "database of its own (e.g. packdesk_bench), or pass --allow-wipe."
        )


def reset_database() -> None:
    """Empty every app table. TRUNCATE, unlike DELETE, is allowed on the append-only ledger."""
    from django.db import connection

    names = ", ".join(connection.ops.quote_name(t) for t in app_tables())
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


def analyze() -> None:
    """Fresh planner statistics after a bulk seed, as autovacuum would give a live database."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in app_tables():
            cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(table)}")


def unnamed_defaults(model, named) -> dict[str, object]:
    """Columns of `model` that hand-written SQL does not name, with the value the ORM would
    write for them, so the bench's SQL keeps working when a model gains a column with a default.
    """
    from django.db import connection

    named = set(named)
    values = {}
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in named:
            continue
        if field.has_default():
            values[field.column] = field.get_db_prep_save(field.get_default(), connection)
        elif not field.null:
            raise RuntimeError(
                f"bench: no value for {model.__name__}.{field.name}: teach bench/ to fill it"
            )
    return values


def insert_select(model, exprs: dict[str, str], rest: str, params: dict) -> tuple[str, dict]:
    """INSERT INTO <model's table> (...) SELECT <exprs> <rest>, completed by unnamed_defaults."""
    from django.db import connection

    exprs, params = dict(exprs), dict(params)
    for column, value in unnamed_defaults(model, exprs).items():
        exprs[column] = f"%(default_{column})s"
        params[f"default_{column}"] = value
    columns = ", ".join(connection.ops.quote_name(c) for c in exprs)
    values = ", ".join(exprs.values())
    sql = f"INSERT INTO {model._meta.db_table} ({columns}) SELECT {values} {rest}"
    return sql, params


def bench_user():
    """The superuser every measurement acts as; its presence also marks the database as ours."""
    from django.contrib.auth import get_user_model

    user, created = get_user_model().objects.get_or_create(
        username=BENCH_USERNAME,
        defaults={"email": "bench@example.com", "is_staff": True, "is_superuser": True},
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def assert_ledger_ok(stage: str) -> None:
    from ledger.integrity import ledger_check

    result = ledger_check()
    if not result.ok:
        for check, client_id, session_type_id, detail in result.problems:
            print(
                f"ledger_check BROKEN after {stage} [{check}] client #{client_id}, "
                f"session type #{session_type_id}: {detail}",
                file=sys.stderr,
            )
        raise SystemExit(f"bench: ledger_check failed after {stage}")
    print(
        f"ledger_check ok (after {stage}: {result.clients} clients, {result.entries} entries)",
        flush=True,
    )
