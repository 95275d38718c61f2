"""The ledger export: every entry to CSV, in seconds and peak memory.

Measured: reports.ledger_export.write_ledger_csv (the admin's ledger CSV, a server-side cursor
read a chunk at a time into csv.writer) writing all entries to a file.
Baseline: PostgreSQL's own `COPY (the same query) TO STDOUT WITH CSV`, read through psycopg's
cursor.copy() into a file, in the same run on the same rows.

Each export runs in a child process of its own (a fresh interpreter with Django set up, the same
for both), which reports its peak RSS during the export and how far that is above its RSS just
before (/proc/self/status, see _status_mb); a second
pair of runs under tracemalloc gives the peak of Python allocations (timed runs go untraced, as
tracemalloc slows them). The writer is also timed inside transaction.atomic(): outside one,
Django declares its cursor WITH HOLD and PostgreSQL materialises the whole result first.

Alone, the seed is the --population business (bench/population.py) sized to the entries asked
for, and every entry is exported; on the population, a range of its most recent days.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, log, reset_database

CHUNK_SIZE = 5000
ROOT = Path(__file__).resolve().parent.parent
ENTRIES_PER_CLIENT = 50  # the population's shape: 10 grants, each an Adjusted entry and 4 uses


def _seed(entries: int, actor) -> int:
    """The population's ledger (bench/population.py) at `entries` entries; returns the count."""
    from bench.population import seed_population

    return seed_population(max(1, entries // ENTRIES_PER_CLIENT), entries, actor)


# --- One export, in a child process -------------------------------------------------------


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc/self/status.

    Not getrusage's ru_maxrss: in a child started by fork/exec it starts at the parent's peak
    (Linux carries the pre-exec memory's high-water mark into the signal struct), so a small
    child started by a 300 MB parent reports 300 MB.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"bench: no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Make VmHWM the peak of what follows (Linux ≥ 4.0: writing 5 to clear_refs resets it)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # then the peak also covers Django's setup, for both exports alike


def _filters(days: str):
    """'' (every entry) or 'YYYY-MM-DD:YYYY-MM-DD' (a range of local days)."""
    from datetime import date

    from reports.filters import ReportFilters

    if not days:
        return ReportFilters()
    start, end = days.split(":")
    return ReportFilters(start=date.fromisoformat(start), end=date.fromisoformat(end))


def _days_holding(entries: int) -> str:
    """The most recent run of whole local days whose entries number at least `entries` (all of
    them if there are fewer): the range finance exports, e.g. the last few months."""
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (created_at AT TIME ZONE %s)::date AS day, COUNT(*) FROM ledger_ledgerentry "
            "GROUP BY day ORDER BY day DESC", [settings.TIME_ZONE],
        )
        days = cursor.fetchall()
    total, first = 0, days[0][0]
    for day, count in days:
        total, first = total + count, day
        if total >= entries:
            break
    return f"{first.isoformat()}:{days[0][0].isoformat()}"


def _export(kind: str, out_path: str, traced: bool, days: str = "") -> dict:
    """Runs in the child: set up, connect, then time one export of every entry to `out_path`."""
    from bench.common import raw_connection, setup_django

    setup_django()
    import tracemalloc

    from django.db import connection, transaction

    from reports.ledger_export import ledger_rows, write_ledger_csv

    filters = _filters(days)
    if kind == "copy":
        sql, params = ledger_rows(filters).query.sql_with_params()
        conn = raw_connection()
    else:
        connection.ensure_connection()
    before = _status_mb("VmRSS")
    _reset_peak()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    if kind == "copy":
        with conn, conn.cursor() as cursor, open(out_path, "wb") as out:
            with cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)", params) as copy:
                for data in copy:
                    out.write(data)
            rows = cursor.rowcount
    else:
        with open(out_path, "w", newline="", encoding="utf-8") as out:
            if kind == "writer_atomic":
                with transaction.atomic():
                    rows = write_ledger_csv(out, filters, chunk_size=CHUNK_SIZE)
            else:
                rows = write_ledger_csv(out, filters, chunk_size=CHUNK_SIZE)
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if traced else None
    peak = _status_mb("VmHWM")
    return {"kind": kind, "rows": rows, "seconds": seconds, "rss_before_mb": before,
            "peak_rss_mb": peak, "rss_growth_mb": peak - before, "traced_peak_mb": traced_peak}


def _run_child(kind: str, out_path: Path, *, days: str, traced: bool = False) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.export", kind, str(out_path), "traced" if traced else "timed",
         days],
        cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"bench: export child {kind} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _compare(writer_file: Path, copy_file: Path) -> tuple[int, str]:
    """Data lines that differ (headers aside; csv.writer ends lines with CRLF, COPY with LF)."""
    differing, first = 0, ""
    with open(writer_file, encoding="utf-8", newline="") as ours, \
            open(copy_file, encoding="utf-8", newline="") as theirs:
        next(ours, None), next(theirs, None)
        for number, (a, b) in enumerate(zip(ours, theirs), start=2):
            if a.rstrip("\r\n") != b.rstrip("\r\n"):
                differing += 1
                first = first or f"line {number}: {a.rstrip()!r} vs COPY {b.rstrip()!r}"
        differing += sum(1 for _ in ours) + sum(1 for _ in theirs)
    return differing, first


def run(*, entries: int, repeats: int, actor, seed: bool = True) -> list[Result]:
    """seed: export every entry of a ledger of `entries` seeded here. Otherwise (--population)
    export the most recent whole days of the ledger that is there holding `entries` or more."""
    if seed:
        reset_database()
        log(f"export: seeding {entries} ledger entries (set-based)")
        started = time.monotonic()
        total = _seed(entries, actor)  # ledger_check included
        log(f"export: seeded {total} entries in {time.monotonic() - started:.0f}s")
        days = ""
    else:
        from reports.ledger_export import ledger_entries

        days = _days_holding(entries)
        total = ledger_entries(_filters(days)).count()
        log(f"export: the days {days.replace(':', ' to ')}: {total} entries")
    workdir = Path(tempfile.mkdtemp(prefix="packdesk-bench-export-"))
    try:
        files = {kind: workdir / f"{kind}.csv" for kind in ("writer", "writer_atomic", "copy")}
        runs = {kind: [] for kind in files}
        for attempt in range(1, repeats + 1):
            for kind, path in files.items():
                runs[kind].append(_run_child(kind, path, days=days))
            log(f"export: run {attempt}/{repeats}: "
                + ", ".join(f"{kind} {runs[kind][-1]['seconds']:.2f}s" for kind in files))
        for kind, found in runs.items():
            if any(r["rows"] != total for r in found):
                raise SystemExit(f"bench: {kind} exported {[r['rows'] for r in found]} of {total} rows")
            times = sorted(r["seconds"] for r in found)
            log(f"export: {kind}: fastest {times[0]:.2f}s, median {statistics.median(times):.2f}s "
                f"of {len(times)} (the figures below are medians)")
        differing, first = _compare(files["writer"], files["copy"])
        log(f"export: writer and COPY files: {files['writer'].stat().st_size / 2**20:.1f} MB and "
            f"{files['copy'].stat().st_size / 2**20:.1f} MB, "
            + ("the same rows" if not differing else f"{differing} lines differ, first {first}"))
        traced = {kind: _run_child(kind, files[kind], days=days, traced=True)
                  for kind in ("writer", "copy")}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median(kind, key):
        return statistics.median(r[key] for r in runs[kind])

    writer_s, copy_s = median("writer", "seconds"), median("copy", "seconds")
    name = f"export_csv_{total}"
    if days:
        from ledger.models import LedgerEntry

        name += f"_of_{LedgerEntry.objects.count()}"
    return [
        Result(f"{name}_seconds", writer_s, "s", copy_s),
        Result(f"{name}_in_transaction_seconds", median("writer_atomic", "seconds"), "s", copy_s),
        Result(f"{name}_rows_per_s", total / writer_s, "rows/s", total / copy_s),
        Result(f"{name}_peak_rss", median("writer", "peak_rss_mb"), "MB", median("copy", "peak_rss_mb")),
        Result(f"{name}_rss_growth", median("writer", "rss_growth_mb"), "MB", median("copy", "rss_growth_mb")),
        Result(f"{name}_tracemalloc_peak", traced["writer"]["traced_peak_mb"], "MB",
               traced["copy"]["traced_peak_mb"]),
    ]


if __name__ == "__main__":
    # Child mode: python -m bench.export <writer|writer_atomic|copy> <out path> <timed|traced>
    # [<first day>:<last day>]
    kind, out_path, mode = sys.argv[1:4]
    days = sys.argv[4] if len(sys.argv) > 4 else ""
    print(json.dumps(_export(kind, out_path, traced=mode == "traced", days=days)), flush=True)
