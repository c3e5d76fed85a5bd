"""The exceptions of segnet that the CLI prints as one red line (the same contract as hedprep's)."""

from __future__ import annotations

import os


class SegnetError(Exception):
    """A problem with the user's input (a file, a folder, an option, a checkpoint), stated in one line
    that names the file or option; the CLI prints it without a traceback and exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = path


class SegnetOptionError(SegnetError):
    """An option value that cannot be used (a malformed --schedule, an unknown variant): exit 2."""

    exit_code = 2
