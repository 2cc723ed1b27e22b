"""The error types the command line turns into a one-line message (exit code 2 for bad input,
1 for a command that failed on good input), and the warning type it prints as one line."""

import os
import sys
import warnings

# A module's __file__ and its frames' co_filename: the same path, as it was imported.
_PACKAGE = os.path.dirname(__file__) + os.sep


class UsageError(Exception):
    """Bad input from the user: an unknown name, a bad override, a missing file, a wrong shape.

    The message is one line that says what was wrong and what is expected.
    """

    exit_code = 2


class CommandFailed(Exception):
    """Good input, yet the command could not do its job (an export that does not reproduce its
    generator). The message is one line that says what failed."""

    exit_code = 1


class PluginWarning(UserWarning):
    """Something the user should know that does not stop the command (few images for FID, a
    skipped file). The command line prints it as `warning: message`, without a source line."""


def warn(message: str, *, every_rank: bool = False) -> None:
    """Warn with a PluginWarning that points at the first caller outside this package (the
    user's call), however deep in the package it is raised. (Python 3.12's skip_file_prefixes
    does this; the package runs on 3.11.)

    Under torchrun only rank 0 warns: the ranks read the same files and take the same
    decisions, which should read as one warning, not one per GPU. `every_rank` is for what a
    rank alone sees (an image file its own batches hit).
    """
    if not every_rank and os.environ.get("RANK", "0") != "0":
        return
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, PluginWarning, stacklevel=level)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries append advice and tracebacks), or
    its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
