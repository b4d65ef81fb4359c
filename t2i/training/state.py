"""The resume state of a run: optimizers, gradient scalers, the raw generator, update count, RNG states and the
position, written after each epoch (`epoch_N_state.pt`) and every --save_every_steps (`mid_epoch_state.pt`), and
restored so that a resumed run equals an uninterrupted one tensor for tensor.

No file of a diverged run is ever written: the weights and the state are refused, loudly, when any of it holds
NaN or Inf, and the message names the last clean checkpoint and what to change (`advice`).
"""
from __future__ import annotations

import os
from argparse import Namespace

import torch
import torch.nn as nn

from t2i import checkpoints
from t2i.checkpoints import nonfinite_tensors
from t2i.errors import T2IError
from t2i.files import atomic_save
from t2i.training import distributed, lock
from t2i.training.ema import GeneratorEMA
from t2i.training.resume import ResumePoint
from t2i.training.step import StepSettings


class RunState:
    def __init__(self, args: Namespace, G: nn.Module, D_list: list[nn.Module], optim_g: torch.optim.Optimizer,
                 optim_d_list: list[torch.optim.Optimizer], step: StepSettings, ema: GeneratorEMA | None,
                 writes: bool):
        self.args = args
        self.G, self.D_list = G, D_list
        self.optim_g, self.optim_d_list = optim_g, optim_d_list
        self.step, self.ema = step, ema
        self.writes = writes  # under torchrun, process 0 alone writes files
        self.epoch = 0

    def saved_generator(self) -> nn.Module:
        """The generator whose weights become epoch_N_Gen.pt: the EMA when enabled (t2i/training/ema.py), else G."""
        return self.ema.saved_model(self.step.num_updates) if self.ema is not None else self.G

    # ------------------------------------------------------------------------------------------- advice

    def last_clean(self) -> str:
        """'epoch K in DIR': the newest epoch whose files are all finite, here or in the folder resumed from."""
        for folder in dict.fromkeys([self.args.checkpoint_path, self.args.resume_checkpoint_path]):
            if folder and os.path.isdir(folder):
                clean = checkpoints.last_clean_epoch(folder, len(self.D_list))
                if clean is not None:
                    return f"epoch {clean} in {folder}"
        return "none (start afresh)"

    def advice(self) -> str:
        """For a run that diverged: the last clean checkpoint, and what can make losses non-finite in this run."""
        remedies = ["check the data (a NaN or empty embedding in the zip?)"]
        if self.step.precision.autocast_dtype is not None:
            remedies.append("resume with --no-amp (an fp16/bf16 overflow)")
        if self.args.g_lr or self.args.d_lr:
            remedies.append("resume with a lower --g_lr / --d_lr")
        else:
            remedies.append(f"resume with a lower --learning_rate than {self.args.learning_rate:g}")
        return f"Last clean checkpoint: {self.last_clean()}. Then " + ", or ".join(remedies)

    # ------------------------------------------------------------------------------------------- saving

    def state_dict(self) -> dict:
        """What resuming needs beyond the contract's weight files."""
        return {
            "optim_g": self.optim_g.state_dict(),
            "optim_d": [optim.state_dict() for optim in self.optim_d_list],
            "precision": self.step.precision.state_dict(),
            "raw_generator": self.G.state_dict() if self.ema is not None else None,
            "num_updates": self.step.num_updates,
        }

    def save(self, path: str, epoch: int, step: int, with_weights: bool) -> None:
        """The resume state: position, optimizers, scalers, RNG states (and, for a snapshot, the weights), and the
        number of processes. Under torchrun every process calls it (their RNG states are gathered); process 0
        writes."""
        rng = checkpoints.rng_states()
        processes = self.step.processes
        state = {"epoch": epoch, "step": step, "trainer": self.state_dict(), "rng": rng,
                 "world_size": distributed.world_size()}
        if processes is not None:  # every process joins the gathering
            state["processes"] = processes.state_dict(rng)
        if with_weights:
            state["generator"] = self.saved_generator().state_dict()
            state["discriminators"] = [D.state_dict() for D in self.D_list]
        bad = nonfinite_tensors(state)
        if bad:  # the same on every process: their weights are the same
            raise T2IError(f"{path}: not written, {len(bad)} tensors hold NaN or Inf (e.g. {bad[0]}) at epoch "
                           f"{self.epoch} step {step}; training stopped. {self.advice()}")
        if self.writes:
            lock.check_held(self.args.checkpoint_path)  # another run took the folder over: stop before mixing
            atomic_save(state, path)

    def after_step(self, step: int, steps_in_epoch: int) -> None:
        """A mid-epoch snapshot every --save_every_steps iterations (not after the last one: the epoch's files
        follow at once)."""
        every = self.args.save_every_steps
        if every and (step + 1) % every == 0 and step + 1 < steps_in_epoch:
            self.save(os.path.join(self.args.checkpoint_path, checkpoints.MID_EPOCH_FILE), self.epoch, step + 1,
                      with_weights=True)

    def save_epoch(self, epoch: int) -> None:
        """Epoch `epoch` is over: refuse weights that hold NaN or Inf, then write its resume state
        (`epoch_N_state.pt`). Called before the weight files are saved, the generator last, so an epoch whose
        generator file exists is complete and resumes exactly."""
        models = [("generator", self.saved_generator())]
        models += [(f"discriminator {i}", D) for i, D in enumerate(self.D_list)]
        if self.ema is not None:
            models.append(("raw generator", self.G))
        for name, model in models:
            bad = nonfinite_tensors(model.state_dict())
            if bad:
                raise T2IError(f"epoch {epoch}: the {name} holds NaN or Inf ({bad[0]}, ...), so the epoch was not "
                               f"saved; training stopped. {self.advice()}")
        self.save(checkpoints.state_file(self.args.checkpoint_path, epoch), epoch + 1, 0, with_weights=False)

    # ------------------------------------------------------------------------------------------ restoring

    def restore(self, resume: ResumePoint) -> None:
        """Continue exactly: the raw generator, optimizers, scalers, update count and RNG states, when saved.
        The weights themselves are already loaded (`load_checkpoint` or the snapshot)."""
        if self.ema is not None:  # the saved generator is the average: the raw one starts from it unless saved
            self.ema.model.load_state_dict(self.G.state_dict())
        state = resume.state
        if state is None:
            print(f"Warning: {resume.source} has weights only (no optimizer state); Adam starts afresh")
            return
        trainer = state["trainer"]
        self.optim_g.load_state_dict(trainer["optim_g"])
        for optim, optim_state in zip(self.optim_d_list, trainer["optim_d"]):
            optim.load_state_dict(optim_state)
        self.step.precision.load_state_dict(trainer["precision"])
        if self.ema is not None and trainer["raw_generator"] is not None:
            self.G.load_state_dict(trainer["raw_generator"])
        self.step.num_updates = trainer["num_updates"]
        saved_world, world = state.get("world_size", 1), distributed.world_size()
        processes = self.step.processes
        if saved_world == world:
            rng = state["rng"] if processes is None else processes.load_state_dict(state["processes"])
            checkpoints.set_rng_states(rng)
        else:  # each process keeps its fresh random streams
            print(f"{resume.source} was made by {saved_world} process(es) and this run has {world}: it continues "
                  f"with a global batch of {self.args.batch_size * world}, not as the run would have gone on")
