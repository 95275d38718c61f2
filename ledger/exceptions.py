"""Ledger errors whose text a front-desk person can act on."""


class LedgerError(Exception):
    """Base for refusals of a credit change; str() is shown to staff as it is."""


class NoCreditAvailable(LedgerError):
    pass


class InvalidAdjustment(LedgerError):
    pass


class InvalidReturn(LedgerError):
    pass


class InvalidVoid(LedgerError):
    pass


class PurchaseNotPaid(LedgerError):
    pass
