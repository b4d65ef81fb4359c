"""Reading and writing files so that nothing is lost and every failure says what happened.

* Writes go to a temporary name beside the target (`<name>.tmp-<pid>`), are flushed to disk, then renamed over
  the target: a rename within one folder is atomic, so the target always holds either the old file or the new
  one, whatever interrupts the write (a Colab disconnect, `kill -9`, a full disk). A write that fails removes
  its temporary file and raises a T2IError naming the file and the cause (full disk, read-only folder, ...).
* Temporary files that an interrupted process could not remove are "stale"; `remove_stale_temp_files` deletes
  those of names we write, and nothing else.
* `read_torch_file` is the one `torch.load(..., weights_only=True)` of the package: a missing, empty,
  truncated or foreign file, or one holding a whole pickled model, each gets its own one-line message.
"""
from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Callable
from typing import BinaryIO

import torch

from t2i.errors import T2IError

TEMP_PATTERN = re.compile(r"(?P<target>.+)\.tmp-\d+")

# What an OSError's errno means to a user, and what to do about it.
WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", "free some space (or use --keep_last) and run again"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space (or use --keep_last) and run again"),
    errno.EROFS: ("the folder is on a read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.EFBIG: ("the file is larger than this system allows", "free some space or choose another disk"),
}


def temp_path(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def write_error(path: str, err: BaseException) -> T2IError:
    """A one-line T2IError for a failed write of `path`."""
    code = getattr(err, "errno", None)
    if code is None and "unexpected pos" in str(err):  # torch's zip writer hitting a full disk
        code = errno.ENOSPC
    cause, remedy = WRITE_FAILURES.get(code, (f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                                              "check the folder and run again"))
    return T2IError(f"{path}: could not be written ({cause}); the previous file, if any, is unchanged; {remedy}")


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary file, then rename it to `path` (see the module docstring)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        raise write_error(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: object, path: str) -> None:
    """`torch.save(obj, path)`, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temp_files(folder: str, ours: Callable[[str], bool]) -> list[str]:
    """Delete `<name>.tmp-<pid>` files in `folder` whose `<name>` is one we write (`ours(name)`); return them.

    Called where no write of ours is in flight (the start of a run, after an epoch's files are saved)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        match = TEMP_PATTERN.fullmatch(name)
        if match and ours(match.group("target")):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
            except OSError as err:
                raise T2IError(f"{path}: a stale temporary file that could not be removed "
                               f"({err.strerror}); delete it by hand") from None
            removed.append(path)
    return removed


def read_torch_file(path: str, what: str, remedy: str) -> object:
    """`torch.load(path, map_location="cpu", weights_only=True)`, or a T2IError that names the cause.

    `what` says what the file should be ("checkpoint", "CLIP weights", ...), `remedy` what to do when it is
    damaged ("resume from an earlier epoch", ...)."""
    if not os.path.exists(path):
        raise T2IError(f"{path}: no such file")
    if os.path.isdir(path):
        raise T2IError(f"{path}: is a folder, not a {what} file")
    if os.path.getsize(path) == 0:
        raise T2IError(f"{path}: the file is empty (an interrupted write or download leaves such files); "
                       f"delete it and {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here; each is classified below
        message = str(err)
        if "Unsupported global" in message:
            raise T2IError(f"{path}: holds a whole pickled object, not plain tensors (it was saved with "
                           f"torch.save(model) rather than torch.save(model.state_dict())); load it in your own "
                           f"code and save its state_dict() instead") from None
        if "central directory" in message or isinstance(err, EOFError):
            raise T2IError(f"{path}: the file is truncated (its end is missing: an interrupted write or copy); "
                           f"{remedy}") from None
        raise T2IError(f"{path}: not a PyTorch {what} file ({type(err).__name__}); {remedy}") from None


def nonfinite_tensors(state: dict) -> list[str]:
    """The keys of floating-point tensors in `state` that hold NaN or Inf."""
    return [key for key, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def human_size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    exponent = min(int(math.log(num_bytes, 1024)), 3)
    return f"{num_bytes / 1024 ** exponent:.1f} {('B', 'KB', 'MB', 'GB')[exponent]}"
