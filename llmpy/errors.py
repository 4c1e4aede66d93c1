"""The one exception type the command line turns into a clean message and a non-zero exit."""


class LlmpyError(ValueError):
    """Bad input the user can fix: the message names the file or value and says what to do."""
