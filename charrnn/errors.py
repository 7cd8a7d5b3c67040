"""The one exception type library code raises for problems a user can fix."""


class CharRNNError(Exception):
    """A problem with the user's input, files or settings.

    The message is shown to the user as one line, so it names the file or flag at fault and a fix.
    `exit_code` is 1 for bad input and 2 for bad usage (flag values), as the CLI conventions say.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(Exception):
    """Training stopped by a signal after saving; carries the shell exit code (130 or 143)."""

    def __init__(self, exit_code: int):
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
