"""The one exception type that the CLI turns into a single red line."""


class HedprepError(Exception):
    """A problem with the user's input (a file, a folder, an option), stated in one line.

    The message names the file or option and the problem; the CLI prints it without a traceback
    and exits non-zero.
    """
