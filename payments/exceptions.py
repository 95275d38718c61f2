class PaymentError(Exception):
    """Base for refusals of a money change; str() is shown to staff as it is."""


class PackNotForSale(PaymentError):
    pass


class InvalidPurchaseState(PaymentError):
    pass


class InvalidPayment(PaymentError):
    pass


class InvalidRefund(PaymentError):
    pass


class RefundNotReflected(PaymentError):
    """A Stripe refund that cannot be reflected yet (its purchase is not known or not paid yet):
    the webhook event is retried later."""
