"""Live training curves for TensorBoard: every loss component, the learning rates, skipped steps, the epoch's
sample grid and the --eval_every figures, as event files in `<checkpoint_path>/tensorboard/`.

The x axis is the number of generator updates (`StepSettings.num_updates`): it is saved in every resume state
and grows across epochs and resumes, whatever the batch size. A resumed run opens its writer with
`purge_step` = the first update it will make, so the points an interrupted run wrote after its last snapshot
are dropped by TensorBoard's readers: the curves continue without duplicate or out-of-order steps.

On by default where the `tensorboard` package is importable (Colab has it; elsewhere it is optional, and one line
says it is missing); `--no-tensorboard` turns it off. Under torchrun only process 0 writes.
"""
from __future__ import annotations

import os
from argparse import Namespace

import numpy as np
import torch
from PIL import Image

from t2i.checkpoints import TENSORBOARD_FOLDER
from t2i.errors import T2IError
from t2i.training.resume import ResumePoint

FLUSH_SECONDS = 10  # how stale the live view may be, and the most a killed run loses (its resume redoes it)


def summary_writer_class() -> type | None:
    """torch's SummaryWriter, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLog:
    """The run's TensorBoard writer; every method does nothing while it is off or not open."""

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir  # None: off
        self.writer = None

    @classmethod
    def for_run(cls, args: Namespace, writes: bool) -> TensorBoardLog:
        """Off in a process that writes no files, with --no-tensorboard, or without the package (one line says so;
        an explicit --tensorboard then stops the run before it writes anything)."""
        if not writes or args.tensorboard is False:
            return cls()
        if summary_writer_class() is None:
            if args.tensorboard:
                raise T2IError("--tensorboard: the tensorboard package is not installed; pip install tensorboard, "
                               "or train with --no-tensorboard")
            print("TensorBoard: not installed, so no live curves (pip install tensorboard to get them); "
                  "loss_log.csv and loss_curve.png are written as always")
            return cls()
        # In the checkpoint folder: it resumes, and is refused or set aside (--overwrite), with the run's files.
        return cls(os.path.join(args.checkpoint_path, TENSORBOARD_FOLDER))

    def open(self, resume: ResumePoint | None) -> None:
        """Start writing; points at or after the first update this run makes are dropped from earlier files."""
        if self.log_dir is None:
            return
        done = resume.state["trainer"]["num_updates"] if resume is not None and resume.state is not None else 0
        self.writer = summary_writer_class()(self.log_dir, purge_step=done + 1, flush_secs=FLUSH_SECONDS)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, path: str, step: int) -> None:
        """A PNG file (a sample grid) as an image."""
        if self.writer is not None:
            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def report(self, step: int, losses: dict[str, float], optimizers: list[torch.optim.Optimizer],
               skipped: int) -> None:
        """One report interval: every loss by its loss_log.csv name (`d_loss` under `loss/`, the components under
        `D/` and `G/`), each optimizer's learning rate, and the steps skipped in this session so far."""
        values = {name if "/" in name else f"loss/{name}": value for name, value in losses.items()}
        values.update(learning_rates(optimizers))
        values["run/skipped_steps"] = skipped
        self.scalars(step, values)

    def end_epoch(self, step: int, epoch: int, means: dict[str, float], figures: dict[str, float], grid_path: str,
                  last: bool) -> None:
        """The epoch's mean losses, its sample grid and evaluation figures, on disk at once; closed after the
        run's last epoch."""
        if self.writer is None:
            return
        values = {f"epoch/{name}": value for name, value in means.items()}
        values.update({f"eval/{name}": value for name, value in figures.items()})
        self.scalars(step, values)
        if os.path.isfile(grid_path):
            self.image("samples", grid_path, step)
        self.writer.flush()
        if last:
            self.writer.close()
            self.writer = None


def learning_rates(optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    """`lr/G` for the first optimizer (the generator's), `lr/D_i` for the others (one per discriminator); the
    first parameter group's rate."""
    names = ["G"] + [f"D_{i}" for i in range(len(optimizers) - 1)]
    return {f"lr/{name}": optimizer.param_groups[0]["lr"] for name, optimizer in zip(names, optimizers)}
