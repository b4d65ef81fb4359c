"""The parts a run adds to the skeleton, built from its options: the helpers `train_step` takes (each with one job)
and the re-drawn conditioning weights of --ca_init_std."""
from __future__ import annotations

from argparse import Namespace
from typing import NamedTuple

import torch
import torch.nn as nn

from t2i.training.ema import GeneratorEMA
from t2i.training.log import TrainingLog
from t2i.training.state import RunState
from t2i.training.step import StepSettings
from t2i.training.tensorboard import TensorBoardLog


class RunHelpers(NamedTuple):
    """What a run adds to the skeleton's step, each with one job: train_step's keyword arguments."""
    step: StepSettings         # precision, the non-finite skip, torchrun's global batch, the recipe's switches
    log: TrainingLog           # the progress bar, loss_log.csv, the summary
    ema: GeneratorEMA | None   # --ema: the average generator, saved as epoch_N_Gen.pt
    state: RunState            # the resume state, mid-epoch snapshots


def run_helpers(args: Namespace, device: torch.device, G: nn.Module, D_lst: list[nn.Module],
                optim_g: torch.optim.Optimizer, optim_d_lst: list[torch.optim.Optimizer], dataset=None,
                writes: bool = False) -> RunHelpers:
    """The helpers of a run from its options, for models whose weights are loaded already (as train() builds
    them; also for tools that call train_step themselves). `writes`: the log and the state write files."""
    step = StepSettings.for_run(args, device, G, D_lst, optim_g, optim_d_lst)
    ema = GeneratorEMA(G, args.ema_decay, dataset, args.batch_size, args.noise_dim) if args.ema else None
    state = RunState(args, G, D_lst, optim_g, optim_d_lst, step, ema, writes=writes)
    log = TrainingLog(writes, step.processes, TensorBoardLog.for_run(args, writes), [optim_g, *optim_d_lst], step)
    return RunHelpers(step, log, ema, state)


def init_conditioning_mu(generator: nn.Module, std: float) -> None:
    """--ca_init_std (in --recipe fast): re-draw the weights of conditioning augmentation's Linear that give mu
    from N(0, std).

    weight_init's N(0, 0.02) suits inputs whose elements have unit variance. The CA's input is a unit-norm CLIP
    embedding (elements ~ 1/sqrt(D)), so under it mu differs by ~0.01 between captions while sigma starts at 1:
    the text first reaches G almost as noise, and G is slow to use it. std 1 keeps the input's norm; 3 (the best
    measured by benchmarks/conditional.py) starts mu's spread across captions above sigma. The log_sigma rows keep
    weight_init's values, so sigma still starts at 1, the KL prior's value."""
    condition_aug = generator.condition_aug
    with torch.no_grad():
        nn.init.normal_(condition_aug.layer[0].weight[:condition_aug.emb_dim], mean=0.0, std=std)
