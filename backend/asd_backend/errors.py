"""Errors the user can act on. Their message says what went wrong and what to do; no traceback needed."""


class AsdError(Exception):
    """Base of the backend's user-facing errors (the CLI prints them, the server sends them)."""


class TeacherLoadError(AsdError):
    """A model could not be loaded; the message says which, why, and how to fix it."""


class UsageError(AsdError, ValueError):
    """A value the user gave (a flag, a path, a setting) cannot be used; the message names it and what to give
    instead. Also a ValueError, as the checks it replaced raised."""


class MissingFileError(AsdError, FileNotFoundError):
    """A file the user must make first (a key, a trained model) is not there; the message says how to make it."""
