"""Import files for a business moving to Packdesk: its clients, then their opening balances.

Both go through django-import-export's admin pages (upload, a dry-run preview, confirm) and
share one rule: a file imports whole or not at all. import-export shows "confirm" only when the
preview found no error, but its confirm step re-reads the file and would still commit the valid
rows if one has become wrong since (the same email added at the desk meanwhile); AllOrNothing
therefore forces one transaction, rolled back on any invalid row, whoever calls import_data.

Errors are keyed by the file's column names, so the preview reads "row 4 · email: …". Rows are
numbered as the preview numbers them: the first row under the headers is row 1.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from import_export import fields, resources

from catalog.models import SessionType
from catalog.validity import expiry_for
from core.models import Client
from core.services import client_create, client_update
from ledger.imports import (
    MAX_OPENING_CREDITS,
    OPENING_VALIDITY_MONTHS,
    credits_import_opening,
    opening_value_errors,
)
from ledger.models import CreditGrant, LedgerEntry


def normalise_header(header, columns) -> str:
    """"Client E-mail " -> "client_email": a header matches a column whatever its case, spaces,
    hyphens or underscores, as spreadsheets write them."""
    squashed = re.sub(r"[\s\-_]+", "", str(header or "").lower())
    return next((c for c in columns if c.replace("_", "") == squashed), str(header or "").strip())


def cell_text(value) -> str:
    """A cell as text: spreadsheets hand numbers over as floats (a phone 7700900123.0)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time.min else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def row_list(numbers) -> str:
    numbers = sorted(numbers)
    return ", ".join(str(n) for n in numbers[:-1]) + (" and " if len(numbers) > 1 else "") + str(numbers[-1])


class AllOrNothingMixin:
    """One transaction per import, rolled back on any row error or invalid row; headers matched
    loosely; a missing required column reported on every row instead of as a traceback."""

    required_columns: tuple[str, ...] = ()

    def import_data(self, dataset, dry_run=False, raise_errors=False, use_transactions=None,
                    collect_failed_rows=False, rollback_on_validation_errors=False, **kwargs):
        return super().import_data(
            dataset, dry_run=dry_run, raise_errors=raise_errors, use_transactions=True,
            collect_failed_rows=collect_failed_rows, rollback_on_validation_errors=True, **kwargs,
        )

    def before_import(self, dataset, **kwargs):
        columns = [f.column_name for f in self.get_import_fields()]
        dataset.headers = [normalise_header(h, columns) for h in dataset.headers or []]
        self.missing_columns = [c for c in self.required_columns if c not in dataset.headers]
        for column in self.missing_columns:
            if len(dataset):
                dataset.append_col([""] * len(dataset), header=column)
        super().before_import(dataset, **kwargs)

    def missing_column_errors(self) -> dict[str, list[str]]:
        return {c: [f"The file has no “{c}” column."] for c in self.missing_columns}

    def after_import(self, dataset, result, **kwargs):
        # ModelResource resets the table's id sequence to MAX(id) after an import. We never
        # import ids, and on a live database a concurrent, not yet committed insert would then
        # be handed an id that is already taken: keep the sequence alone.
        pass


# --- Clients ------------------------------------------------------------------------------

CLIENT_COLUMNS = ("name", "email", "phone", "notes")


def normal_email(value) -> str:
    return cell_text(value).lower()


class ClientImportResource(AllOrNothingMixin, resources.ModelResource):
    """Clients by email (case-insensitive, as core.Client stores them).

    A new email creates the client through core.services.client_create. An email that is
    already a client's updates that client through client_update, with the file's non-blank
    cells only: a blank cell never erases what the desk recorded, and the preview shows each
    change before it is confirmed ("Update", or "Skipped" when nothing differs). So a file can
    be imported again after adding rows to it. The same email twice in one file is an error on
    both rows: which of the two is right is the person's call, not ours.
    """

    required_columns = ("email",)

    class Meta:
        model = Client
        name = "Clients"
        fields = CLIENT_COLUMNS
        import_order = CLIENT_COLUMNS
        import_id_fields = ("email",)
        # Every row is checked like the admin form (full_clean, the unique email included).
        clean_model_instances = True
        skip_unchanged = True
        report_skipped = True
        use_transactions = True

    def before_import(self, dataset, **kwargs):
        super().before_import(dataset, **kwargs)
        column = dataset.headers.index("email") if "email" in (dataset.headers or []) else None
        self.rows_by_email = defaultdict(list)
        for number, values in enumerate(dataset, start=1):
            email = normal_email(values[column]) if column is not None else ""
            if email:
                self.rows_by_email[email].append(number)

    def before_import_row(self, row, **kwargs):
        for column, value in row.items():
            row[column] = cell_text(value)
        row["email"] = normal_email(row.get("email"))
        errors = self.missing_column_errors()
        others = [n for n in self.rows_by_email.get(row["email"], ()) if n != kwargs.get("row_number")]
        if row["email"] and others:
            errors["email"] = [
                f"{row['email']} is also in row {row_list(others)}: put each client in the file once."
            ]
        if errors:
            raise ValidationError(errors)

    def import_field(self, field, instance, row, is_m2m=False, **kwargs):
        if instance.pk and field.column_name in row and not row[field.column_name]:
            return  # a blank cell keeps what the client already has
        super().import_field(field, instance, row, is_m2m, **kwargs)

    def save_instance(self, instance, is_create, row, **kwargs):
        actor = kwargs.get("user")
        values = {name: getattr(instance, name) for name in CLIENT_COLUMNS}
        if is_create:
            instance.pk = client_create(actor=actor, **values).pk
        else:
            client_update(client=instance, actor=actor, **values)


# --- Opening balances ---------------------------------------------------------------------

OPENING_COLUMNS = ("client_email", "session_type", "credits", "expires_on", "value", "currency")
# The service's arguments, as the file's columns.
SERVICE_COLUMNS = {"credits": "credits", "expires_at": "expires_on", "value": "value", "currency": "currency"}
KEY_PREFIX = "import:opening:"


@dataclass
class OpeningRow:
    client: Client
    session_type: SessionType
    credits: int
    expires_on: date | None
    value: Decimal | None
    currency: str

    @property
    def expires_at(self) -> datetime | None:
        """Usable to the end of the local day the file names (catalog.validity's rule)."""
        if self.expires_on is None:
            return None
        return timezone.make_aware(datetime.combine(self.expires_on + timedelta(days=1), time.min))

    @property
    def key(self) -> str:
        """The row's content, not its position: the same balance in a re-saved, re-ordered or
        extended file is recognised as imported already (see OpeningBalanceResource)."""
        parts = (
            self.client.pk, self.session_type.pk, self.credits, self.expires_on or "",
            "" if self.value is None else self.value.normalize(), self.currency,
        )
        return KEY_PREFIX + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:40]


def _parse_credits(text: str) -> tuple[int | None, str | None]:
    if not text:
        return None, f"Give the number of credits (1 to {MAX_OPENING_CREDITS})."
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or number != number.to_integral_value():
        return None, f"“{text}” is not a whole number of credits."
    if not 1 <= number <= MAX_OPENING_CREDITS:
        return None, f"Give from 1 to {MAX_OPENING_CREDITS} credits, not {number}."
    return int(number), None


def _parse_date(value) -> tuple[date | None, str | None]:
    if isinstance(value, datetime):
        return value.date(), None
    if isinstance(value, date):
        return value, None
    try:
        # The business's own date formats (en-gb: 31/03/2026), and ISO 2026-03-31.
        return forms.DateField().clean(cell_text(value)), None
    except ValidationError:
        return None, f"“{value}” is not a date: write it as 2026-03-31 or 31/03/2026."


def _parse_value(text: str) -> tuple[Decimal | None, str | None]:
    if not text:
        return None, None
    try:
        return Decimal(text), None
    except InvalidOperation:
        return None, f"“{text}” is not an amount: write it as 150.00, without a symbol or separators."


class OpeningBalanceResource(AllOrNothingMixin, resources.ModelResource):
    """Opening balances: one row per client and session type (several when they expire apart).

    A resource over CreditGrant itself, not a proxy or an unmanaged model: each row becomes one
    grant, and the grant is what the preview, the admin's log and the credit grants list show.
    import-export only builds the grant in memory for the preview; save_instance hands the row
    to ledger.imports.credits_import_opening, which writes the grant, its Issued entry (source
    Import) and the balance under the ledger's locks. Nothing here writes a ledger row.

    Idempotency: each row's key is a hash of its content (client, session type, credits, expiry
    as written, value, currency). Confirming the same file twice, or the same data re-saved in
    another format, re-ordered or with rows added, imports each balance once; rows already
    imported show as "Skipped". Two identical rows in one file are an error (both named): put
    the total in one row. A balance added later on purpose that is identical to an imported one
    is skipped too; add those with "Adjust credits" on the client's page.
    """

    client_email = fields.Field(attribute="import_client_email", column_name="client_email")
    session_type = fields.Field(attribute="import_session_type", column_name="session_type")
    credits = fields.Field(attribute="import_credits", column_name="credits")
    expires_on = fields.Field(attribute="import_expires_on", column_name="expires_on")
    value = fields.Field(attribute="import_value", column_name="value")
    currency = fields.Field(attribute="import_currency", column_name="currency")

    required_columns = ("client_email", "session_type", "credits")

    class Meta:
        model = CreditGrant
        name = "Opening balances"
        fields = OPENING_COLUMNS
        import_order = OPENING_COLUMNS
        force_init_instance = True  # every row is a new grant; nothing is looked up or updated
        clean_model_instances = False  # the service checks the grant; rows are checked below
        report_skipped = True
        use_transactions = True

    def before_import(self, dataset, **kwargs):
        """Parse every row once, with two queries for the whole file, so duplicates can name
        each other and rows need no lookups of their own."""
        super().before_import(dataset, **kwargs)
        rows = [dict(zip(dataset.headers, values)) for values in dataset]
        emails = {normal_email(row.get("client_email")) for row in rows} - {""}
        self.clients = {c.email: c for c in Client.objects.filter(email__in=emails)}
        self.session_types = {t.name.casefold(): t for t in SessionType.objects.all()}
        self.parsed: dict[int, tuple[OpeningRow | None, dict]] = {}
        rows_by_key = defaultdict(list)
        for number, row in enumerate(rows, start=1):
            parsed, errors = self.parse(row)
            self.parsed[number] = (parsed, errors)
            if parsed is not None:
                rows_by_key[parsed.key].append(number)
        for numbers in rows_by_key.values():
            for number in numbers if len(numbers) > 1 else ():
                others = row_list(n for n in numbers if n != number)
                self.parsed[number][1].setdefault("__all__", []).append(
                    f"The same balance as row {others}: put the total in one row."
                )

    def parse(self, row: dict) -> tuple[OpeningRow | None, dict[str, list[str]]]:
        errors = self.missing_column_errors()

        def fail(column, message):
            errors.setdefault(column, []).append(message)

        email = normal_email(row.get("client_email"))
        client = self.clients.get(email)
        if not email:
            fail("client_email", "Give the client's email.")
        elif client is None:
            fail("client_email", f"No client has the email {email}: import or add the client first.")

        name = cell_text(row.get("session_type"))
        session_type = self.session_types.get(name.casefold())
        if not name:
            fail("session_type", "Give the session type.")
        elif session_type is None:
            known = ", ".join(sorted(t.name for t in self.session_types.values() if not t.archived))
            fail("session_type", f"No session type is called “{name}” (there are: {known}).")
        elif session_type.archived:
            fail("session_type", f"{session_type} is archived: restore it before importing its credits.")

        credits, problem = _parse_credits(cell_text(row.get("credits")))
        if problem:
            fail("credits", problem)

        expires_on, problem = (None, None) if not cell_text(row.get("expires_on")) else _parse_date(row["expires_on"])
        if problem:
            fail("expires_on", problem)
        elif expires_on is not None and expires_on < timezone.localdate():
            fail("expires_on", f"{expires_on:%d %b %Y} is in the past: imported credits must still be usable.")

        value, problem = _parse_value(cell_text(row.get("value")))
        if problem:
            fail("value", problem)
        currency = cell_text(row.get("currency")).upper() or settings.DEFAULT_CURRENCY
        for column, messages in opening_value_errors(value, currency).items():
            if column not in errors:
                errors[column] = messages

        if errors:
            return None, errors
        return OpeningRow(client, session_type, credits, expires_on, value, currency), errors

    def import_instance(self, instance, row, **kwargs):
        parsed, errors = self.parsed[kwargs["row_number"]]
        if errors:
            raise ValidationError(errors)
        default_expiry = expiry_for(timezone.now(), OPENING_VALIDITY_MONTHS, "months")
        # What the preview shows: the row as it will be imported.
        instance.client, instance.session_type = parsed.client, parsed.session_type
        instance.quantity = instance.remaining = parsed.credits
        instance.import_client_email = parsed.client.email
        instance.import_session_type = parsed.session_type.name
        instance.import_credits = parsed.credits
        instance.import_expires_on = (
            parsed.expires_on.isoformat() if parsed.expires_on
            else f"{(default_expiry - timedelta(days=1)):%Y-%m-%d} ({OPENING_VALIDITY_MONTHS} months)"
        )
        instance.import_value = "" if parsed.value is None else parsed.value
        instance.import_currency = parsed.currency
        instance.opening_row = parsed

    def skip_row(self, instance, original, row, import_validation_errors=None):
        if import_validation_errors:
            return False
        return LedgerEntry.objects.filter(idempotency_key=instance.opening_row.key).exists()

    def validate_instance(self, instance, import_validation_errors=None, validate_unique=True):
        if import_validation_errors:
            raise ValidationError(import_validation_errors)

    def save_instance(self, instance, is_create, row, **kwargs):
        parsed: OpeningRow = instance.opening_row
        file_name = kwargs.get("file_name") or "a file"
        try:
            grant = credits_import_opening(
                client=parsed.client, session_type=parsed.session_type, credits=parsed.credits,
                expires_at=parsed.expires_at, value=parsed.value, currency=parsed.currency,
                actor=kwargs.get("user"), key=parsed.key,
                note=f"Opening balance imported from {file_name}, row {kwargs.get('row_number')}",
            )
        except ValidationError as exc:
            raise ValidationError({
                SERVICE_COLUMNS.get(name, name): messages for name, messages in exc.message_dict.items()
            }) from exc
        instance.pk = grant.pk
        instance.created_at = grant.created_at
