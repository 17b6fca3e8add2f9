"""The one exception type for bad user input."""


class InvalidInputError(ValueError):
    """A one-line message naming the argument, the value given and what is allowed.

    The CLI turns it into `cm: error: <message>` and exit code 2, without a traceback.
    """
