"""The per-iteration settings of a training run: precision, the non-finite skip, torchrun's global batch, and the
recipe's switches of a step (DiffAugment, mismatched captions, the detached condition, L_ConG at any size).

`train_step` reads them from one `StepSettings`, built by `StepSettings.for_run` from the run's options (or
`StepSettings.plain`: the course's code, fp32 and nothing switched on). What they add to the guideline's step is
called right where it happens in train.py: `autocast()` around the forward passes, `draw_noise` for z,
`step_if_finite` (t2i/training/precision.py) after each backward, `guard.save()` / `guard.restore_unless(taken)`
around the iteration (t2i/training/nonfinite.py), `frozen(D)` around the generator's forward passes.
"""
from __future__ import annotations

import contextlib
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from t2i.data import batching
from t2i.errors import T2IError
from t2i.training import distributed
from t2i.training.augment import diff_augment, parse_policy
from t2i.training.log import TrainingLog
from t2i.training.nonfinite import StepGuard, create_optimizer_state
from t2i.training.precision import Precision, precision_for


def uses_channels_last(device: torch.device) -> bool:
    """cuDNN's fastest convolution layout on CUDA; on a CPU the default layout is as fast."""
    return device.type == "cuda"


@contextlib.contextmanager
def frozen(models: list[nn.Module]) -> Iterator[None]:
    """No weight gradients for `models` (the discriminators in the generator's step): less memory and work."""
    for model in models:
        model.requires_grad_(False)
    try:
        yield
    finally:
        for model in models:
            model.requires_grad_(True)


@dataclass
class StepSettings:
    device: torch.device
    precision: Precision
    guard: StepGuard
    processes: distributed.Processes | None = None  # None: this process alone
    augment_policy: tuple[str, ...] = ()
    mismatch: bool = False
    detach_condition: bool = False
    clip_loss_any_size: bool = False
    channels_last: bool = False
    max_bad_steps: int = 5
    num_updates: int = 0   # iterations taken (the resume state keeps it; the EMA's warm-up reads it)
    skipped: int = 0       # iterations skipped in this run because a loss was not finite
    bad_in_a_row: int = 0  # ... and in a row, up to now

    @classmethod
    def for_run(cls, args: Namespace, device: torch.device, G: nn.Module, D_list: list[nn.Module],
                optim_g: torch.optim.Optimizer, optim_d_list: list[torch.optim.Optimizer]) -> StepSettings:
        """The settings of a run from its options. Also readies the models for them: channels-last on CUDA, under
        torchrun synchronised BatchNorm and process 0's weights everywhere; and the optimizers' state up front."""
        processes = distributed.active()
        if processes is not None:
            if args.sync_bn:
                for model in (G, *D_list):
                    distributed.convert_batchnorm(model)
            processes.broadcast_models([G, *D_list])
            processes.announce(args.batch_size)
        channels_last = uses_channels_last(device)
        if channels_last:
            for model in (G, *D_list):
                model.to(memory_format=torch.channels_last)
        precision = precision_for(device, args.amp)
        return cls(device, precision, cls._guard(G, D_list, optim_g, optim_d_list, precision), processes,
                   parse_policy(args.diffaugment), args.mismatch, args.detach_condition, args.clip_loss_any_size,
                   channels_last, args.max_bad_steps)

    @classmethod
    def plain(cls, device: torch.device, G: nn.Module, D_list: list[nn.Module], optim_g: torch.optim.Optimizer,
              optim_d_list: list[torch.optim.Optimizer]) -> StepSettings:
        """The course's step: fp32, no augmentation, no mismatched captions (a non-finite step is still skipped)."""
        precision = precision_for(device, False)
        return cls(device, precision, cls._guard(G, D_list, optim_g, optim_d_list, precision))

    @staticmethod
    def _guard(G: nn.Module, D_list: list[nn.Module], optim_g: torch.optim.Optimizer,
               optim_d_list: list[torch.optim.Optimizer], precision: Precision) -> StepGuard:
        # A skipped first step must create no optimizer state that the guard's copy could not undo.
        create_optimizer_state([optim_g, *optim_d_list])
        return StepGuard([G, *D_list], D_list, optim_d_list, [precision.scaler_d, precision.scaler_g])

    def batches(self, loader, num_stage: int, log: TrainingLog) -> Iterator[tuple[int, list[torch.Tensor],
                                                                                  torch.Tensor, torch.Tensor]]:
        """(step, stage images, image embedding, text embedding) on the device, under the log's progress bar; a
        batch of one image is left out (the course's loader can end an epoch on one; BatchNorm needs two)."""
        if self.processes is not None and batching.our_sampler(loader) is None:
            raise T2IError("training under torchrun needs this package's dataloader.py (each process takes its share "
                           "of every batch; the course's RandomSampler gives each one the whole epoch)")
        for step, batch in log.steps(loader, batching.first_step(loader), batching.steps_per_epoch(loader)):
            images, img_feature, txt_feature = batching.batch_to_device(batch, num_stage, self.device,
                                                                        self.channels_last)
            if txt_feature.shape[0] < 2:
                continue
            if self.processes is not None:
                self.processes.start_batch(batching.global_batch_size(loader, step))
            yield step, images, img_feature, txt_feature

    @property
    def scaler_d(self) -> torch.amp.GradScaler:
        return self.precision.scaler_d

    @property
    def scaler_g(self) -> torch.amp.GradScaler:
        return self.precision.scaler_g

    def scaled(self, loss: torch.Tensor, scaler: torch.amp.GradScaler) -> torch.Tensor:
        """The loss to backpropagate: scaled by `scaler` (fp16 on CUDA, so that small gradients do not underflow;
        the identity otherwise) and, under torchrun, weighted by this process's share of the global batch (the
        processes' gradients are summed before the step, `step_if_finite`)."""
        if self.processes is not None:
            loss = loss * self.processes.weight
        return scaler.scale(loss)

    def autocast(self) -> torch.autocast:
        return self.precision.autocast()

    def draw_noise(self, batch_size: int, noise_dim: int, condition_dim: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z ~ N(0, I) [batch_size, noise_dim], and the conditioning augmentation's eps [batch_size, condition_dim]
        (None: the generator draws it itself, right after z). Under torchrun both are this process's rows of the
        global batch's draw, so that N processes at batch B train as one process at batch N * B."""
        if self.processes is None:
            return torch.randn(batch_size, noise_dim, device=self.device), None
        noise = self.processes.global_draw((batch_size, noise_dim), self.device)
        eps = self.processes.global_draw((batch_size, condition_dim), self.device) if condition_dim else None
        return noise, eps

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment (--diffaugment) of a discriminator's input; the identity when off."""
        return diff_augment(images, self.augment_policy) if self.augment_policy else images

    def clip_loss_min_size(self, fake_images: list[torch.Tensor]) -> int:
        """The smallest image size that gets L_ConG: 256 px as in the course, or the largest stage whatever its
        size with --clip_loss_any_size."""
        return fake_images[-1].shape[-1] if self.clip_loss_any_size else 256

    def count_update(self) -> None:
        """An iteration was taken."""
        self.num_updates += 1
        self.bad_in_a_row = 0

    def count_skip(self, what: str, loss: torch.Tensor, epoch: int, step: int, advice: Callable[[], str]) -> None:
        """Say that an iteration was skipped (a non-finite `what` loss); stop after --max_bad_steps in a row, with
        `advice` (the last clean checkpoint, what to change)."""
        self.skipped += 1
        self.bad_in_a_row += 1
        tqdm.write(f"Warning: non-finite {what} loss ({float(loss.detach())}) at epoch {epoch} step {step}; the step "
                   f"was skipped and changed nothing")
        if self.bad_in_a_row >= self.max_bad_steps:
            raise T2IError(f"{self.bad_in_a_row} non-finite losses in a row at epoch {epoch} step {step}; training "
                           f"stopped. {advice()}")
