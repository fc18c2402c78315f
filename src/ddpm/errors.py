"""The one exception type that means "the user asked for something we cannot do"."""


class InputError(ValueError):
    """Bad input from the user: a config value, a path, a data set name.

    The command line prints the message as a single line and exits with status 2, without a
    traceback. The message says what was wrong and what to do about it.
    """
