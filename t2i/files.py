"""Reading and writing files so that nothing is lost and every failure says what happened.

* Writes go to a temporary name beside the target (`<name>.tmp-<pid>`), are flushed to disk, then renamed over
  the target: a rename within one folder is atomic, so the target always holds either the old file or the new
  one, whatever interrupts the write (a Colab disconnect, `kill -9`, a full disk). A write that fails removes
  its temporary file and raises a T2IError naming the file and the cause (full disk, read-only folder, ...); a
  stop (Ctrl-C) during it removes the temporary file too and raises `Interrupted` naming the file. The cause is
  the operating system's: "the disk is full" only when it said so, or, for torch's writer (which hides the error
  of its write), when the disk has no free space left.
  Folders are made, files moved and removed through `make_folder`, `move_file` and `remove_file`, which fail
  the same way.
* Temporary files that an interrupted process could not remove are "stale"; `remove_stale_temp_files` deletes
  those of names we write (and of processes that are gone), and nothing else.
* `read_torch_file` is the one `torch.load(..., weights_only=True)` of the package: a missing, empty,
  truncated or foreign file, or one holding a whole pickled model, each gets its own one-line message.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import BinaryIO

import torch

from t2i.errors import Interrupted, T2IError, cause_and_remedy, original_error, os_error, write_error

TEMP_PATTERN = re.compile(r"(?P<target>.+)\.tmp-(?P<pid>\d+)")

def temp_path(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary file, then rename it to `path` (see the module docstring)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, KeyboardInterrupt) as err:
        if isinstance(original_error(err), KeyboardInterrupt):
            raise Interrupted(f"{path}: stopped while being written; the previous file, if any, is unchanged and "
                              f"the partial one removed") from None
        raise write_error(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: object, path: str) -> None:
    """`torch.save(obj, path)`, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def make_folder(path: str, flag: str | None = None) -> None:
    """`os.makedirs(path, exist_ok=True)`, or a T2IError naming the folder (and the flag that gave it)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        cause, remedy = cause_and_remedy(err)
        if os.path.exists(path) and not os.path.isdir(path):
            cause, remedy = "a file of that name is in the way", "give a folder"
        label = f"{flag} {path}" if flag else path
        raise T2IError(f"{label}: the folder could not be made ({cause}); {remedy}") from None


def remove_file(path: str) -> None:
    """Delete `path` (absent is fine), or a T2IError naming it."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise os_error(err, "could not be deleted") from None


def move_file(source: str, target: str) -> None:
    """Rename `source` to `target` (same file system), or a T2IError naming it."""
    try:
        os.replace(source, target)
    except OSError as err:
        cause, remedy = cause_and_remedy(err)
        raise T2IError(f"{source}: could not be moved to {target} ({cause}); {remedy}") from None


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine. This process counts as gone: its own temporary files (and its
    own lock) are never in flight where this is asked."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def remove_stale_temp_files(folder: str, ours: Callable[[str], bool]) -> list[str]:
    """Delete `<name>.tmp-<pid>` files in `folder` whose `<name>` is one we write (`ours(name)`) and whose process
    is gone; return them. Files of other names, and those of a process still running (a second run writing into
    the same folder), are kept.

    Called where no write of ours is in flight (the start of a run, after an epoch's files are saved)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        match = TEMP_PATTERN.fullmatch(name)
        if match and ours(match.group("target")) and not process_alive(int(match.group("pid"))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise T2IError(f"{path}: a stale temporary file that could not be removed "
                               f"({err.strerror}); delete it by hand") from None
            removed.append(path)
    return removed


def torch_file_problem(path: str) -> str | None:
    """Why `path` cannot be read by torch.load (`empty`, `truncated`, ...), or None when it reads. For messages
    about files that a library loads itself (torch.hub's cache)."""
    try:
        read_torch_file(path, "PyTorch", "")
    except T2IError as err:
        text = str(err)
        for cause in ("empty", "truncated", "whole pickled object", "not a PyTorch"):
            if cause in text:
                return {"not a PyTorch": "not a PyTorch file", "whole pickled object": "a pickled object"}.get(
                    cause, cause)
        return "unreadable"
    return None


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


def human_size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    exponent = min(int(math.log(num_bytes, 1024)), 3)
    return f"{num_bytes / 1024 ** exponent:.1f} {('B', 'KB', 'MB', 'GB')[exponent]}"
