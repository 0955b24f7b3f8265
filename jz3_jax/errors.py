"""The project's user-facing error base: anything raised as `UserError` makes the launcher exit 2."""


class UserError(ValueError):
    """Bad input the user can fix (config, file, checkpoint, request); the message says what and where."""
