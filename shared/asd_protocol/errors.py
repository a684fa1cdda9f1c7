"""The one exception the protocol raises, and the error codes that travel in `error` messages."""

from __future__ import annotations

# Error codes sent in `error` messages. Stable strings: clients switch on them.
BAD_FRAMES = "bad_frames"  # wrong number of frames, bad JSON, buffers that do not match
BAD_HEADER = "bad_header"
VERSION_MISMATCH = "version_mismatch"
UNKNOWN_MSG_TYPE = "unknown_msg_type"
WRONG_DIRECTION = "wrong_direction"  # a server-only type sent to the server, or the reverse
INVALID_FIELD = "invalid_field"
TOO_LARGE = "too_large"
UNKNOWN_JOB = "unknown_job"
QUEUE_FULL = "queue_full"
UNSUPPORTED = "unsupported"
JOB_FAILED = "job_failed"
OUT_OF_MEMORY = "out_of_memory"
WORKER_CRASHED = "worker_crashed"
SERVER_ERROR = "server_error"
DISK_FULL = "disk_full"  # the server could not write what a request needs (its disk or quota is full)
BACKLOG_DROPPED = "backlog_dropped"  # the client did not read its replies; they were dropped
ACCESS_REVOKED = "access_revoked"  # the client's key was removed from the allow-list


def error_text(message: str, hint: str = "", where: str | None = None) -> str:
    """How every error reads to a person (the CLI, the add-on's status line, a remote job's failure):
    'where: message — hint', each part only when present."""
    text = f"{where}: {message}" if where else message
    return f"{text} — {hint}" if hint else text


class ProtocolError(ValueError):
    """A message that cannot be accepted, with what was wrong and what to do.

    `field` names the offending field as a dotted path (`content.prompt`, `header.msg_type`,
    `buffers[2]`) so a client can point at it; `hint` says what to do instead.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None, hint: str = "") -> None:
        super().__init__(message if field is None else f"{field}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.hint = hint

    @property
    def text(self) -> str:
        """The error as a person reads it (`error_text`)."""
        return error_text(self.message, self.hint, self.field)

    def __repr__(self) -> str:
        return f"ProtocolError(code={self.code!r}, field={self.field!r}, message={self.message!r})"
