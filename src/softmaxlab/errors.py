"""Exceptions that the command line maps to exit codes.

* :class:`UserError` -> exit code 2: bad input (config, data, run directory). The message is
  one line that says what is wrong and how to fix it; the CLI prints it without a traceback.
* :class:`DivergedError` -> exit code 3: the training loss became non-finite.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: exit code 2 with this one-line message."""


class DivergedError(Exception):
    """Training produced a non-finite loss: exit code 3."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
