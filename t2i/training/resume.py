"""Where a run continues, and what it may do to the folders it writes.

`--resume_checkpoint_path DIR --resume_epoch N` continues after complete epoch N; `--resume_epoch latest` after
the newest complete epoch, or from the mid-epoch snapshot (`--save_every_steps`) when that is newer and was made
by as many processes as this run has (torchrun; otherwise the newest complete epoch). Epoch N's weights are the
contract's files; `epoch_N_state.pt` (t2i/training/state.py) holds what continues the run exactly.

A run never mixes its files with another run's, and never loses one: a fresh run refuses a folder that holds
another run's files, and so does a resume of epoch K while the folder holds later epochs (their files, log
rows and hyperparameter.pt would be replaced). With `--overwrite` those files are moved into a
`previous_run_<time>/` subfolder first, nothing is deleted (`OutputFolders.prepare`). A resume never starts afresh
over epochs of another configuration (files of a run with another --num_stage, which are no complete epoch of
this one): they are refused by name, or moved aside with `--overwrite`.

Everything here is checked before the run writes its first file. A stop (Ctrl-C, Colab's stop button) ends the
run with one line saying what is saved and the command that continues (`explain_stop`).
"""
from __future__ import annotations

import contextlib
import json
import os
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch.nn as nn

from t2i import checkpoints
from t2i.errors import Interrupted, T2IError
from t2i.files import atomic_write_text, make_folder, remove_file
from t2i.training import distributed, options


@dataclass
class ResumePoint:
    epoch: int          # the epoch to run next
    step: int           # the first batch of that epoch still to run
    state: dict | None  # the training state; None when only the weights exist (a run of the course's code)
    source: str         # for messages
    snapshot: bool      # the weights are inside `state` (a mid-epoch snapshot), not in epoch files
    record: dict | None = None                          # run_options.json of the resumed run, when it has one
    changes: list[str] = field(default_factory=list)    # options changed since then ('--lam: 10.0 -> 0.0')
    unusable_snapshot: bool = False                     # a newer snapshot made by another number of processes

    def load_snapshot_weights(self, G: nn.Module, D_list: list[nn.Module]) -> None:
        try:
            G.load_state_dict(self.state["generator"])
            for D, weights in zip(D_list, self.state["discriminators"]):
                D.load_state_dict(weights)
        except RuntimeError:
            raise T2IError(f"{self.source}: made with other hyperparameters than this run ("
                           f"{checkpoints.describe_mismatch(G, self.state['generator'])}); resume with the flags "
                           f"it was made with, or from a complete epoch") from None


def _nothing_to_train(args: Namespace, path: str, last: int) -> T2IError:
    return T2IError(f"--num_epochs {args.num_epochs}: epochs 0-{last} of {path} are done already, so there is "
                    f"nothing to train (and nothing was changed); raise --num_epochs above {last + 1} to train more")


def saved_num_stage(path: str) -> tuple[int | None, str]:
    """The stage count of the run whose files are in `path`, and where it was read: run_options.json, else
    hyperparameter.pt, else the discriminator files of its newest epoch (None: unknown)."""
    record = checkpoints.read_run_record(path)
    if record is not None and isinstance(record.get("options", {}).get("num_stage"), int):
        return record["options"]["num_stage"], f"its {checkpoints.RUN_OPTIONS_FILE}"
    try:
        return int(checkpoints.read_hyperparameters(path)["num_stage"]), f"its {checkpoints.HYPERPARAMETER_FILE}"
    except (T2IError, ValueError, TypeError):
        pass
    epochs = checkpoints.epochs_on_disk(path)
    stages = 0
    while epochs and os.path.isfile(checkpoints.discriminator_file(path, epochs[-1], stages)):
        stages += 1
    return (stages, f"the discriminator files of its epoch {epochs[-1]}") if stages else (None, "")


def other_stage_count(path: str, num_stage: int) -> tuple[list[int], int, str] | None:
    """(its epochs, its stage count, where that was read) of a run in `path` with another stage count than
    `num_stage`; None when `path` holds no epoch file, or those of a run with this stage count."""
    found = checkpoints.epochs_on_disk(path)
    saved, source = saved_num_stage(path) if found else (None, "")
    return (found, saved, source) if saved is not None and saved != num_stage else None


def other_configuration(args: Namespace, path: str) -> bool:
    """Called where `path` holds no complete epoch for --num_stage: refuse to start afresh over the epochs of a run
    with another stage count; True when --overwrite lets this run move them aside and start afresh instead. False
    when there are none (the folder is empty, or holds this configuration's first, interrupted save)."""
    other = other_stage_count(path, args.num_stage)
    if other is None:
        return False
    found, num_stage, source = other
    what = f"epochs {found} of a run with num_stage {num_stage} ({source})"
    same = os.path.realpath(path) == os.path.realpath(args.checkpoint_path)
    if same and args.overwrite:
        print(f"--overwrite: {path} holds {what}; they are moved aside and this run starts afresh")
        return True
    overwrite = ", or pass --overwrite to move them into a previous_run_<time> subfolder and start afresh"
    raise T2IError(f"--num_stage {args.num_stage}: {path} holds {what}, none complete for {args.num_stage} stage(s), "
                   f"so this run would start afresh over them; resume with --num_stage {num_stage}, write to another "
                   f"--checkpoint_path{overwrite if same else ''}")


def find_resume_point(args: Namespace) -> ResumePoint | None:
    """Where to continue (None: a fresh run). Refuses, before anything is written, a point that does not exist,
    a run with nothing left to train, epochs of another configuration, files holding NaN or Inf, and options the
    saved weights cannot take."""
    path, requested = args.resume_checkpoint_path, args.resume_epoch
    unusable_snapshot = False
    if path is None or requested == -1:
        return None
    if not os.path.isdir(path):
        if requested == "latest":  # the notebook's first session: nothing to resume yet
            print(f"No checkpoint folder {path} yet: starting from scratch")
            return None
        raise T2IError(f"--resume_checkpoint_path {path}: no such folder")
    epochs = checkpoints.complete_epochs(path, args.num_stage)
    mid_path = os.path.join(path, checkpoints.MID_EPOCH_FILE)
    resume = None
    if requested == "latest":
        mid_state = checkpoints.read_training_state(mid_path) if os.path.isfile(mid_path) else None
        if mid_state is not None and (not epochs or mid_state["epoch"] > epochs[-1]):
            made_by, world_size = mid_state.get("world_size", 1), distributed.world_size()
            if made_by == world_size:
                resume = ResumePoint(mid_state["epoch"], mid_state["step"], mid_state,
                                     f"the mid-epoch snapshot {mid_path}", snapshot=True)
                if resume.epoch >= args.num_epochs:
                    raise _nothing_to_train(args, path, resume.epoch - 1)
            else:  # each process's share of an epoch depends on their number: the position does not carry over
                print(f"{mid_path} was made by {made_by} process(es) and this run has {world_size}: an epoch cannot "
                      f"go on mid-way with another number of processes, so training continues after the last "
                      f"complete epoch (the snapshot is kept in a previous_run_<time> subfolder)")
                unusable_snapshot = True
        if resume is None:
            if not epochs:
                if not other_configuration(args, path):
                    print(f"No checkpoint in {path} yet: starting from scratch")
                return None
            requested = epochs[-1]
    if resume is None:
        epoch = int(requested)
        if not epochs and other_configuration(args, path):
            return None
        if epoch not in epochs:
            raise T2IError(f"--resume_epoch {epoch}: {path} has no complete epoch {epoch} "
                           f"(complete epochs: {epochs or 'none'})")
        if epoch + 1 >= args.num_epochs:
            raise _nothing_to_train(args, path, epoch)
        state_path = checkpoints.state_file(path, epoch)
        state = (checkpoints.read_clean_training_state(state_path, args.num_stage) if os.path.isfile(state_path)
                 else None)
        resume = ResumePoint(epoch + 1, 0, state, f"epoch {epoch} in {path}", snapshot=False,
                             unusable_snapshot=unusable_snapshot)
    elif resume.snapshot:
        checkpoints.refuse_nonfinite(resume.state, mid_path, args.num_stage)
    resume.record = checkpoints.read_run_record(path)
    if resume.record is not None:  # a model option that differs is refused here, by name
        resume.changes = options.compare_with_saved(resume.record.get("options", {}), args)
    return resume


def continues_in_place(args: Namespace, resume: ResumePoint | None) -> bool:
    """Whether the run continues the run already in --checkpoint_path (resuming from that same folder)."""
    if args.resume_checkpoint_path is None or args.resume_epoch == -1:
        return False
    same = os.path.realpath(args.resume_checkpoint_path) == os.path.realpath(args.checkpoint_path)
    # `--resume_epoch latest` on a folder without a checkpoint starts afresh there: what it holds is that same
    # run's start (hyperparameter.pt, a log), with no epoch to lose. Epochs of another configuration are not.
    return same and (resume is not None or (args.resume_epoch == "latest"
                                            and other_stage_count(args.checkpoint_path, args.num_stage) is None))


@dataclass
class OutputFolders:
    """The checkpoint and result folders of a run, and the files of another run that `prepare` moves aside."""
    args: Namespace
    moved: dict[str, list[str]]     # folder -> names to move into previous_run_<time>/
    copied: dict[str, list[str]]    # folder -> names to copy there (the continuing run keeps using them)

    def prepare(self) -> None:
        """Called once every input is checked, just before the run's first write: make the folders; with
        --overwrite, move the other run's files aside."""
        make_folder(self.args.checkpoint_path, "--checkpoint_path")
        make_folder(self.args.result_path, "--result_path")
        folders = [folder for folder in self.moved if self.moved[folder]]
        if folders:
            subfolder = checkpoints.previous_run_folder(folders)
            for folder in folders:
                target = checkpoints.move_aside(folder, subfolder, self.moved[folder], self.copied.get(folder, []))
                print(f"--overwrite: moved {len(self.moved[folder])} file(s) of the previous run from {folder} into "
                      f"{target}")

    def record(self, resume: ResumePoint | None, clip_identity: dict | None) -> None:
        """After hyperparameter.pt: remove temporary files an interrupted save left; say what changed since the
        resumed run; write run_options.json (every option in effect, and the CLIP of the data)."""
        for folder in dict.fromkeys([self.args.checkpoint_path, self.args.result_path]):
            for path in checkpoints.remove_stale_files(folder):
                print(f"Removed {path}, left by an interrupted save")
        for change in resume.changes if resume is not None else []:
            print(f"Changed since the resumed run: {change}")
        record = {"options": options.saved_form(self.args), "clip": clip_identity}
        atomic_write_text(os.path.join(self.args.checkpoint_path, checkpoints.RUN_OPTIONS_FILE),
                          json.dumps(record, indent=2) + "\n")

    def after_epoch(self) -> None:
        """The epoch's files are written: the mid-epoch snapshot they supersede goes, and with --keep_last K the
        epochs older than the newest K."""
        remove_file(os.path.join(self.args.checkpoint_path, checkpoints.MID_EPOCH_FILE))
        checkpoints.prune_epochs(self.args.checkpoint_path, self.args.keep_last, self.args.num_stage)


def check_output_folder(args: Namespace, resume: ResumePoint | None) -> OutputFolders:
    """What the run would replace in its folders, refused unless --overwrite (which moves it aside instead).

    A fresh run (or one resumed from another folder) replaces every run file in --checkpoint_path and
    --result_path. A run that continues the one in --checkpoint_path replaces only what comes after its resume
    point: later complete epochs, a later mid-epoch snapshot, and their sample grids and reports."""
    folders = list(dict.fromkeys([args.checkpoint_path, args.result_path]))
    if continues_in_place(args, resume):
        later = later_than(args, resume)
        if not later:
            return OutputFolders(args, {}, {})
        moved = {folder: [name for name in checkpoints.run_files(folder) if name in later] for folder in folders}
        # The log, options, hyperparameters, loss curve and TensorBoard's curves describe the whole old run: a copy
        # goes with it (the continuing run's TensorBoard writer drops the points after its resume point).
        kept = [checkpoints.HYPERPARAMETER_FILE, checkpoints.RUN_OPTIONS_FILE, checkpoints.LOSS_LOG_FILE,
                "loss_curve.png", checkpoints.TENSORBOARD_FOLDER]
        copied = {folder: [name for name in checkpoints.run_files(folder) if name in kept] for folder in folders}
        # A snapshot that --resume_epoch latest could not use (another number of processes) is set aside unasked.
        set_aside_unasked = resume.unusable_snapshot and later == {checkpoints.MID_EPOCH_FILE}
        if not args.overwrite and not set_aside_unasked:
            epochs = sorted({checkpoints.epoch_of_name(name) for name in later} - {None})
            parts = [f"later epochs {epochs}"] if epochs else []
            if checkpoints.MID_EPOCH_FILE in later:
                parts.append("a later mid-epoch snapshot")
            raise T2IError(f"--resume_epoch {args.resume_epoch}: {args.checkpoint_path} holds {' and '.join(parts)}, "
                           f"which this run would replace; resume with --resume_epoch latest, write to another "
                           f"--checkpoint_path, or pass --overwrite to move them into a previous_run_<time> subfolder")
        return OutputFolders(args, moved, copied)
    moved = {folder: checkpoints.run_files(folder) for folder in folders}
    found = [os.path.join(folder, name) for folder in folders for name in moved[folder]]
    if found and not args.overwrite:
        epochs = checkpoints.complete_epochs(args.checkpoint_path, args.num_stage)
        what = f"epochs {epochs} of another run" if epochs else f"{len(found)} file(s) of another run"
        raise T2IError(f"--checkpoint_path {args.checkpoint_path} / --result_path {args.result_path} already hold "
                       f"{what} (e.g. {found[0]}); resume it with --resume_checkpoint_path {args.checkpoint_path} "
                       f"--resume_epoch latest, choose other folders, or pass --overwrite to move them into a "
                       f"previous_run_<time> subfolder")
    return OutputFolders(args, moved, {})


def later_than(args: Namespace, resume: ResumePoint | None) -> set[str]:
    """Names of run files in the run's folders that belong after the resume point (they would be replaced)."""
    if resume is None:
        return set()
    later = set()
    for epoch in checkpoints.complete_epochs(args.checkpoint_path, args.num_stage):
        if epoch >= resume.epoch:
            later.update(name for name in checkpoints.run_files(args.checkpoint_path)
                         if checkpoints.epoch_of_name(name) == epoch)
            later.update(name for name in checkpoints.run_files(args.result_path)
                         if checkpoints.epoch_of_name(name) == epoch)
    mid_path = os.path.join(args.checkpoint_path, checkpoints.MID_EPOCH_FILE)
    if not resume.snapshot and os.path.isfile(mid_path):
        try:
            mid = checkpoints.read_training_state(mid_path)
            is_later = (mid["epoch"], mid["step"]) > (resume.epoch, resume.step)
        except T2IError:
            is_later = True  # unreadable: not ours to judge, and not to be overwritten silently either
        if is_later:
            later.add(checkpoints.MID_EPOCH_FILE)
    return later


def how_to_continue(args: Namespace) -> str:
    """What a stopped run leaves in --checkpoint_path, and the command that continues it."""
    folder = os.fspath(args.checkpoint_path)
    epochs = checkpoints.complete_epochs(folder, args.num_stage)
    snapshot = os.path.isfile(os.path.join(folder, checkpoints.MID_EPOCH_FILE))
    if not epochs and not snapshot:
        return (f"no epoch of this run is saved in {folder}; start it again with the same command and --overwrite "
                f"(its first files are moved aside)")
    saved = f"the newest complete epoch in {folder} is {epochs[-1]}" if epochs else f"{folder} holds no complete epoch"
    if snapshot:
        saved += " (and a mid-epoch snapshot)"
    return (f"{saved}; continue with the same command and --resume_checkpoint_path {folder} --resume_epoch "
            f"latest")


@contextlib.contextmanager
def explain_stop(args: Namespace) -> Iterator[None]:
    """A stop (KeyboardInterrupt: Ctrl-C, Colab's stop button) inside the block becomes `Interrupted` with one
    line: what it interrupted (a save names its file), what is saved, and the command that continues."""
    try:
        yield
    except KeyboardInterrupt as err:
        raise Interrupted(f"{str(err) or 'training was stopped (Ctrl-C or the stop button)'}; "
                          f"{how_to_continue(args)}") from None
