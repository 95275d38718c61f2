"""Report jobs: write a queued export's CSV; remove old exports. Load by id, call the service."""
from __future__ import annotations

import dramatiq

from reports.exports import report_export_run, report_exports_cleanup


# Not retried by dramatiq: a failure is recorded on the export and the admin's Retry queues it
# again (a retry from the middle of a half-written file would be wrong anyway). An hour covers
# the 5,000,000-entry ledger with a wide margin.
@dramatiq.actor(max_retries=0, time_limit=60 * 60_000)
def run_report_export(export_id: int) -> None:
    report_export_run(export_id=export_id)


@dramatiq.actor(max_retries=0, time_limit=10 * 60_000)
def remove_old_report_exports() -> str:
    """Exports finished more than a week ago: their files and rows (config.schedule, daily)."""
    return f"{report_exports_cleanup()} old report export(s) removed"
