"""An exponential moving average of the generator's weights, saved as `epoch_N_Gen.pt` (`--ema`, on by default).

GAN generators oscillate around good solutions; the average of recent weights draws cleaner, more stable
images than the last iterate (Karras et al., "Progressive Growing of GANs", and most GANs since). BatchNorm's
running statistics are copied from the raw generator, not averaged.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class GeneratorEMA:
    def __init__(self, generator: nn.Module, decay: float):
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)
        self.decay = decay
        self._ema_params = list(self.model.parameters())
        self._ema_buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self, generator: nn.Module, num_updates: torch.Tensor, taken: torch.Tensor) -> None:
        """One step of the average towards `generator`, with nothing read back to the host: `num_updates` (the
        updates so far) and `taken` (whether this step's update happened; when not, the average stays exactly as
        it was) are tensors on the device."""
        # A short warm-up, so that the average is not dominated by the random initialisation in short runs.
        decay = torch.clamp_max((1 + num_updates) / (10 + num_updates), self.decay)
        weight = (1 - decay) * taken
        # average + weight * (weights - average), in place: foreach lerp takes its weight from the host only.
        step = torch._foreach_sub(list(generator.parameters()), self._ema_params)
        torch._foreach_mul_(step, weight)
        torch._foreach_add_(self._ema_params, step)
        torch._foreach_copy_(self._ema_buffers, list(generator.buffers()))
