"""The project's user-facing errors: anything raised as `UserError` makes the launcher exit 2.

One base, `UserError(message, hint=...)`: `message` says what is wrong and where (a file and line,
a key, a record), `hint` what the user can do about it (a setting to change, a file to remove). The
subclasses only name which part of the project refused the input, so callers and tests can catch
one stage's errors; they add no behaviour.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix (config, file, checkpoint, request); the message says what and where.

    Attributes:
        message: what is wrong, and where.
        hint: the user-facing remedy ("" when there is none to give); `str(error)` is
            `message (hint)`.
    """

    def __init__(self, message: str = "", *args: object, hint: str = "") -> None:
        self.message, self.hint = message, hint
        super().__init__(f"{message} ({hint})" if hint else message, *args)


class ConfigError(UserError):
    """A config problem the user must fix (unknown key, wrong type, bad file). The launcher exits 2."""


class RecordError(UserError):
    """A record file that cannot be read: missing, unreadable, or a malformed record (named `file:line`)."""


class DataError(RecordError):
    """Training data cannot be read or used; the message names the file (and line or row) when there is one."""


class DistillError(UserError):
    """Bad distill input (config value, missing or malformed snippets file); the message names what and where."""


class TeacherError(DistillError):
    """The teacher cannot be used (bad API key, unknown model, unreachable endpoint); the message names the cause.

    Everything paid for before it happened is in the cache and in the partial outputs.
    """


class EvalError(UserError):
    """Bad input to `eval` or `grade` (dataset name, data directory, generations file); the message
    names what and where."""


class FilterError(UserError):
    """Bad input to the filter stage (config value, missing or malformed file); the message names what and where."""


class SynthesizeError(UserError):
    """Bad input to the synthesize stage (missing prompts file, malformed or duplicate prompt record)."""
