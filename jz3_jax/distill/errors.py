"""The distill package's user-facing errors."""

from jz3_jax.errors import UserError


class DistillError(UserError):
    """Bad distill input (config value, missing or malformed snippets file); the message names what and where."""


class TeacherError(DistillError):
    """The teacher cannot be used (bad API key, unknown model, unreachable endpoint); the message names the cause.

    Everything paid for before it happened is in the cache and in the partial outputs.
    """
