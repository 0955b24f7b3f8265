"""The data package's user-facing error."""

from jz3_jax.errors import UserError


class DataError(UserError):
    """Training data cannot be read or used; the message names the file (and line or row) when there is one."""
