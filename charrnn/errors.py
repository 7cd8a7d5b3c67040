"""The exceptions library code raises for problems a user can fix, and the training interrupt.

Every one of them is a `CharRNNError`, so `except charrnn.CharRNNError` catches them all; the
subclasses say which kind of problem it is, for programs that react differently to each.
"""


class CharRNNError(Exception):
    """A problem with the user's input, files or settings.

    The message is shown to the user as one line, so it names the file or flag at fault and a fix.
    `exit_code` is 1 for bad input and 2 for bad usage (flag values), as the CLI conventions say.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(CharRNNError):
    """A text or file given to read cannot be used: missing, unreadable, undecodable, too short,
    or with characters outside the model's vocabulary."""


class UnknownCharacters(InputError):
    """A text has characters outside the model's vocabulary (and --unknown did not say what to do)."""


class CheckpointError(CharRNNError):
    """A run or checkpoint cannot be loaded: no such folder, not charrnn's, incomplete, damaged,
    or written by a newer charrnn."""


class UsageError(CharRNNError, ValueError):
    """An argument's value is out of its range or not one of its choices (exit code 2)."""

    exit_code = 2


def os_error_message(e: OSError) -> str:
    """One line for a file that could not be read or written: disk full, read-only, permissions, gone."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}; check the path, its permissions and free space"


class Interrupted(Exception):
    """Stopped by a signal (training after saving, or the server after its grace period); carries
    the shell exit code (130 or 143)."""

    def __init__(self, exit_code: int):
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
