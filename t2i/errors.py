"""The errors users see (a bad input, a stop), the one-line message of a failed file operation, and the one-line
exit of a script."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
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


# What an OSError's errno means to a user, and what to do about it.
WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", "free some space and run again"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space and run again"),
    errno.EROFS: ("the folder is on a read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.EFBIG: ("the file is larger than this system allows", "free some space or choose another disk"),
    errno.ENOENT: ("a folder on its path does not exist (was the drive unmounted?)",
                   "check that the folder exists and run again"),
    errno.ENOTDIR: ("a part of its path is a file, not a folder", "choose another path"),
    errno.EEXIST: ("a file of that name is in the way", "choose another path"),
    errno.EISDIR: ("it is a folder", "choose a file name"),
    errno.EIO: ("an input/output error (a lost network drive?)", "check the drive and run again"),
}

# Files of a training run's checkpoints: where a full disk can also be helped by --keep_last.
CHECKPOINT_FILE = re.compile(r"(epoch_\d+_.*|mid_epoch_state)\.pt")

# Below this many free bytes a disk counts as full (a failed write's partial file is still on it when checked).
FULL_DISK_BYTES = 16 * 1024 ** 2


def original_error(err: BaseException) -> BaseException:
    """The error behind `err`: torch's zip writer turns an exception of the file's write (a full disk, Ctrl-C) into
    a RuntimeError ("unexpected pos") whose __context__ holds it."""
    while isinstance(err, RuntimeError) and err.__context__ is not None:
        err = err.__context__
    return err


def disk_is_full(path: str) -> bool:
    """Whether the disk holding `path` has (almost) no free space left."""
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < FULL_DISK_BYTES
    except OSError:
        return False


def cause_and_remedy(err: BaseException, path: str | None = None) -> tuple[str, str]:
    """What the operating system said went wrong (`err`, an OSError or torch's writer's RuntimeError), in words,
    and what to do about it."""
    err = original_error(err)
    code = getattr(err, "errno", None)
    # torch's writer without the error behind it: a full disk only if the disk is full.
    if code is None and "unexpected pos" in str(err) and path and disk_is_full(path):
        code = errno.ENOSPC
    if code in WRITE_FAILURES:
        cause, remedy = WRITE_FAILURES[code]
        if code in (errno.ENOSPC, errno.EDQUOT) and path and CHECKPOINT_FILE.fullmatch(os.path.basename(path)):
            remedy += " (--keep_last K keeps only the newest K epochs)"
        return cause, remedy
    text = getattr(err, "strerror", None) or (str(err).splitlines()[0] if str(err) else "")
    return f"{type(err).__name__}: {text}", "check the folder and run again"


def write_error(path: str, err: BaseException) -> T2IError:
    """A one-line T2IError for a failed write of `path`."""
    cause, remedy = cause_and_remedy(err, path)
    return T2IError(f"{path}: could not be written ({cause}); the previous file, if any, is unchanged; {remedy}")


def os_error(err: OSError, action: str | None = None, where: str | None = None) -> T2IError:
    """A one-line T2IError for any OSError: the file it names (`where` when it names none), the cause and what to
    do."""
    name = err.filename if err.filename is not None else where or "a file operation"
    cause, remedy = cause_and_remedy(err, None if err.filename is None else str(name))
    return T2IError(f"{name}: {action} ({cause}); {remedy}" if action else f"{name}: {cause}; {remedy}")


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
        raise SystemExit(f"error: {os_error(err)}") from None
