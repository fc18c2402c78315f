"""The errors the command line turns into one line on stderr and an exit status, without a traceback."""


class InputError(ValueError):
    """Bad input from the user: a config value, a path, a data set name.

    The command line prints the message as a single line and exits with status 2. The message says
    what was wrong and what to do about it.
    """

    exit_code = 2


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message names the intact checkpoint.

    Not an InputError: the input was valid and training ran. `ddpm train` exits with status 3.
    """

    exit_code = 3
