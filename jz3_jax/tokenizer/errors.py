"""The one exception the tokenizer package raises for bad input."""


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or of an unsupported kind; the message names the path."""
