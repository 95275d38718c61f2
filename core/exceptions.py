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
