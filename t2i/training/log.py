"""The run's log: the progress bar, the loss components of each report, loss_log.csv and its curve, TensorBoard's
live curves (t2i/training/tensorboard.py), the summary.

`TrainingLog` is what train_step reports to: `components(step, stage)` gives a loss function a dict for its
terms, `report` reads them back from the device (the only place losses are) and writes a row. loss_log.csv has
one row per report interval and one per epoch (step = 'end', the epoch's means), with every loss component by
name (`D/d_loss_real_cond_0`: the discriminator step's real-image conditional term at stage 0; `G/kl`: the
generator step's KL term; ...) and, for evaluated epochs, the evaluation figures. A resumed run drops the rows
of the part it redoes. `plots.plot_loss_curve` draws the file as loss_curve.png.
"""
from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable, Iterator

import torch
from tqdm import tqdm

from t2i import plots
from t2i.checkpoints import LOSS_LOG_FILE
from t2i.files import atomic_write_text
from t2i.training.resume import ResumePoint
from t2i.training.tensorboard import TensorBoardLog

BASE_FIELDS = ["epoch", "step", "seconds", "d_loss", "g_loss"]
EVAL_FIELDS = ["fid", "kid_mean", "is_mean", "clip_score", "course_fid", "course_is"]


class LossLog:
    def __init__(self, path: str, resume_epoch: int | None = None, resume_step: int = 0):
        """A new log, or (resuming at `resume_epoch`, `resume_step`) the old one without the rows to redo."""
        self.path = path
        self.fields = BASE_FIELDS + EVAL_FIELDS
        self.rows: list[dict] = []
        if resume_epoch is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields += [name for name in reader.fieldnames or [] if name not in self.fields]
                self.rows = [row for row in reader if self._before(row, resume_epoch, resume_step)]
        self._rewrite()

    @staticmethod
    def _before(row: dict, epoch: int, step: int) -> bool:
        row_epoch = int(row["epoch"])
        if row_epoch != epoch:
            return row_epoch < epoch
        return row["step"] != "end" and int(row["step"]) < step

    def _rewrite(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())

    def add(self, epoch: int, step: int | str, seconds: float, losses: dict[str, float],
            figures: dict | None = None) -> None:
        """One row: `losses` holds d_loss, g_loss and the components; `figures` the evaluation, if any."""
        row = {"epoch": epoch, "step": step, "seconds": f"{seconds:.2f}"}
        row.update({name: f"{value:.6f}" for name, value in losses.items()})
        row.update({name: figures[name] for name in EVAL_FIELDS if figures and figures.get(name) is not None})
        self.rows.append(row)
        self.fields += [name for name in row if name not in self.fields]
        # Rewritten whole and atomically (the file is small): a kill during a write never leaves half a row.
        self._rewrite()


def best_logged_epoch(checkpoint_path: str, epochs: list[int], figure: str = "course_fid") -> int | None:
    """Of `epochs`, the one whose end-of-epoch row of loss_log.csv has the lowest `figure` (the graders' FID, logged by
    --eval_every with --eval_protocol course); None when none of them has it."""
    path = os.path.join(checkpoint_path, LOSS_LOG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        scores = {int(row["epoch"]): float(row[figure]) for row in csv.DictReader(f)
                  if row["step"] == "end" and row.get(figure) and int(row["epoch"]) in epochs}
    return min(scores, key=scores.get) if scores else None


class TrainingLog:
    """The progress bar and the reports of a run; files only where `writes` (process 0 under torchrun, and not for
    a plain `train_step`). `processes` (torchrun): the reported values are the global batch's. TensorBoard's curves
    (`tensorboard`) plot against the update count of `counts` (the run's StepSettings), beside the learning rates of
    `optimizers` and the skipped steps."""

    def __init__(self, writes: bool = False, processes=None, tensorboard: TensorBoardLog | None = None,
                 optimizers: list[torch.optim.Optimizer] = (), counts=None):
        self.writes = writes
        self.processes = processes
        self.tensorboard = tensorboard or TensorBoardLog()
        self.optimizers = list(optimizers)
        self.counts = counts
        self.loss_log: LossLog | None = None
        self.curve_path: str | None = None
        self.parts: dict[str, dict[str, torch.Tensor]] = {}
        self.epoch = 0
        self.progress: tqdm | None = None
        self.epoch_started = self.run_started = time.time()

    def open(self, checkpoint_path: str, result_path: str, resume: ResumePoint | None) -> None:
        """loss_log.csv in `checkpoint_path` (without the rows a resumed run redoes), its curve's path, and
        TensorBoard's writer (dropping the points a resumed run redoes)."""
        if self.writes:
            self.loss_log = LossLog(os.path.join(checkpoint_path, LOSS_LOG_FILE), resume.epoch if resume else None,
                                    resume.step if resume else 0)
            self.curve_path = os.path.join(result_path, "loss_curve.png")
            self.tensorboard.open(resume)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_started = time.time()

    def steps(self, batches: Iterable, first: int, total: int) -> Iterator[tuple[int, object]]:
        """(step, batch) under the epoch's progress bar (process 0 alone shows one)."""
        self.progress = tqdm(batches, desc=f"epoch {self.epoch}", total=total, initial=first, dynamic_ncols=True,
                             disable=not self.writes)
        for step, batch in enumerate(self.progress, start=first):
            self.parts = {}
            yield step, batch
        self.progress.close()

    def components(self, step_name: str, stage: int | None) -> dict:
        """A dict for a loss function to put its components in; they are logged as `D/name_stage` columns."""
        parts: dict[str, torch.Tensor] = {}
        self.parts[f"{step_name}/{stage}"] = parts
        return parts

    def report(self, step: int, d_loss: torch.Tensor, g_loss: torch.Tensor) -> None:
        """Losses to the progress bar and the loss log: the only place losses are read back to the host."""
        names = ["d_loss", "g_loss"]
        values = [d_loss.detach().float(), g_loss.detach().float()]
        for key, parts in self.parts.items():
            step_name, stage = key.split("/")
            for name, value in parts.items():
                names.append(f"{step_name}/{name}" + (f"_{stage}" if stage != "None" else ""))
                values.append(value.detach().float())
        values = torch.stack(values)
        if self.processes is not None:  # the components are this process's; the log shows the global batch's
            values = self.processes.global_values(values)
        losses = dict(zip(names, values.tolist()))
        if self.progress is not None:
            self.progress.set_postfix(d_loss=f"{losses['d_loss']:.3f}", g_loss=f"{losses['g_loss']:.3f}")
        if self.loss_log is not None:
            self.loss_log.add(self.epoch, step, time.time() - self.epoch_started, losses)
        if self.counts is not None:
            self.tensorboard.report(self.counts.num_updates, losses, self.optimizers, self.counts.skipped)

    def end_epoch(self, epoch: int, d_loss: float, g_loss: float, seconds: float, figures: dict | None,
                  grid_path: str, last: bool) -> None:
        """The epoch's row (its mean losses and evaluation figures), the loss curve, and on TensorBoard the same
        with the epoch's sample grid (`grid_path`); its writer closes after the `last` epoch."""
        if self.loss_log is not None:
            self.loss_log.add(epoch, "end", seconds, {"d_loss": d_loss, "g_loss": g_loss}, figures)
            plots.plot_loss_curve(self.loss_log.path, self.curve_path)
        if self.counts is not None:
            evaluated = {name: figures[name] for name in EVAL_FIELDS if figures and figures.get(name) is not None}
            self.tensorboard.end_epoch(self.counts.num_updates, epoch, {"d_loss": d_loss, "g_loss": g_loss,
                                                                        "seconds": seconds}, evaluated, grid_path, last)

    def summary(self, epochs_run: int, num_updates: int, skipped: int, checkpoint_path: str, result_path: str) -> str:
        return (f"Done: {epochs_run} epoch(s) in {time.time() - self.run_started:.0f}s, {num_updates} updates, "
                f"{skipped} skipped step(s); checkpoints in {checkpoint_path}, samples in {result_path}")
