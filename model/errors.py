"""The one exception type that scripts turn into a clean, one-line error (see ``model.cli``)."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line, exit code 2."""
