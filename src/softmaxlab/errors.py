"""Exceptions that the command line maps to exit codes.

* :class:`UserError` -> exit code 2: bad input (config, data, run directory). The message is
  one line that says what is wrong and how to fix it; the CLI prints it without a traceback.
* :class:`DivergedError` -> exit code 3: the training loss became non-finite.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: OSError numbers that mean "this place cannot take the file", not a bug: the disk or the
#: quota is full, the directory is not writable, the file system is read-only.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


#: What one-line errors keep of another library's exception message.
MAX_MESSAGE = 160


def short_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (cut at :data:`MAX_MESSAGE` characters), for quoting
    another library's exception inside a one-line error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class UserError(Exception):
    """Bad input from the user: exit code 2 with this one-line message."""


class DivergedError(Exception):
    """Training produced a non-finite loss: exit code 3. ``run_dir`` is the run's directory
    (which records ``status: diverged``), once known."""

    def __init__(self, message: str, *, epoch: int, step: int, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.run_dir = run_dir


def write_error(exc: OSError, path: str | Path) -> UserError | None:
    """The :class:`UserError` for a failed write to ``path`` when ``exc`` is a full disk or an
    unwritable place (:data:`WRITE_ERRNOS`); None for other errors, which stay bugs."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "it is not writable"
    return UserError(
        f"cannot write {str(path)!r}: {what} ({exc.strerror}); nothing was half-written: free space or "
        "choose another --out, then run the same command again"
    )


def access_error(exc: OSError) -> UserError | None:
    """A neutral :class:`UserError` for an OSError raised outside the atomic writers (a read
    or a write of a cache): ``cannot access PATH: strerror``, for the errnos of
    :data:`WRITE_ERRNOS`; None for others."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = f" {str(exc.filename)!r}" if exc.filename else ""
    return UserError(f"cannot access{where}: {exc.strerror or exc}; check the path's permissions and free space")
