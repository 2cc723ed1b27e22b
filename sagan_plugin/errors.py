"""The error type the command line turns into a one-line message and exit code 2, and the
warning type it prints as one line."""


class UsageError(Exception):
    """Bad input from the user: an unknown name, a bad override, a missing file, a wrong shape.

    The message is one line that says what was wrong and what is expected.
    """

    exit_code = 2


class PluginWarning(UserWarning):
    """Something the user should know that does not stop the command (few images for FID, a
    skipped file). The command line prints it as `warning: message`, without a source line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries append advice and tracebacks), or
    its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
