"""The synth package's user-facing error."""

from jz3_jax.errors import UserError


class FilterError(UserError):
    """Bad input to the filter stage (config value, missing or malformed file); the message names what and where."""


class SynthesizeError(UserError):
    """Bad input to the synthesize stage (missing prompts file, malformed or duplicate prompt record)."""
