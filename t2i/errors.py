"""The one error type users see, and how a script turns it into a one-line exit."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


class T2IError(Exception):
    """Bad input, or a run that cannot go on. The message is one line: the file or flag, what is wrong, and
    what to do about it."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside a script's main: a T2IError ends the program with `error: <message>` (exit status 1), no traceback.
    So does an OSError that no code turned into a T2IError (a full disk, a lost drive): it names its file."""
    try:
        yield
    except T2IError as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:
        from t2i.files import os_error  # files imports this module

        raise SystemExit(f"error: {os_error(err)}") from None
