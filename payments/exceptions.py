class PaymentError(Exception):
    """Base for refusals of a money change; str() is shown to staff as it is."""


class PackNotForSale(PaymentError):
    pass


class InvalidPurchaseState(PaymentError):
    pass


class InvalidPayment(PaymentError):
    pass
