"""A training step whose loss is not finite changes nothing.

One NaN caption embedding, or one fp16 overflow on a T4, makes a step's losses non-finite. Skipping its update
is not enough:

* the forward passes have already written NaN into the BatchNorm running statistics, and every later
  checkpoint would draw garbage in eval mode (what the graders run);
* the discriminators step before the generator's loss is known (the skeleton's order): when only the
  generator's loss is non-finite, the discriminators' weights, Adam moments and gradient scaler have moved
  already.

`StepGuard` copies all of that before each step (one multi-tensor copy into buffers allocated once: about the
discriminators' size three times over, 1.4 GB for the course's model on a T4) and puts it back when the step is
skipped, so the skipped step leaves the models, optimizers, scalers and the EMA exactly as they were.

The optimizers skip a step on the device (`precision.step_optimizers`), so the host reads once an iteration,
whether the whole step was taken (`StepGuard.restore_unless`), not twice. A skipped step must create no state:
`create_optimizer_state` and `StepGuard` make the Adam states and the scalers' tensors up front, as their first
step would.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from t2i.training.precision import skips_on_device, step_unless_found_inf


def _batchnorm_buffers(models: list[nn.Module]) -> list[torch.Tensor]:
    return [buffer for model in models for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) for buffer in module.buffers()]


@torch.no_grad()
def create_optimizer_state(optimizers: list[torch.optim.Optimizer]) -> None:
    """Give each optimizer that skips on the device its state now, as its first step would make it: one step on
    zero gradients that is skipped (`found_inf`), which leaves Adam's moments at zero and its step count at 0,
    the same numbers as no state at all. (A skipped first step would otherwise create state that no copy taken
    before it can undo.)"""
    for optimizer in optimizers:
        params = [p for group in optimizer.param_groups for p in group["params"] if p not in optimizer.state]
        if not params or not skips_on_device(optimizer):
            continue
        for p in params:
            p.grad = torch.zeros_like(p)
        step_unless_found_inf(optimizer, torch.ones((), device=params[0].device))
        for p in params:
            p.grad = None


class StepGuard:
    """Everything a training step can change before its last loss is known: the BatchNorm statistics of
    `models`, and the parameters, optimizer states and gradient scalers that step before that (`stepped`,
    `optimizers`: the discriminators'), plus `scalers` (both: a skipped step must not back their scale off).
    `save()` before the step; `restore_unless(taken)` after it."""

    def __init__(self, models: list[nn.Module], stepped: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 scalers: list[torch.amp.GradScaler] = ()):
        self.fixed = _batchnorm_buffers(models) + [p for model in stepped for p in model.parameters()]
        self.optimizers = optimizers
        self.scalers = [scaler for scaler in scalers if scaler.is_enabled()]
        device = self.fixed[0].device if self.fixed else torch.device("cpu")
        for scaler in self.scalers:
            scaler.scale(torch.zeros((), device=device))  # makes its scale and growth tensors, as a first step does
        self.live: list[torch.Tensor] = []
        self.saved: list[torch.Tensor] = []
        self.layout: tuple | None = None
        self.had_state: list[set[int]] = []

    def _state_tensors(self) -> list[torch.Tensor]:
        return [value for optimizer in self.optimizers for group in optimizer.param_groups for p in group["params"]
                for value in optimizer.state.get(p, {}).values() if isinstance(value, torch.Tensor)]

    def _scaler_tensors(self) -> list[torch.Tensor]:
        return [tensor for scaler in self.scalers for tensor in (scaler._scale, scaler._growth_tracker)
                if tensor is not None]

    @torch.no_grad()
    def save(self) -> None:
        # Optimizer states appear at the first step of an optimizer that skips on the host, and load_state_dict
        # replaces an optimizer's state dict (its id is part of the layout): either re-lays the copy out.
        layout = (tuple((id(optimizer.state), len(optimizer.state)) for optimizer in self.optimizers),
                  tuple(id(tensor) for tensor in self._scaler_tensors()))
        if layout != self.layout:
            self.layout = layout
            self.live = self.fixed + self._state_tensors() + self._scaler_tensors()
            self.saved = [tensor.clone() for tensor in self.live]
        elif self.live:
            torch._foreach_copy_(self.saved, self.live)
        self.had_state = [{id(p) for p in optimizer.state} for optimizer in self.optimizers]

    @torch.no_grad()
    def restore_unless(self, taken: torch.Tensor) -> bool:
        """Put everything back as `save()` found it unless `taken` (a bool tensor) is true; whether it was.

        The one point of an iteration where the host reads from the device. Selecting between the live and the
        saved values on the device instead (no read at all) was measured: it moves the guarded tensors 9 times a
        step (concatenate, select, copy back, on top of the save) where this moves them twice, 5.9x the guard's
        CPU time on a CPU at 3 stages and, by the same bytes, about 30 ms more a step on a T4 for the course's
        1.4 GB of guarded tensors; a read costs the GPU only the time the host takes to queue its next work
        (README, Measured figures)."""
        if bool(taken):
            return True
        for optimizer, had in zip(self.optimizers, self.had_state):
            for p in [p for p in optimizer.state if id(p) not in had]:
                del optimizer.state[p]  # state the undone step created (an optimizer that skips on the host)
        if self.live:
            torch._foreach_copy_(self.live, self.saved)
        return False
