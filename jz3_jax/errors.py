"""The project's user-facing error base: anything raised as `UserError` makes the launcher exit 2."""


class UserError(ValueError):
    """Bad input the user can fix (config, file, checkpoint, request); the message says what and where."""


class ConfigError(UserError):
    """A config problem the user must fix (unknown key, wrong type, bad file). The launcher exits 2."""
