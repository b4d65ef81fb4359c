"""loss_log.csv beside the checkpoints, and its picture.

One row per report interval and one per epoch (step = 'end', the epoch's means), with every loss component by
name (`D/d_loss_real_cond_0`: the discriminator step's real-image conditional term at stage 0; `G/kl`: the
generator step's KL term; ...) and, for evaluated epochs, the evaluation figures. A resumed run drops the rows
of the part it redoes. `plots.plot_loss_curve` draws the file as loss_curve.png.
"""
from __future__ import annotations

import csv
import io
import os

from t2i.files import atomic_write_text

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
