"""The one exception type for bad user input, and the integer test its checks share."""

import numbers


class InvalidInputError(ValueError):
    """A one-line message naming the argument, the value given and what is allowed.

    The CLI turns it into `cm: error: <message>` and exit code 2, without a traceback.
    """


def about(argument: str, exc: InvalidInputError, loader: str = "model") -> InvalidInputError:
    """`exc` of a loader, said of the argument the user gave its input with: "model: no such folder
    'x'" becomes "teacher: no such folder 'x'" (`loader`: the name the loader gives its input); a
    message naming another argument gets `argument` in front."""
    message = str(exc)
    if message.startswith(f"{argument}:"):
        return InvalidInputError(message)
    return InvalidInputError(f"{argument}: {message.removeprefix(f'{loader}: ')}")


def is_integer(value: object) -> bool:
    """True for a Python or NumPy integer (np.int64 from an array counts), False for a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
