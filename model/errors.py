"""The one exception type that scripts turn into a clean, one-line error (see ``model.cli``)."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line, exit code 2."""


def one_line(error, limit=200):
    """An exception's message on one line, at most ``limit`` characters (its type if empty)."""
    text = " ".join(str(error).split())
    return text[:limit] or type(error).__name__
