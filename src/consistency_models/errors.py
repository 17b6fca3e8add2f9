"""The one exception type for bad user input, and the helpers its checks share."""

import numbers
import textwrap


class InvalidInputError(ValueError):
    """A one-line message naming the argument, the value given and what is allowed.

    The CLI turns it into `cm: error: <message>` and exit code 2, without a traceback.
    """


def about(argument: str, exc: InvalidInputError, loader: str | tuple[str, ...] = "model") -> InvalidInputError:
    """`exc` of a loader, said of the argument the user gave its input with: "model: no such folder
    'x'" becomes "teacher: no such folder 'x'" (`loader`: the name or names the loader gives its
    input); a message naming another argument gets `argument` in front."""
    message = str(exc)
    if message.startswith(f"{argument}:"):
        return InvalidInputError(message)
    for name in (loader,) if isinstance(loader, str) else loader:
        if message.startswith(f"{name}: "):
            return InvalidInputError(f"{argument}: {message.removeprefix(f'{name}: ')}")
    return InvalidInputError(f"{argument}: {message}")


def is_integer(value: object) -> bool:
    """True for a Python or NumPy integer (np.int64 from an array counts), False for a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def first_line(exc: BaseException, width: int) -> str:
    """The first line of `exc`'s message for a one-line error, cut between words to at most `width`
    characters ("" when it has none: the caller names the exception's type instead)."""
    text = str(exc).strip()
    return textwrap.shorten(text.splitlines()[0], width, placeholder=" ...") if text else ""
