"""The errors users see (a bad input, a stop), and how a script turns them into a one-line exit."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

# The exit status of a program stopped by SIGINT (Ctrl-C, Colab's stop button): 128 + 2, the shells' convention.
INTERRUPTED_STATUS = 130


class T2IError(Exception):
    """Bad input, or a run that cannot go on. The message is one line: the file or flag, what is wrong, and
    what to do about it."""


class Interrupted(KeyboardInterrupt):
    """A stop (Ctrl-C, Colab's stop button) with one line saying what it interrupted and what is left. Still a
    KeyboardInterrupt: code that lets an interrupt through lets this through."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside a script's main: a T2IError ends the program with `error: <message>` (exit status 1), no traceback.
    So does an OSError that no code turned into a T2IError (a full disk, a lost drive): it names its file. A stop
    (KeyboardInterrupt) ends it with `stopped: <what it interrupted>` and exit status 130."""
    try:
        yield
    except KeyboardInterrupt as err:
        print(f"stopped: {str(err) or 'interrupted (Ctrl-C or the stop button)'}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_STATUS) from None
    except T2IError as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:
        from t2i.files import os_error  # files imports this module

        raise SystemExit(f"error: {os_error(err)}") from None
