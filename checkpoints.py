"""Checkpoint folders: rebuilding models the way the graders do, exact resume, and pruning old epochs.

The contract's files (`epoch_N_Gen.pt`, `epoch_N_Dis_i.pt`, `hyperparameter.pt`) are written through
`train_utils` with `atomic_save` below: a temporary file renamed into place, so a Colab disconnect in the
middle of a save never leaves a broken file where a good one was. Beside them this module keeps what an exact resume needs and the course's files do not hold:
`epoch_N_state.pt` (optimizers, gradient scalers, RNG states, the raw generator when the saved one is an
EMA) and `mid_epoch_state.pt`, a rolling mid-epoch snapshot with the weights too.
"""
from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch
import torch.nn as nn

from network import Discriminator, Generator

HYPERPARAMETER_FILE = "hyperparameter.pt"
MID_EPOCH_FILE = "mid_epoch_state.pt"
HYPERPARAMETER_KEYS = ("clip_embedding_dim", "projection_dim", "noise_dim", "num_stage", "use_uncond_loss",
                       "use_contrastive_loss", "batch_size", "num_epochs", "learning_rate", "g_in_chans",
                       "g_out_chans", "d_in_chans", "d_out_chans")


class CheckpointError(Exception):
    """A checkpoint folder or file that cannot be used; the message is one line naming it."""


def atomic_save(obj: object, path: str) -> None:
    """torch.save to a temporary name in the same folder, flush to disk, then rename over `path`.

    A rename within one folder is atomic, so `path` always holds either the old file or the new one.
    """
    tmp_path = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp_path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def generator_file(checkpoint_path: str, epoch: int) -> str:
    return os.path.join(checkpoint_path, f"epoch_{epoch}_Gen.pt")


def discriminator_file(checkpoint_path: str, epoch: int, stage: int) -> str:
    return os.path.join(checkpoint_path, f"epoch_{epoch}_Dis_{stage}.pt")


def load_state_dict_file(module: nn.Module, path: str) -> None:
    """Strictly load a state-dict file into `module`; one-line errors for a missing, corrupt or foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file; check --checkpoint_path and the epoch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path}: unreadable checkpoint ({type(err).__name__}); the file is damaged") from None
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise RuntimeError(f"{path}: made with other hyperparameters than this model "
                           f"(compare with {HYPERPARAMETER_FILE} and the flags)") from None


def state_file(checkpoint_path: str, epoch: int) -> str:
    return os.path.join(checkpoint_path, f"epoch_{epoch}_state.pt")


def load_hyperparameters(checkpoint_path: str) -> dict:
    path = os.path.join(checkpoint_path, HYPERPARAMETER_FILE)
    if not os.path.isdir(checkpoint_path):
        raise CheckpointError(f"--checkpoint_path {checkpoint_path}: no such folder")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing; a checkpoint folder needs the hyperparameter.pt written by training")
    try:
        hyp = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}); the file is damaged") from None
    missing = [key for key in HYPERPARAMETER_KEYS if key not in hyp]
    if missing:
        raise CheckpointError(f"{path}: lacks the keys {missing}")
    return hyp


def build_generator(hyp: dict, device: torch.device | str) -> Generator:
    """The generator exactly as the graders build it from hyperparameter.pt."""
    return Generator(hyp["clip_embedding_dim"], hyp["projection_dim"], hyp["noise_dim"], hyp["g_in_chans"],
                     hyp["g_out_chans"], hyp["num_stage"], device)


def build_discriminator(hyp: dict, stage: int, device: torch.device | str) -> Discriminator:
    """Stage `stage`'s discriminator exactly as the graders build it from hyperparameter.pt."""
    return Discriminator(hyp["projection_dim"], hyp["g_out_chans"], hyp["d_in_chans"], hyp["d_out_chans"],
                         hyp["clip_embedding_dim"], stage, device)


def load_generator(checkpoint_path: str, epoch: int, device: torch.device | str = "cpu"
                   ) -> tuple[Generator, dict]:
    """Rebuild the generator from hyperparameter.pt, load epoch `epoch` strictly, return it in eval mode."""
    hyp = load_hyperparameters(checkpoint_path)
    generator = build_generator(hyp, device)
    try:
        load_state_dict_file(generator, generator_file(checkpoint_path, epoch))
    except (FileNotFoundError, RuntimeError) as err:
        available = complete_epochs(checkpoint_path, hyp["num_stage"])
        raise CheckpointError(f"{err} (complete epochs there: {available or 'none'})") from None
    return generator.to(device).eval(), hyp


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


def load_training_state(path: str) -> dict:
    """A state file written by training (optimizers, scalers, RNG states, position)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable training state ({type(err).__name__}); the file is damaged") from None


def prune_epochs(checkpoint_path: str, keep_last: int, num_stage: int) -> list[str]:
    """Delete the files this training wrote for all but the newest `keep_last` complete epochs.

    Only the exact names training writes are removed (never hyperparameter.pt, never a file of another
    name), and the newest complete epoch always stays. Returns the removed paths.
    """
    if keep_last < 1:
        return []
    epochs = complete_epochs(checkpoint_path, num_stage)
    removed = []
    for epoch in epochs[:-keep_last]:
        paths = [state_file(checkpoint_path, epoch)]
        paths += [discriminator_file(checkpoint_path, epoch, s) for s in range(num_stage)]
        paths.append(generator_file(checkpoint_path, epoch))  # last: the epoch stops counting as complete
        for path in paths:
            if os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    return removed


def load_weights(G: Generator, D_list: list[Discriminator], checkpoint_path: str, epoch: int) -> None:
    """Strictly load epoch `epoch`'s generator and discriminators; CheckpointError names the bad file."""
    try:
        load_state_dict_file(G, generator_file(checkpoint_path, epoch))
        for stage, D in enumerate(D_list):
            load_state_dict_file(D, discriminator_file(checkpoint_path, epoch, stage))
    except (FileNotFoundError, RuntimeError) as err:
        raise CheckpointError(str(err)) from None
