"""The package's error for bad user input (files, flags, data)."""


class InputError(ValueError):
    """A user-supplied file or value is wrong; the message names it and says what is wrong.

    Tools print the message as one line and exit non-zero; library callers can catch it.
    """
