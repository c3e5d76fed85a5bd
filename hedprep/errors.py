"""The exceptions that the CLI turns into a single red line, and how an error becomes one line.

`HedsegError` is the base of both packages' errors (hedprep's `HedprepError`, segnet's
`SegnetError`): the CLI and the pipelines catch it alone.
"""

from __future__ import annotations

import os


class HedsegError(Exception):
    """A problem with the user's input (a file, a folder, an option), stated in one line.

    The message names the file or option and the problem; the CLI prints it without a traceback
    and exits with `exit_code`. `path` is the file at fault, where there is one.
    """

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = path


class HedprepError(HedsegError):
    """An error of hedprep (reading images, weights, shards, manifests; building)."""


class OptionError(HedprepError):
    """A command-line option (or the library argument behind it) has a value we cannot use: exit 2,
    as for click's own usage errors."""

    exit_code = 2


def one_line(error: BaseException) -> str:
    """An exception's message on one line (HDF5's span several), without KeyError's added quotes."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(text).split()) or type(error).__name__
