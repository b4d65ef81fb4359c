"""Where a run continues, and what it needs to continue exactly.

`--resume_checkpoint_path DIR --resume_epoch N` continues after complete epoch N; `--resume_epoch latest` after
the newest complete epoch, or from the mid-epoch snapshot (`--save_every_steps`) when that is newer and was made
by as many processes as this run has (torchrun; otherwise the newest complete epoch). Epoch N's
weights are the contract's files; `epoch_N_state.pt` adds the optimizers, gradient scalers, RNG states and the
raw generator (when the saved one is the EMA), so the resumed run equals an uninterrupted one tensor for tensor.
Everything here is checked before the run writes its first file.
"""
from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import dataclass, field

import torch.nn as nn

from t2i import checkpoints, distributed, options
from t2i.errors import T2IError


@dataclass
class ResumePoint:
    epoch: int          # the epoch to run next
    step: int           # the first batch of that epoch still to run
    state: dict | None  # the training state; None when only the weights exist (a run of the course's code)
    source: str         # for messages
    snapshot: bool      # the weights are inside `state` (a mid-epoch snapshot), not in epoch files
    changes: list[str] = field(default_factory=list)  # options given other values than the resumed run's

    def load_snapshot_weights(self, G: nn.Module, D_list: list[nn.Module]) -> None:
        try:
            G.load_state_dict(self.state["generator"])
            for D, weights in zip(D_list, self.state["discriminators"]):
                D.load_state_dict(weights)
        except RuntimeError:
            raise T2IError(f"{self.source}: made with other hyperparameters than this run ("
                           f"{checkpoints.describe_mismatch(G, self.state['generator'])}); resume with the flags "
                           f"it was made with, or from a complete epoch") from None


def find_resume_point(args: Namespace) -> ResumePoint | None:
    """Where to continue (None: a fresh run). A model option other than the resumed run's is refused here,
    before any weights are read, naming the option."""
    resume = _find(args)
    if resume is not None:
        record = checkpoints.read_run_record(args.resume_checkpoint_path)
        if record is not None:
            resume.changes = options.compare_with_saved(record["options"], args)
    return resume


def _find(args: Namespace) -> ResumePoint | None:
    path, requested = args.resume_checkpoint_path, args.resume_epoch
    if path is None or requested == -1:
        return None
    if not os.path.isdir(path):
        if requested == "latest":  # the notebook's first session: nothing to resume yet
            print(f"No checkpoint folder {path} yet: starting from scratch")
            return None
        raise T2IError(f"--resume_checkpoint_path {path}: no such folder")
    epochs = checkpoints.complete_epochs(path, args.num_stage)
    mid_path = os.path.join(path, checkpoints.MID_EPOCH_FILE)
    if requested == "latest":
        mid_state = checkpoints.read_training_state(mid_path) if os.path.isfile(mid_path) else None
        if mid_state is not None and (not epochs or mid_state["epoch"] > epochs[-1]):
            made_by, world_size = mid_state.get("world_size", 1), distributed.world_size()
            if made_by == world_size:
                return ResumePoint(mid_state["epoch"], mid_state["step"], mid_state,
                                   f"the mid-epoch snapshot {mid_path}", snapshot=True)
            # Each process's share of the epoch depends on their number: the position does not carry over.
            print(f"{mid_path} was made by {made_by} process(es) and this run has {world_size}: an epoch cannot go on "
                  f"mid-way with another number of processes, so training continues after the last complete epoch")
        if not epochs:
            print(f"No checkpoint in {path} yet: starting from scratch")
            return None
        requested = epochs[-1]
    elif requested + 1 >= args.num_epochs:
        raise T2IError(f"--num_epochs {args.num_epochs}: epochs 0-{requested} are done already, so there is nothing "
                       f"to train; raise --num_epochs above {requested + 1}")
    epoch = int(requested)
    if epoch not in epochs:
        raise T2IError(f"--resume_epoch {epoch}: {path} has no complete epoch {epoch} "
                       f"(complete epochs: {epochs or 'none'})")
    state_path = checkpoints.state_file(path, epoch)
    state = checkpoints.read_training_state(state_path) if os.path.isfile(state_path) else None
    return ResumePoint(epoch + 1, 0, state, f"epoch {epoch} in {path}", snapshot=False)


def check_output_folder(args: Namespace, resume: ResumePoint | None) -> None:
    """Refuse to mix a fresh run into a folder that holds another run's epochs, unless --overwrite."""
    existing = checkpoints.complete_epochs(args.checkpoint_path, args.num_stage)
    resuming_here = resume is not None and os.path.abspath(args.resume_checkpoint_path) == os.path.abspath(
        args.checkpoint_path)
    if existing and not resuming_here and not args.overwrite:
        raise T2IError(f"--checkpoint_path {args.checkpoint_path} already holds epochs {existing}; resume with "
                       f"--resume_checkpoint_path {args.checkpoint_path} --resume_epoch latest, choose another "
                       f"folder, or pass --overwrite")
