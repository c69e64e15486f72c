"""The one base class for errors a user causes and can fix: the CLI (and later the app) shows the message, not a traceback."""


class UserError(Exception):
    """Something in the user's input or settings is wrong; the message says what, where, and what to do."""
