"""One root error; the message on the exception is the sentence the user reads."""


class HostnicError(Exception):
    """A refusal the user can act on. ``str(error)`` is shown in ``docker`` output."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HostnicError):
    """The request itself is malformed (not JSON, wrong types, missing fields)."""


class InvalidOption(HostnicError):
    """A ``-o``/``--driver-opt`` option is unknown or malformed."""


class NicUnavailable(HostnicError):
    """The NIC asked for cannot be used: absent, guarded, or held elsewhere."""


class PoolExhausted(HostnicError):
    """Every NIC of a network's pool is claimed."""


class UnknownObject(HostnicError):
    """A network or endpoint id this driver does not hold."""


class HostError(HostnicError):
    """A netlink operation on the host failed."""


class StoreError(HostnicError):
    """The state could not be written durably; nothing was changed."""
