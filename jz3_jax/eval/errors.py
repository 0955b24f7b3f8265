"""The eval package's user-facing error (a leaf module)."""

from jz3_jax.errors import UserError


class EvalError(UserError):
    """Bad input to `eval` or `grade` (dataset name, data directory, generations file); the message
    names what and where."""
