"""An exponential moving average of the generator's weights, saved as `epoch_N_Gen.pt` (`--ema`, on by default).

GAN generators oscillate around good solutions; the average of recent weights draws cleaner, more stable
images than the last iterate (Karras et al., "Progressive Growing of GANs", and most GANs since).

BatchNorm's running statistics cannot be averaged like weights: while training they are copied from the raw
generator, but they describe the raw generator's activations, not the average's. In eval mode (what the graders
run) the average would normalise its own activations with another network's statistics, so before the average
is saved `recompute_batchnorm` measures them again on a few batches through the average itself.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

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


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
    """Replace the running statistics of every BatchNorm layer in `model` by the plain average, over `batches`
    (each the positional arguments of one forward call), of the batch statistics `model` itself computes in
    train mode: what training mode would normalise with. `model` is left in eval mode."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # nothing to measure (GALIP's generator): no forward passes
        model.eval()
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch counts the same
    model.train()
    for inputs in batches:
        model(*inputs)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()
