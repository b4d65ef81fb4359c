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
    def update(self, generator: nn.Module, num_updates: int) -> None:
        # A short warm-up, so that the average is not dominated by the random initialisation in short runs.
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        torch._foreach_lerp_(self._ema_params, [p.detach() for p in generator.parameters()], 1 - decay)
        if self._ema_buffers:  # GALIP's generator has no BatchNorm, so no buffers
            torch._foreach_copy_(self._ema_buffers, list(generator.buffers()))
