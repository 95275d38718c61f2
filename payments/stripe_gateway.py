"""The one place that builds a Stripe client: the real API, or the test-mode double."""
from __future__ import annotations

import stripe
from django.conf import settings


def stripe_client() -> stripe.StripeClient:
    if settings.STRIPE_TEST_DOUBLE:
        from payments.stripe_double import StripeDouble

        return stripe.StripeClient("sk_test_packdesk_double", http_client=StripeDouble(), max_network_retries=0)
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, max_network_retries=2)
