"""Admin forms for money taken at the desk: selling a pack and recording its payment."""
from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib.admin.widgets import AutocompleteSelect
from unfold.widgets import (
    UnfoldAdminDecimalFieldWidget,
    UnfoldAdminRadioSelectWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminTextInputWidget,
)

from catalog.models import CreditPack
from core.models import Client, StaffMember
from payments.models import PaymentMethod, Purchase
from payments.services import DESK_METHODS


class PackForSaleField(forms.ModelChoiceField):
    """Packs labelled with their price, staff prices and whether they can be sold at all."""

    def label_from_instance(self, obj: CreditPack) -> str:
        label = f"{obj.name} — {obj.price} {obj.currency}"
        staff = [f"{row.staff_member.display_name} {row.price}" for row in obj.staff_prices.all() if row.price is not None]
        if staff:
            label += f" (per staff member: {', '.join(staff)})"
        if not obj.published:
            label += " — not published"
        return label


class SellPackForm(forms.Form):
    client = forms.ModelChoiceField(queryset=Client.objects.all())
    # Unpublished packs stay listed (marked) so the service can say why they cannot be sold.
    pack = PackForSaleField(
        queryset=CreditPack.objects.order_by("-published", "name").prefetch_related("staff_prices__staff_member"),
        widget=UnfoldAdminSelectWidget(), empty_label="Select credit pack",
    )
    staff_member = forms.ModelChoiceField(
        queryset=StaffMember.objects.filter(active=True).order_by("display_name"), required=False,
        widget=UnfoldAdminSelectWidget(), empty_label="Any staff member (the pack's price)",
        help_text=(
            "For packs priced per staff member or sold only with some staff: the staff member whose "
            "price applies."
        ),
    )

    def __init__(self, *args, admin_site, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["client"]
        field.widget = AutocompleteSelect(Purchase._meta.get_field("client"), admin_site)
        field.queryset = field.queryset  # hands the choices to the new widget


class RecordPaymentForm(forms.Form):
    method = forms.ChoiceField(
        choices=[(m.value, m.label) for m in DESK_METHODS], initial=PaymentMethod.CASH,
        widget=UnfoldAdminRadioSelectWidget(),
    )
    amount = forms.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal("0"), widget=UnfoldAdminDecimalFieldWidget(),
        help_text="The purchase's price: a different amount is refused.",
    )
    reference = forms.CharField(
        required=False, max_length=200, widget=UnfoldAdminTextInputWidget(),
        help_text="Receipt number, card-terminal slip or bank-transfer reference.",
    )
