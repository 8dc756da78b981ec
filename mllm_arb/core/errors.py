"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong path, an unsupported model, a bad option or override."""
