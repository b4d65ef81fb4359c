"""One training per checkpoint folder at a time: a lock file that a second run sees, and that names the first.

`held(checkpoint_path)` is entered by `train.train` before the run reads its folder and left when the run ends,
however it ends. It takes `<checkpoint_path>/training.lock`, a small JSON file naming the holder: its host name
and boot id, its pid and the start time of that process, when the run started, and a heartbeat, the time a thread
of the holder last rewrote the file (every HEARTBEAT_SECONDS). A second run into the same folder finds it and stops
with one line naming the holder. Under torchrun only process 0 takes it.

A lock that is found is stale, and taken over with one printed line, when its holder is known to be gone:
* written on this machine (same host name and boot id): its process is gone, or the pid now belongs to a process
  that started at another time (pids are reused, often soon in a container). This is exact.
* written on this host before it rebooted (same host name, another boot id): its process cannot be running.
* written on another machine, and its heartbeat is older than STALE_SECONDS (10 minutes). Whether a process runs
  on another machine cannot be asked: two Colab sessions that share a Google Drive folder are two VMs. A live run
  rewrites its heartbeat every minute and Drive shows one VM's write to the other within a few minutes, so a
  heartbeat 10 minutes old is no live run's; a disconnected session frees its folder 10 minutes after its last
  heartbeat. The machines' clocks are taken to agree within a minute (Colab's are synchronised).
* unreadable (a holder killed while creating it) and older than a heartbeat.
Anything else is a live run, and `--overwrite` does not change that: it moves a finished run's files aside, never
a running one's.

Taking the lock is exclusive on one machine (the file is created with O_EXCL; a stale one is renamed away first,
so of two runs taking it over at once one wins). Across machines it is as good as the shared folder: Drive can show
two VMs' new files to each other late, so two runs started within that delay may both start. Each heartbeat
therefore re-reads the file, and a run whose lock names another holder stops before it saves again
(`check_held`, called before every save of the training state).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from t2i.errors import T2IError
from t2i.files import (atomic_write_text, make_folder, process_alive, remove_file, remove_stale_temp_files,
                       write_error)

LOCK_FILE = "training.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0

_held: dict[str, RunLock] = {}  # the locks this process holds, by the real path of their folder


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's 22nd field); None where unknown."""
    line = _read_first_line(f"/proc/{pid}/stat")
    if not line:
        return None
    return line.rsplit(")", 1)[-1].split()[19]  # fields after the name, which may hold spaces, start at the 3rd


def identity() -> dict:
    """This process as a lock holder."""
    now = time.time()
    return {"host": socket.gethostname(), "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
            "pid": os.getpid(), "process_start": process_start(os.getpid()), "started": now, "heartbeat": now,
            "command": " ".join(sys.argv), "token": uuid.uuid4().hex}


def read_lock(path: str) -> dict | None:
    """The holder a lock file names; None when it cannot be read (a holder killed while writing it)."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"host", "pid", "started", "heartbeat"} <= set(holder) else None


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def describe(holder: dict) -> str:
    ago = max(time.time() - holder["heartbeat"], 0)
    return (f"host {holder['host']}, pid {holder['pid']}, started {_clock(holder['started'])}, last heartbeat "
            f"{ago:.0f} s ago")


def on_this_machine(holder: dict) -> bool:
    return holder["host"] == socket.gethostname()


def stale_reason(holder: dict | None, path: str) -> str | None:
    """Why the lock in `path` (holding `holder`) is stale, or None when its run may be alive (module docstring)."""
    if holder is None:
        try:
            age = time.time() - os.path.getmtime(path)
        except FileNotFoundError:
            return "it is gone"
        return f"it is unreadable and {age:.0f} s old" if age > HEARTBEAT_SECONDS else None
    if on_this_machine(holder):
        boot_id = _read_first_line("/proc/sys/kernel/random/boot_id")
        if holder.get("boot_id") and boot_id and holder["boot_id"] != boot_id:
            return f"its run ({describe(holder)}) was on this machine before it restarted"
        pid = int(holder["pid"])
        if not process_alive(pid):
            return f"its run ({describe(holder)}) is gone: no process {pid} runs on this machine"
        started = process_start(pid)
        if holder.get("process_start") and started and holder["process_start"] != started:
            return f"its run ({describe(holder)}) is gone: pid {pid} is now another process"
        return None
    age = time.time() - holder["heartbeat"]
    if age > STALE_SECONDS:
        return (f"its run on another machine ({describe(holder)}) is gone: a live run renews its heartbeat every "
                f"{HEARTBEAT_SECONDS:.0f} s")
    return None


def busy_error(folder: str, path: str, holder: dict | None) -> T2IError:
    """The one line for a folder another run holds."""
    if holder is None:
        return T2IError(f"--checkpoint_path {folder}: {path} is being written by another run starting there; wait "
                        f"for it to finish or choose another --checkpoint_path")
    if on_this_machine(holder):
        gone = f"it is taken over as soon as process {holder['pid']} ends"
    else:
        gone = (f"if that session is gone (a closed or disconnected Colab tab), its lock is taken over once its "
                f"heartbeat is {STALE_SECONDS / 60:.0f} minutes old, from {_clock(holder['heartbeat'] + STALE_SECONDS)}, "
                f"or at once if you delete {path}")
    return T2IError(f"--checkpoint_path {folder}: another training is running there ({describe(holder)}; "
                    f"{path}); wait for it to end, stop it, or choose another --checkpoint_path; {gone} "
                    f"(--overwrite never breaks a live run's lock)")


class RunLock:
    """The lock of one checkpoint folder, held by this process (`acquire`), renewed by a heartbeat thread."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.holder = identity()
        self.lost_to: dict | None = None  # the holder that took the lock over while this run still ran
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="training.lock heartbeat", daemon=True)

    def _create(self) -> bool:
        """Create the lock file if none exists (atomically); whether it was created."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.holder) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            remove_file(self.path)
            raise write_error(self.path, err) from None
        return True

    def _take_over(self, holder: dict | None, reason: str) -> None:
        """Move the stale lock (that of `holder`) out of the way. Renaming is atomic: of two runs doing this at
        once, the second finds the file gone, or finds the first's new lock and puts it back."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as err:
            raise T2IError(f"{self.path}: a stale lock ({reason}) that could not be moved away ({err.strerror}); "
                           f"delete it by hand") from None
        moved = read_lock(aside)
        if (moved or {}).get("token") != (holder or {}).get("token"):
            os.rename(aside, self.path)  # another run's fresh lock: not ours to take
            return
        remove_file(aside)
        print(f"Took over {self.path}: {reason}")

    def acquire(self) -> None:
        remove_stale_temp_files(self.folder, lambda name: name == LOCK_FILE)  # a heartbeat cut by a kill
        for _ in range(3):
            if self._create():
                self._thread.start()
                _held[os.path.realpath(self.folder)] = self
                return
            holder = read_lock(self.path)
            reason = stale_reason(holder, self.path)
            if reason is None:
                raise busy_error(self.folder, self.path, holder)
            self._take_over(holder, reason)
        raise busy_error(self.folder, self.path, read_lock(self.path))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            holder = read_lock(self.path)
            if holder is not None and holder.get("token") != self.holder["token"]:
                self.lost_to = holder
                return
            self.holder["heartbeat"] = time.time()
            # A full disk or a lost drive: the next beat tries again, and the run's own writes will say why.
            with contextlib.suppress(T2IError):
                atomic_write_text(self.path, json.dumps(self.holder) + "\n")

    def check(self) -> None:
        """Refuse to go on writing once another run took the lock over (a shared folder's late view)."""
        if self.lost_to is not None:
            raise T2IError(f"--checkpoint_path {self.folder}: another training took this folder over "
                           f"({describe(self.lost_to)}); this run stopped before saving again, so that the two do "
                           f"not mix their files: let one of them run, or give each its own --checkpoint_path")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if it is still this run's)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        _held.pop(os.path.realpath(self.folder), None)
        holder = read_lock(self.path)
        if holder is not None and holder.get("token") == self.holder["token"]:
            remove_file(self.path)


@contextlib.contextmanager
def held(checkpoint_path: str, takes_lock: bool = True) -> Iterator[RunLock | None]:
    """Hold the lock of `checkpoint_path` (making the folder) for the block; `takes_lock` False (torchrun's
    processes other than 0) holds none. On the way out the lock is removed, and the folder too when this run made
    it and left nothing in it (an input refused after the lock was taken)."""
    if not takes_lock:
        yield None
        return
    folder = os.fspath(checkpoint_path)
    made = not os.path.isdir(folder)
    make_folder(folder, "--checkpoint_path")
    lock = RunLock(folder)
    try:
        lock.acquire()
        yield lock
    finally:
        failing = sys.exc_info()[0] is not None
        try:
            lock.release()
            if made and not os.listdir(folder):
                os.rmdir(folder)
        except (T2IError, OSError):
            if not failing:  # the run's own failure says more than a lock left behind
                raise


def check_held(checkpoint_path: str) -> None:
    """`RunLock.check` of the lock this process holds on `checkpoint_path` (none held: nothing to check)."""
    lock = _held.get(os.path.realpath(os.fspath(checkpoint_path)))
    if lock is not None:
        lock.check()
