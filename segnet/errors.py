"""The exceptions of segnet that the CLI prints as one red line: `hedprep.errors.HedsegError`'s
contract (a message naming the file or option, `path`, `exit_code`), shared with hedprep's errors."""

from __future__ import annotations

from hedprep.errors import HedsegError


class SegnetError(HedsegError):
    """A problem with the user's input (a file, a folder, an option, a checkpoint), stated in one line
    that names the file or option; the CLI prints it without a traceback and exits with `exit_code`."""


class SegnetOptionError(SegnetError):
    """An option value that cannot be used (a malformed --schedule, an unknown variant): exit 2."""

    exit_code = 2
