"""The one error type the command line turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: an unknown name, a bad override, a missing file, a wrong shape.

    The message is one line that says what was wrong and what is expected.
    """

    exit_code = 2


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries append advice and tracebacks), or
    its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
