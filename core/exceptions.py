"""Front-desk refusals whose text a person can act on."""


class BookingError(Exception):
    """Base for refusals of a booking change; str() is shown as it is."""


class SessionFull(BookingError):
    pass


class AlreadyBooked(BookingError):
    pass


class StaffUnavailable(BookingError):
    pass


class InvalidBookingChange(BookingError):
    pass


class PermissionRefused(BookingError):
    pass


# --- Add-ons (seed 003): refusals shown to the desk and to the client on their own page ------


class AddOnRefused(BookingError):
    """An add-on cannot be added to this booking; str() says why, in plain words."""


class AddOnUnavailable(AddOnRefused):
    """The staff member is not free for the add-on right after the main session."""


class AddOnBlocked(AddOnRefused):
    """An intake answer is a contraindication: str() is the question's reason, shown as it is."""

    def __init__(self, reason: str, *, question_id: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.question_id = question_id


class IntakeIncomplete(AddOnRefused):
    """Required answers missing or invalid: .errors maps the question id (a string) to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        count = len(self.errors)
        super().__init__(
            "Please answer the intake question marked." if count == 1
            else f"Please answer the {count} intake questions marked."
        )
