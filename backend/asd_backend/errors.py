"""Errors the user can act on. Their message says what went wrong and what to do; no traceback needed."""


class AsdError(Exception):
    """Base of the backend's user-facing errors (the CLI prints them, the server sends them)."""


class TeacherLoadError(AsdError):
    """A model could not be loaded; the message says which, why, and how to fix it."""
