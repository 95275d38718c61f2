"""Admin for recurring plans: the list, a read-only plan page with its cycles, selling a plan at
the desk, and the staff actions (activate, pause, resume, cancel, email a payment link).

Every action is a confirmation page that calls one service of payments.subscriptions and shows
its refusal as it is; those services are atomic, so a refusal changes nothing. Front desk sells
and looks (add, view); Manager and Finance also act on plans (change), as core.roles says.
"""
from __future__ import annotations

import json
from datetime import datetime, time

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Exists, OuterRef, Prefetch, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from unfold.decorators import action, display
from unfold.widgets import (
    UnfoldAdminSelectWidget,
    UnfoldAdminSingleDateWidget,
    UnfoldAdminTextInputWidget,
    UnfoldBooleanSwitchWidget,
)

from catalog.models import CreditPack, RecurringCollection
from core.admin import HistoryAdmin, error_text, local_start
from core.models import Client, StaffMember
from ledger.exceptions import LedgerError
from ledger.models import CreditGrant
from payments.exceptions import PaymentError
from payments.models import Invoice, PurchaseStatus, Subscription, SubscriptionStatus
from payments.recurrence import next_cycle_at, with_latest_cycle
from payments.subscriptions import (
    LIVE,
    payments_made,
    payments_remaining,
    subscription_activate,
    subscription_cancel,
    subscription_create,
    subscription_pause,
    subscription_resume,
)

CHANGE = "payments.change_subscription"
RECURRING_KEYS = ("billing_interval", "billing_interval_count", "recurs_when", "minimum_commitment", "free_trial_days")
DETAIL_FIELDSETS = (
    ("Plan", {"fields": (
        "client", "pack", "staff_member", "collection", "status", "price", "currency", "payments_progress",
        "next_cycle", "created_by", "created_at",
    )}),
    ("What the client bought", {"fields": ("what_was_bought",)}),
    ("Cycles", {"fields": ("cycles_table",)}),
    ("Dates", {"fields": (
        "activated_at", "trial_ends_at", "current_period_start", "current_period_end", "paused_at",
        "paused_until", "cancelled_at", "cancel_reason",
    )}),
    ("Stripe", {"fields": ("stripe_customer_id", "stripe_subscription_id", "stripe_checkout_session_id")}),
    ("Snapshot (as stored)", {"classes": ["collapse"], "fields": ("snapshot_json",)}),
)
CYCLE_COLUMNS = ("Cycle", "Period", "Status", "Invoice", "Paid", "Credits issued")
DETAIL_FIELDS = tuple(f for _, opts in DETAIL_FIELDSETS for f in opts["fields"])


def _pk(object_id) -> int:
    if not (object_id := unquote(str(object_id))).isdigit():
        raise Http404("No such plan.")
    return int(object_id)


def describe_recurring(recurring: dict) -> str:
    every = recurring.get("billing_interval_count") or 1
    interval = recurring.get("billing_interval") or ""
    how = "auto-debit" if recurring.get("collection") == RecurringCollection.AUTO_DEBIT else "invoice"
    text = f"{how}, every {every} {interval}{'s' if every != 1 else ''}"
    if how == "invoice":
        text += f", recurs when the {(recurring.get('recurs_when') or '').replace('_', ' ')}"
    if recurring.get("minimum_commitment"):
        text += f", minimum {recurring['minimum_commitment']} payments"
    if recurring.get("free_trial_days"):
        text += f", {recurring['free_trial_days']}-day free trial"
    return text


# --- Forms -----------------------------------------------------------------------------------


class SellPlanForm(forms.Form):
    client = forms.ModelChoiceField(queryset=Client.objects.all())
    pack = forms.ModelChoiceField(
        queryset=CreditPack.objects.filter(is_recurring=True).order_by("-published", "name"),
        widget=UnfoldAdminSelectWidget(), empty_label="Select recurring pack",
    )
    staff_member = forms.ModelChoiceField(
        queryset=StaffMember.objects.filter(active=True).order_by("display_name"), required=False,
        widget=UnfoldAdminSelectWidget(), empty_label="Any staff member (the pack's price)",
    )
    activate = forms.BooleanField(
        label="Activate now", required=False, initial=True, widget=UnfoldBooleanSwitchWidget(),
        help_text="Off: payments are taken but no credits are issued until the plan is activated.",
    )

    def __init__(self, *args, admin_site, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pack"].label_from_instance = _pack_label
        field = self.fields["client"]
        field.widget = AutocompleteSelect(Subscription._meta.get_field("client"), admin_site)
        field.queryset = field.queryset


def _pack_label(pack: CreditPack) -> str:
    recurring = {key: getattr(pack, key) for key in RECURRING_KEYS} | {"collection": pack.recurring_collection}
    label = f"{pack.name} — {pack.price} {pack.currency} ({describe_recurring(recurring)})"
    return label if pack.published else label + " — not published"


class ConfirmForm(forms.Form):
    """Activate and resume ask for nothing but the confirmation."""


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=300, widget=UnfoldAdminTextInputWidget(), help_text="Kept in the plan's history.")


class PauseForm(ReasonForm):
    until = forms.DateField(
        label="Pause until", widget=UnfoldAdminSingleDateWidget(),
        help_text="The plan resumes at the start of this day; its credits' expiry moves by the pause.",
    )

    field_order = ["until", "reason"]

    def until_datetime(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.cleaned_data["until"], time.min))


# --- The admin ---------------------------------------------------------------------------------


@admin.register(Subscription)
class SubscriptionAdmin(HistoryAdmin):
    list_display = (
        "plan", "client_name", "pack_name", "paid_by", "status", "payments_progress", "current_period",
        "next_cycle", "created",
    )
    list_filter = ("status", "collection")
    list_select_related = ("client",)
    search_fields = ("client__name", "client__email")
    autocomplete_fields = ("client",)
    show_full_result_count = False
    fieldsets = DETAIL_FIELDSETS
    readonly_fields = DETAIL_FIELDS
    actions_detail = ["activate", "pause", "resume", "cancel_plan", "payment_link"]

    def get_queryset(self, request):
        return with_latest_cycle(super().get_queryset(request)).annotate(
            snapshot_name=KeyTextTransform("name", "snapshot"),
        )

    # A plan changes only through the actions (services): its page is read-only, never deleted.
    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_act_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(CHANGE)

    def get_actions_detail(self, request, object_id):
        plan = Subscription.objects.filter(pk=_pk(object_id)).first()
        if plan is None:
            return []
        offered = {"cancel_plan"} if plan.status != SubscriptionStatus.CANCELLED else set()
        if plan.status != SubscriptionStatus.CANCELLED and plan.activated_at is None:
            offered.add("activate")
        if plan.status in LIVE:
            offered.add("pause")
        if plan.status == SubscriptionStatus.PAUSED:
            offered.add("resume")
        if (plan.collection == RecurringCollection.AUTO_DEBIT and plan.status == SubscriptionStatus.PENDING
                and not plan.stripe_subscription_id):
            offered.add("payment_link")
        return [a for a in super().get_actions_detail(request, object_id) if a.method.__name__ in offered]

    # --- Columns and fields -----------------------------------------------------------------

    @display(description="Plan", ordering="pk")
    def plan(self, obj: Subscription) -> str:
        return f"#{obj.pk}"

    @display(description="Client", ordering="client__name")
    def client_name(self, obj: Subscription):
        url = reverse("admin:core_client_change", args=[obj.client_id])
        return format_html('<a href="{}">{}</a>', url, obj.client.name)

    @display(description="Pack", ordering="snapshot_name")
    def pack_name(self, obj: Subscription) -> str:
        return obj.snapshot_name or ""

    @display(description="Collection", ordering="collection")
    def paid_by(self, obj: Subscription) -> str:
        return "Auto-debit" if obj.collection == RecurringCollection.AUTO_DEBIT else "Invoice"

    @display(description="Payments made / minimum", ordering="made")
    def payments_progress(self, obj: Subscription) -> str:
        return _progress_text(obj, obj.made)

    @display(description="Current period")
    def current_period(self, obj: Subscription) -> str:
        return _span(obj.current_period_start, obj.current_period_end) if obj.current_period_start else "—"

    @display(description="Next cycle")
    def next_cycle(self, obj: Subscription) -> str:
        if obj.status == SubscriptionStatus.CANCELLED:
            return "—"
        if obj.status == SubscriptionStatus.PAUSED:
            return f"paused until {local_start(obj.paused_until)}"
        if obj.status == SubscriptionStatus.TRIALING:
            return f"trial ends {local_start(obj.trial_ends_at)}"
        if obj.collection == RecurringCollection.AUTO_DEBIT:
            return f"card charged {local_start(obj.current_period_end)}" if obj.current_period_end else "awaiting card"
        if getattr(obj, "latest_status", None) == PurchaseStatus.PENDING:
            return f"cycle {obj.latest_number} awaiting payment"
        at = next_cycle_at(obj) if getattr(obj, "latest_id", None) else None
        return f"opens {local_start(at)}" if at else "—"

    @display(description="Created", ordering="created_at")
    def created(self, obj: Subscription) -> str:
        return local_start(obj.created_at)

    @display(description="What the client bought")
    def what_was_bought(self, obj: Subscription):
        snap = obj.snapshot or {}
        lines = format_html_join("", "<li>{}</li>", ((_credits_per_cycle(line),) for line in snap.get("lines", [])))
        return format_html(
            "<p>{} — {} {} per cycle; {}</p><p>Credits per cycle:</p><ul>{}</ul>",
            snap.get("name", ""), obj.price, obj.currency, describe_recurring(snap.get("recurring") or {}), lines,
        )

    @display(description="Cycles")
    def cycles_table(self, obj: Subscription):
        rows = []
        for cycle in _cycles(obj):
            invoice = cycle.invoice_list[0] if cycle.invoice_list else None
            url = reverse("admin:payments_purchase_change", args=[cycle.pk])
            rows.append((
                url, cycle.cycle_number, _span(cycle.period_start, cycle.period_end), cycle.get_status_display(),
                f"{invoice.number or '#' + str(invoice.pk)} ({invoice.get_status_display().lower()})" if invoice else "—",
                local_start(cycle.paid_at), "unlimited" if cycle.unlimited_grants else (cycle.credits_issued or 0),
            ))
        if not rows:
            return "No cycle yet."
        cell = '<td class="pr-4 py-1">{}</td>'
        body = format_html_join(
            "", '<tr><td class="pr-4 py-1"><a class="text-primary-600" href="{}">{}</a></td>' + cell * 5 + "</tr>",
            rows,
        )
        return format_html(
            '<table class="w-full" id="plan-cycles"><thead><tr class="text-left">'
            + "".join(f'<th class="pr-4">{h}</th>' for h in CYCLE_COLUMNS)
            + "</tr></thead><tbody>{}</tbody></table>", body,
        )

    @display(description="Snapshot")
    def snapshot_json(self, obj: Subscription):
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2, sort_keys=True))

    # --- Selling at the desk ------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """Sell a plan: priced and snapshotted from the pack by the service."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {"activate": True}
        if request.GET.get("client", "").isdigit():
            initial["client"] = request.GET["client"]
        form = SellPlanForm(request.POST or None, admin_site=self.admin_site, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                plan = subscription_create(
                    client=data["client"], pack=data["pack"], staff_member=data.get("staff_member"),
                    activate=data["activate"], actor=request.user,
                )
            except (PaymentError, LedgerError, ValidationError) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, _sold_message(plan))
                return redirect(reverse("admin:payments_subscription_change", args=[plan.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Sell a recurring plan",
            "intro": (
                "The price and the credits come from the pack as it is now; the plan keeps a copy, so later "
                "edits to the pack never change it. An invoice plan opens its first cycle now (after a free "
                "trial, if any); an auto-debit plan waits for the client's card."
            ),
            "submit_label": "Sell plan",
            "cancel_url": reverse("admin:payments_subscription_changelist"),
            "opts": self.model._meta,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)

    # --- Actions ------------------------------------------------------------------------------

    @action(description="Activate", url_path="activate", icon="play_circle", permissions=["act"])
    def activate(self, request, object_id):
        return self._confirm(
            request, object_id, form_class=ConfirmForm, title="Activate plan", submit="Activate",
            intro="Credits start being issued: every cycle already paid gets its credits now, dated from its "
                  "own cycle (any already past their expiry are issued and expired at once).",
            run=lambda plan, form: subscription_activate(subscription=plan, actor=request.user),
            done=lambda plan, result: f"Plan #{plan.pk} activated: {len(result)} credit grant(s) issued.",
        )

    @action(description="Pause", url_path="pause", icon="pause_circle", permissions=["act"])
    def pause(self, request, object_id):
        return self._confirm(
            request, object_id, form_class=PauseForm, title="Pause plan", submit="Pause",
            intro="No new cycle opens while paused, and the expiry of the credits already issued moves by "
                  "the length of the pause.",
            run=lambda plan, form: subscription_pause(
                subscription=plan, until=form.until_datetime(), reason=form.cleaned_data["reason"], actor=request.user,
            ),
            done=lambda plan, result: f"Plan #{plan.pk} paused until {local_start(result.paused_until)}.",
        )

    @action(description="Resume", url_path="resume", icon="play_circle", permissions=["act"])
    def resume(self, request, object_id):
        return self._confirm(
            request, object_id, form_class=ConfirmForm, title="Resume plan", submit="Resume",
            intro="The plan runs again now; its credits give back the days of pause not taken.",
            run=lambda plan, form: subscription_resume(subscription=plan, actor=request.user),
            done=lambda plan, result: f"Plan #{plan.pk} resumed.",
        )

    @action(description="Cancel plan", url_path="cancel", icon="cancel", permissions=["act"])
    def cancel_plan(self, request, object_id):
        return self._confirm(
            request, object_id, form_class=ReasonForm, title="Cancel plan", submit="Cancel plan",
            intro=_cancel_intro,
            run=lambda plan, form: subscription_cancel(
                subscription=plan, reason=form.cleaned_data["reason"], actor=request.user,
            ),
            done=lambda plan, result: f"Plan #{plan.pk} cancelled: no more cycles. Credits already issued stay "
                                      "until they expire.",
        )

    @action(description="Email the client a payment link", url_path="payment-link", icon="mail",
            permissions=["act_or_sell"])
    def payment_link(self, request, object_id):
        """An auto-debit plan sold at the desk needs the client's card: Stripe Checkout for this
        plan (one session per plan, whoever asks again), its link emailed to the client."""
        pk = _pk(object_id)
        plan = Subscription.objects.select_related("client").filter(pk=pk).first()
        if plan is None:
            raise Http404("No such plan.")
        back = reverse("admin:payments_subscription_change", args=[plan.pk])
        if request.method == "POST":
            try:
                url = plan_payment_link_send(plan)
            except (PaymentError, ValidationError) as exc:
                messages.error(request, error_text(exc))
            else:
                messages.success(request, f"Payment link emailed to {plan.client.email}: {url}")
            return redirect(back)
        return self._confirm(
            request, pk, form_class=ConfirmForm, title="Email a payment link for plan", submit="Email the link",
            intro=f"The client gets an email with a link to Stripe's page, where they give their card: the first "
                  f"payment of {plan.price} {plan.currency} is taken (after the free trial, if any) and then "
                  "every cycle automatically.",
            run=None, done=None,
        )

    def has_act_or_sell_permission(self, request, obj=None) -> bool:
        # The desk that sold an auto-debit plan sends the link for the card: selling, not changing.
        return self.has_add_permission(request) or request.user.has_perm(CHANGE)

    def _confirm(self, request, object_id, *, form_class, title, submit, intro, run, done):
        plan = Subscription.objects.select_related("client").filter(pk=_pk(object_id)).first()
        if plan is None:
            raise Http404("No such plan.")
        back = reverse("admin:payments_subscription_change", args=[plan.pk])
        form = form_class(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                result = run(plan, form)
            except (PaymentError, LedgerError, ValidationError) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, done(plan, result))
                return redirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{title} #{plan.pk}",
            "intro": intro(plan) if callable(intro) else intro,
            "submit_label": submit,
            "cancel_url": back,
            "opts": self.model._meta,
            "plan": plan,
            "progress": _progress_text(plan, payments_made(plan)),
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "payments/admin/subscription_confirm.html", context)


# --- Helpers -------------------------------------------------------------------------------------


def _credits_per_cycle(line: dict) -> str:
    amount = "unlimited" if line.get("unlimited") else f"{line.get('credits')} ×"
    return f"{amount} {line.get('session_type')}, valid {line.get('validity_amount')} {line.get('validity_unit')}"


def _span(start, end) -> str:
    return f"{timezone.localtime(start):%d %b %Y} – {timezone.localtime(end):%d %b %Y}"


def _cycles(plan: Subscription):
    return (
        plan.cycles.order_by("cycle_number")
        .annotate(
            credits_issued=Sum("grants__quantity", filter=Q(grants__reservation=False)),
            unlimited_grants=Exists(CreditGrant.objects.filter(purchase_id=OuterRef("pk"), unlimited=True)),
        )
        .prefetch_related(Prefetch("invoices", queryset=Invoice.objects.order_by("-created_at", "-pk"),
                                   to_attr="invoice_list"))
    )


def _progress_text(plan: Subscription, made: int) -> str:
    if not plan.minimum_commitment:
        return f"{made} made (no minimum)"
    remaining = payments_remaining(plan, made)
    return f"{made} of {plan.minimum_commitment}" + (f", {remaining} to go" if remaining else ", commitment met")


def plan_payment_link_send(plan: Subscription) -> str:
    """Start (or find again) the plan's Stripe Checkout and email its link; returns the link.

    Stripe is called outside any transaction; the email is sent once per Checkout Session.
    """
    import stripe

    from core.emails import email_send
    from payments.subscription_stripe import subscription_checkout_session_create, subscription_store_session_id

    if plan.collection != RecurringCollection.AUTO_DEBIT or plan.status != SubscriptionStatus.PENDING:
        raise PaymentError(f"{plan} is not an auto-debit plan waiting for the client's card.")
    if not plan.client.email:
        raise PaymentError(f"{plan.client.name} has no email address: add one to the client first.")
    try:
        session = subscription_checkout_session_create(plan)
    except stripe.StripeError as exc:
        raise PaymentError(f"Stripe could not start the payment page: {exc.user_message or exc}") from exc
    plan = subscription_store_session_id(plan, session.id)
    email_send(
        to=plan.client.email, template="plan_payment_due", client=plan.client, related=("plan", plan.pk),
        dedupe_key=f"plan-card-link:{session.id}",
        context={
            "pack_name": plan.snapshot.get("name", ""), "amount": plan.price, "currency": plan.currency,
            "checkout_url": session.url, "trial_days": (plan.snapshot.get("recurring") or {}).get("free_trial_days"),
        },
    )
    return session.url


def _cancel_intro(plan: Subscription) -> str:
    remaining = payments_remaining(plan)
    text = ("No new cycle opens after this. Credits already issued stay until they expire; unpaid cycles "
            "stay in the outstanding payments for finance.")
    if remaining:
        text = (
            f"This plan has a minimum commitment of {plan.minimum_commitment} payments and {remaining} "
            f"{'is' if remaining == 1 else 'are'} still to go: staff may cancel it anyway. " + text
        )
    return text


def _sold_message(plan: Subscription) -> str:
    if plan.collection == RecurringCollection.AUTO_DEBIT:
        return (f"Plan #{plan.pk} created for {plan.client.name}: it starts when the client gives their card. "
                "Use “Email the client a payment link”.")
    if plan.status == SubscriptionStatus.TRIALING:
        return f"Plan #{plan.pk} created: free trial until {local_start(plan.trial_ends_at)}; cycle 1 is billed then."
    return (f"Plan #{plan.pk} created: cycle 1 ({plan.price} {plan.currency}) is in the outstanding payments — "
            "record the payment now, or issue an invoice.")
