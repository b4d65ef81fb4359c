"""Checkpoint folders: the contract's files, rebuilding models the way the graders do, and what resume needs.

The contract's files (`epoch_N_Gen.pt`, `epoch_N_Dis_i.pt`, `hyperparameter.pt`) are written through
`train_utils` with `files.atomic_save`. Beside them training keeps `epoch_N_state.pt` (optimizers, gradient
scalers, RNG states, the raw generator when the saved one is an EMA), `mid_epoch_state.pt` (a rolling
mid-epoch snapshot with the weights too), `run_options.json` (every option of the run, and the CLIP that
made its data), `loss_log.csv` and `tensorboard/` (TensorBoard's event files, t2i/training/tensorboard.py); the
sample grids and evaluation reports go to the result folder. Every weight file is read through
`load_state_file`: strict, with `weights_only=True`, refusing NaN or Inf with the last clean epoch named.

Nothing here deletes or moves a file of a name training does not write (`is_run_file`): `--keep_last` prunes
old epochs, stale temporary files are removed, and `--overwrite` moves another run's files into a
`previous_run_<time>/` subfolder (`move_aside`) rather than mixing or deleting them.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import time
from collections.abc import Mapping
from types import ModuleType

import numpy as np
import torch
import torch.nn as nn

from t2i.errors import T2IError, write_error
from t2i.files import make_folder, move_file, read_torch_file, remove_file, remove_stale_temp_files

HYPERPARAMETER_FILE = "hyperparameter.pt"
MID_EPOCH_FILE = "mid_epoch_state.pt"
RUN_OPTIONS_FILE = "run_options.json"
LOSS_LOG_FILE = "loss_log.csv"
TENSORBOARD_FOLDER = "tensorboard"
HYPERPARAMETER_KEYS = ("clip_embedding_dim", "projection_dim", "noise_dim", "num_stage", "use_uncond_loss",
                       "use_contrastive_loss", "batch_size", "num_epochs", "learning_rate", "g_in_chans",
                       "g_out_chans", "d_in_chans", "d_out_chans")
# Every name training writes into a checkpoint folder (the only names it ever deletes or cleans up after); one is
# a folder, TENSORBOARD_FOLDER.
OUR_NAMES = re.compile(r"epoch_\d+_(Gen|Dis_\d+|state)\.pt|hyperparameter\.pt|mid_epoch_state\.pt|"
                       r"run_options\.json|loss_log\.csv|tensorboard")
# Every name training (and evaluate.py's default report) writes into a result folder.
RESULT_NAMES = re.compile(r"epoch_\d+\.png|loss_curve\.png|eval_epoch_\d+(_grid)?\.(json|png)")
EPOCH_OF_NAME = re.compile(r"(eval_)?epoch_(?P<epoch>\d+)[_.].*")
PREVIOUS_RUN_PREFIX = "previous_run_"


def generator_file(checkpoint_path: str, epoch: int) -> str:
    return os.path.join(checkpoint_path, f"epoch_{epoch}_Gen.pt")


def discriminator_file(checkpoint_path: str, epoch: int, stage: int) -> str:
    return os.path.join(checkpoint_path, f"epoch_{epoch}_Dis_{stage}.pt")


def state_file(checkpoint_path: str, epoch: int) -> str:
    return os.path.join(checkpoint_path, f"epoch_{epoch}_state.pt")


def is_our_file(name: str) -> bool:
    """A name training writes into a checkpoint folder."""
    return OUR_NAMES.fullmatch(name) is not None


def is_run_file(name: str) -> bool:
    """A name a training run writes into its checkpoint or result folder (the only names it ever moves or deletes)."""
    return is_our_file(name) or RESULT_NAMES.fullmatch(name) is not None


def epoch_of_name(name: str) -> int | None:
    """The epoch a run file belongs to (epoch_3_Gen.pt, epoch_3.png, eval_epoch_3.json: 3), None for the others."""
    match = EPOCH_OF_NAME.fullmatch(name)
    return int(match.group("epoch")) if match else None


def run_files(folder: str) -> list[str]:
    """The names of run files in `folder` (not in its subfolders), and its TensorBoard folder, sorted."""
    if not os.path.isdir(folder):
        return []
    kind = {TENSORBOARD_FOLDER: os.path.isdir}  # every other run file is a file
    return sorted(name for name in os.listdir(folder)
                  if is_run_file(name) and kind.get(name, os.path.isfile)(os.path.join(folder, name)))


def remove_stale_files(folder: str) -> list[str]:
    """Temporary files that interrupted saves of ours left in `folder` (never other files)."""
    return remove_stale_temp_files(folder, is_run_file)


def previous_run_folder(folders: list[str]) -> str:
    """A subfolder name `previous_run_<time>` free in every one of `folders`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, count = f"{PREVIOUS_RUN_PREFIX}{stamp}", 1
    while any(os.path.exists(os.path.join(folder, name)) for folder in folders):
        count += 1
        name = f"{PREVIOUS_RUN_PREFIX}{stamp}_{count}"
    return name


def move_aside(folder: str, subfolder: str, moved: list[str], copied: list[str] = ()) -> str:
    """Move the files `moved` of `folder` into `folder/subfolder` (and copy `copied` there, files or the
    TensorBoard folder that the continuing run keeps using); return the subfolder's path. Each move is a rename: a
    kill in between leaves every file whole, in one place or the other."""
    target = os.path.join(folder, subfolder)
    make_folder(target)
    for name in copied:
        source = os.path.join(folder, name)
        if os.path.exists(source):
            try:
                if os.path.isdir(source):
                    shutil.copytree(source, os.path.join(target, name))
                else:
                    shutil.copy2(source, os.path.join(target, name))
            except OSError as err:
                raise write_error(os.path.join(target, name), err) from None
    for name in moved:
        move_file(os.path.join(folder, name), os.path.join(target, name))
    return target


def complete_epochs(checkpoint_path: str, num_stage: int) -> list[int]:
    """Epochs whose generator and every discriminator file exist, oldest first."""
    epochs = []
    for path in glob.glob(os.path.join(checkpoint_path, "epoch_*_Gen.pt")):
        match = re.fullmatch(r"epoch_(\d+)_Gen\.pt", os.path.basename(path))
        if match:
            epoch = int(match.group(1))
            if all(os.path.isfile(discriminator_file(checkpoint_path, epoch, s)) for s in range(num_stage)):
                epochs.append(epoch)
    return sorted(epochs)


def epochs_on_disk(checkpoint_path: str) -> list[int]:
    """Epochs with any weight file in the folder (epoch_N_Gen.pt or epoch_N_Dis_i.pt), complete for some stage
    count or not, oldest first."""
    if not os.path.isdir(checkpoint_path):
        return []
    matches = (re.fullmatch(r"epoch_(\d+)_(Gen|Dis_\d+)\.pt", name) for name in os.listdir(checkpoint_path))
    return sorted({int(match.group(1)) for match in matches if match})


def read_hyperparameters(checkpoint_path: str) -> dict:
    """hyperparameter.pt of a checkpoint folder, with every key the graders read."""
    if not os.path.isdir(checkpoint_path):
        raise T2IError(f"--checkpoint_path {checkpoint_path}: no such folder")
    path = os.path.join(checkpoint_path, HYPERPARAMETER_FILE)
    if not os.path.isfile(path):
        raise T2IError(f"{path}: missing; a checkpoint folder needs the hyperparameter.pt that training writes")
    hyp = read_torch_file(path, "hyperparameter", "copy it again from the training run's folder")
    if not isinstance(hyp, dict):
        raise T2IError(f"{path}: holds a {type(hyp).__name__}, not the dict training writes")
    missing = [key for key in HYPERPARAMETER_KEYS if key not in hyp]
    if missing:
        raise T2IError(f"{path}: lacks the keys {missing}")
    return hyp


def read_run_record(checkpoint_path: str) -> dict | None:
    """run_options.json of a folder that training wrote: {"options": ..., "clip": identity of the CLIP that made
    the data}; None for a folder without one (made by the course's code or an older version)."""
    path = os.path.join(checkpoint_path, RUN_OPTIONS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise T2IError(f"{path}: unreadable ({type(err).__name__}); delete it to skip the checks it allows") from None


def run_arch(checkpoint_path: str) -> str:
    """The architecture a checkpoint folder was trained as (run_options.json's --arch); stackgan for a folder
    without that record (the course's code, or a version before --arch)."""
    record = read_run_record(checkpoint_path)
    return ((record or {}).get("options") or {}).get("arch", "stackgan")


def network_of(checkpoint_path: str, networks: Mapping[str, ModuleType]) -> ModuleType:
    """The models' module a checkpoint folder loads into, out of `networks` (--arch -> module: models.NETWORKS)."""
    arch = run_arch(checkpoint_path)
    if arch not in networks:
        raise T2IError(f"{checkpoint_path}: trained as --arch {arch}, which this program cannot load (it knows "
                       f"{sorted(networks)})")
    return networks[arch]


def build_generator(hyp: dict, device: torch.device | str, network: ModuleType) -> nn.Module:
    """The generator exactly as the graders build it from hyperparameter.pt, with `network` as network.py."""
    return network.Generator(hyp["clip_embedding_dim"], hyp["projection_dim"], hyp["noise_dim"], hyp["g_in_chans"],
                             hyp["g_out_chans"], hyp["num_stage"], device)


def build_discriminator(hyp: dict, stage: int, device: torch.device | str, network: ModuleType) -> nn.Module:
    """Stage `stage`'s discriminator exactly as the graders build it from hyperparameter.pt."""
    return network.Discriminator(hyp["projection_dim"], hyp["g_out_chans"], hyp["d_in_chans"], hyp["d_out_chans"],
                                 hyp["clip_embedding_dim"], stage, device)


def describe_mismatch(model: nn.Module, state: dict) -> str:
    """Why `state` does not load strictly into `model`: counts and first examples of each kind of mismatch."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {list(state[key].shape)} vs {list(expected[key].shape)}" for key in expected
              if key in state and isinstance(state[key], torch.Tensor) and state[key].shape != expected[key].shape]
    parts = [f"{len(items)} {label} (e.g. {items[0]})"
             for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if items]
    return "; ".join(parts) or "load_state_dict refused it"


def epoch_of(path: str) -> int | None:
    match = re.fullmatch(r"epoch_(\d+)_.*\.pt", os.path.basename(path))
    return int(match.group(1)) if match else None


def nonfinite_tensors(state: object, prefix: str = "") -> list[str]:
    """The keys of floating-point tensors in `state` that hold NaN or Inf; nested dicts and lists (optimizer and
    training states) are searched too, their keys joined with dots."""
    if isinstance(state, torch.Tensor):
        return [prefix or "tensor"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    found = []
    for key, value in items:
        found += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def last_clean_epoch(checkpoint_path: str, num_stage: int, before: int | None = None) -> int | None:
    """The newest complete epoch (older than `before`) whose files (weights, and the training state when there is
    one) all read and hold only finite numbers: one that generation, evaluation and resume accept."""
    for epoch in reversed(complete_epochs(checkpoint_path, num_stage)):
        if before is not None and epoch >= before:
            continue
        paths = [generator_file(checkpoint_path, epoch)]
        paths += [discriminator_file(checkpoint_path, epoch, stage) for stage in range(num_stage)]
        if os.path.isfile(state_file(checkpoint_path, epoch)):
            paths.append(state_file(checkpoint_path, epoch))
        try:
            if not any(nonfinite_tensors(read_torch_file(path, "checkpoint", "")) for path in paths):
                return epoch
        except T2IError:
            continue
    return None


def clean_epoch_advice(folders: list[str], num_stage: int, before: int | None = None) -> str:
    """'the newest clean epoch is 3 in DIR' (looking in each folder in turn), or that there is none."""
    for folder in dict.fromkeys(folders):
        if folder and os.path.isdir(folder):
            clean = last_clean_epoch(folder, num_stage, before)
            if clean is not None:
                return f"the newest clean epoch is {clean} in {folder}"
    return "no clean epoch is left to go back to"


def load_state_file(module: nn.Module, path: str, num_stage: int | None = None) -> None:
    """Strictly load the state dict in `path` into `module` (weights_only=True). One-line T2IError for a missing,
    damaged or foreign file, or one holding NaN/Inf (naming the newest clean epoch, when `num_stage` is known)."""
    state = read_torch_file(path, "checkpoint", "resume or generate from another epoch")
    if not isinstance(state, dict):
        raise T2IError(f"{path}: holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise T2IError(f"{path}: made with other hyperparameters than this model ({describe_mismatch(module, state)}); "
                       f"compare {HYPERPARAMETER_FILE} with the flags") from None
    refuse_nonfinite(state, path, num_stage)


def refuse_nonfinite(state: object, path: str, num_stage: int | None) -> None:
    """A T2IError naming `path` and the newest clean epoch beside it when `state` holds NaN or Inf."""
    bad = nonfinite_tensors(state)
    if bad:
        epoch = epoch_of(path)
        advice = (clean_epoch_advice([os.path.dirname(path)], num_stage, before=epoch) if num_stage is not None
                  else "use an earlier epoch")
        raise T2IError(f"{path}: {len(bad)} tensors hold NaN or Inf (e.g. {bad[0]}): the run had diverged when "
                       f"it was saved; {advice}: use that one")


def load_weights(G: nn.Module, D_list: list[nn.Module], checkpoint_path: str, epoch: int) -> None:
    """Strictly load epoch `epoch`'s generator and discriminators."""
    num_stage = len(D_list)
    load_state_file(G, generator_file(checkpoint_path, epoch), num_stage)
    for stage, D in enumerate(D_list):
        load_state_file(D, discriminator_file(checkpoint_path, epoch, stage), num_stage)


def load_generator(checkpoint_path: str, epoch: int, device: torch.device | str = "cpu", *,
                   networks: Mapping[str, ModuleType]) -> tuple[nn.Module, dict]:
    """Rebuild the generator from hyperparameter.pt (with the module of its --arch out of `networks`), load epoch
    `epoch` strictly, return it in eval mode."""
    hyp = read_hyperparameters(checkpoint_path)
    generator = build_generator(hyp, "cpu", network_of(checkpoint_path, networks))
    path = generator_file(checkpoint_path, epoch)
    if not os.path.isfile(path):
        available = complete_epochs(checkpoint_path, hyp["num_stage"])
        raise T2IError(f"{path}: no such file (complete epochs in {checkpoint_path}: {available or 'none'})")
    load_state_file(generator, path, hyp["num_stage"])
    return generator.to(device).eval(), hyp


def rng_states() -> dict:
    """Every random generator training draws from, so a resumed run continues the same random stream.
    Stored as tensors and plain Python values, which `torch.load(weights_only=True)` reads back."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
        "random": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    random.setstate(states["random"])


def read_training_state(path: str) -> dict:
    """A state file written by training (optimizers, scalers, RNG states, position)."""
    state = read_torch_file(path, "training state", "resume from a complete epoch instead (--resume_epoch N)")
    if not isinstance(state, dict) or "trainer" not in state:
        raise T2IError(f"{path}: not a training state written by this package")
    return state


def read_clean_training_state(path: str, num_stage: int) -> dict:
    """`read_training_state`, refusing NaN or Inf (weights of a snapshot, optimizer moments) with the newest
    clean epoch named."""
    state = read_training_state(path)
    refuse_nonfinite(state, path, num_stage)
    return state


def prune_epochs(checkpoint_path: str, keep_last: int, num_stage: int) -> list[str]:
    """Delete the files this training wrote for all but the newest `keep_last` complete epochs, and stale
    temporary files of ours. Only the exact names training writes are removed (never hyperparameter.pt, never
    a file of another name), and the newest complete epoch always stays. Returns the removed paths."""
    if keep_last < 1:
        return []
    removed = remove_stale_files(checkpoint_path)
    for epoch in complete_epochs(checkpoint_path, num_stage)[:-keep_last]:
        paths = [state_file(checkpoint_path, epoch)]
        paths += [discriminator_file(checkpoint_path, epoch, s) for s in range(num_stage)]
        paths.append(generator_file(checkpoint_path, epoch))  # last: the epoch stops counting as complete
        for path in paths:
            if os.path.isfile(path):
                remove_file(path)
                removed.append(path)
    return removed
