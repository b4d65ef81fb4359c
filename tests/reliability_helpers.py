"""Shared by test_faults.py, test_faults_round3.py and test_silently_wrong.py: tiny training runs, one-line exits
(of training and of preprocessing), folder snapshots, processes waiting at a marked point (to be killed or stopped
there), and writes that fail the way a full disk or a read-only folder makes them fail."""
from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import preprocess as run_preprocessing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(data, checkpoint_path, result_path, clip_path, epochs, *extra, stages=1):
    """A 1-stage run small enough for a CPU test: 22 images, batch 4, Ng 64, Nd 4 (6 steps an epoch)."""
    return ["--train_data", str(data), "--batch_size", "4", "--num_epochs", str(epochs), "--learning_rate", "2e-4",
            "--report_interval", "2", "--noise_dim", "8", "--projection_dim", "8", "--clip_embedding_dim", "512",
            "--checkpoint_path", str(checkpoint_path), "--result_path", str(result_path), "--num_stage", str(stages),
            "--resume_epoch", "-1", "--use_uncond_loss", "--use_contrastive_loss", "--clip_model", str(clip_path),
            "--g_in_chans", "64", "--d_in_chans", "4", "--device", "cpu", *extra]


def one_line_exit(call, *args, **kwargs) -> str:
    """Run a command's main expecting a one-line error exit; return the line (without `error: `)."""
    with pytest.raises(SystemExit) as exit_:
        call(*args, **kwargs)
    line = str(exit_.value.code)
    assert line.startswith("error: ") and "\n" not in line, line
    return line[len("error: "):]


def tree(folder) -> dict:
    """Every file under `folder` (relative path -> size and content hash): equal trees mean nothing changed."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest())
    return found


def copy_folder(source, target) -> str:
    shutil.copytree(source, target)
    return str(target)


def write_mid_epoch_snapshot(folder, from_epoch: int, epoch: int, step: int) -> str:
    """A mid-epoch snapshot (epoch, step) made of epoch `from_epoch`'s files, as --save_every_steps writes one."""
    folder = str(folder)
    state = torch.load(os.path.join(folder, f"epoch_{from_epoch}_state.pt"), weights_only=True)
    state["epoch"], state["step"] = epoch, step
    state["generator"] = torch.load(os.path.join(folder, f"epoch_{from_epoch}_Gen.pt"), weights_only=True)
    state["discriminators"] = [torch.load(os.path.join(folder, f"epoch_{from_epoch}_Dis_0.pt"), weights_only=True)]
    path = os.path.join(folder, "mid_epoch_state.pt")
    torch.save(state, path)
    return path


def poison(path, key: str | None = None) -> None:
    """Put a NaN into the first floating-point tensor of the state dict in `path` (or of its entry `key`)."""
    state = torch.load(path, weights_only=True)

    def first_float(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            return value
        children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
        for child in children:
            found = first_float(child)
            if found is not None:
                return found
        return None

    target = first_float(state[key] if key is not None else state)
    target.view(-1)[0] = float("nan")
    torch.save(state, path)


def fail_writes_under(monkeypatch, folder, code: int = errno.EROFS) -> None:
    """Every write, folder creation, rename and removal under `folder` fails with `code`, as on a read-only or
    full disk. (chmod cannot do it when the tests run as root, which ignores permissions.)"""
    folder = os.path.abspath(folder)

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(folder)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_mkdir, real_replace, real_remove = builtins.open, os.mkdir, os.replace, os.remove

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(flag in mode for flag in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "mkdir",
                        lambda path, *a, **k: refuse(path) if inside(path) else real_mkdir(path, *a, **k))
    monkeypatch.setattr(os, "replace", lambda a, b, *x, **k: refuse(b) if inside(b) else real_replace(a, b, *x, **k))
    monkeypatch.setattr(os, "remove",
                        lambda path, *a, **k: refuse(path) if inside(path) else real_remove(path, *a, **k))


def python(code: str, env: dict | None = None) -> subprocess.Popen:
    """`python -B -c code` in the repository root, with its output captured."""
    return subprocess.Popen([sys.executable, "-B", "-c", code], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def make_checkpoint(folder, num_stage: int, epochs=(0,), seed: int = 0, clip_dim: int = 512) -> str:
    """A checkpoint folder as training writes it (hyperparameter.pt, epoch_N_Gen.pt, epoch_N_Dis_i.pt), tiny
    models, without run_options.json (as the course's code leaves it)."""
    import argparse

    from network import Discriminator, Generator, weight_init
    from train_utils import save_hyp, save_model

    args = argparse.Namespace(clip_embedding_dim=clip_dim, projection_dim=8, noise_dim=8, num_stage=num_stage,
                              use_uncond_loss=True, use_contrastive_loss=True, batch_size=4, num_epochs=3,
                              learning_rate=2e-4, checkpoint_path=str(folder))
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    G = Generator(clip_dim, 8, 8, 64, 3, num_stage, "cpu")
    G.apply(weight_init)
    D_list = [Discriminator(8, 3, 4, 1, clip_dim, s, "cpu") for s in range(num_stage)]
    save_hyp(args, 64, 3, 4, 1)
    for epoch in epochs:
        save_model(args, G, D_list, epoch, num_stage)
    return str(folder)


def write_run_record(folder, clip_identity: dict) -> None:
    """The run_options.json training would write beside the checkpoints, recording the CLIP that made the data."""
    import json

    with open(os.path.join(folder, "run_options.json"), "w") as f:
        json.dump({"options": {}, "clip": clip_identity}, f)


def dead_pid() -> int:
    """The id of a process that has finished."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def wait_for_marker(process: subprocess.Popen, marker, timeout: float = 400) -> None:
    """Wait until `process` has written `marker` (it then waits at a chosen point: inside a save, mid-epoch)."""
    deadline = time.time() + timeout
    while not os.path.exists(marker):
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended before the marked point (status {process.returncode}):\n{out}\n{err}")
        if time.time() > deadline:
            process.kill()
            pytest.fail("the marked point was never reached")
        time.sleep(0.2)


def preprocess_error(argv, split="train") -> str:
    """The preprocessing command's error line (printed to stderr by the course's `error`, exit status 1)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        run_preprocessing(argv, split)
    assert exit_.value.code == 1
    text = stderr.getvalue()
    assert "Traceback" not in text and text.count("error: ") == 1, text
    line = text.strip().splitlines()[-1]
    assert line.startswith("error: "), text
    return line[len("error: "):]
