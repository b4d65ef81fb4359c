"""The one error type users see, the one-line message of a failed file operation, and the one-line exit."""
from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class T2IError(Exception):
    """Bad input, or a run that cannot go on. The message is one line: the file or flag, what is wrong, and
    what to do about it."""


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


def cause_and_remedy(err: BaseException, path: str | None = None) -> tuple[str, str]:
    code = getattr(err, "errno", None)
    if code is None and "unexpected pos" in str(err):  # torch's zip writer hitting a full disk
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


def os_error(err: OSError, action: str | None = None) -> T2IError:
    """A one-line T2IError for any OSError: the file it names, the cause and what to do."""
    name = err.filename if err.filename is not None else "a file operation"
    cause, remedy = cause_and_remedy(err, None if err.filename is None else str(name))
    return T2IError(f"{name}: {action} ({cause}); {remedy}" if action else f"{name}: {cause}; {remedy}")


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside a script's main: a T2IError ends the program with `error: <message>` (exit status 1), no traceback.
    So does an OSError that no code turned into a T2IError (a full disk, a lost drive): it names its file."""
    try:
        yield
    except T2IError as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:
        raise SystemExit(f"error: {os_error(err)}") from None
