"""Checkpoint errors."""

from jz3_jax.errors import UserError


class CheckpointError(UserError):
    """A checkpoint cannot be read or written; the message names the file or tensor."""
