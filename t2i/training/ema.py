"""An exponential moving average of the generator's weights, saved as `epoch_N_Gen.pt` (`--ema`, in `--recipe fast`).

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


# The average's BatchNorm statistics are measured on this many batches of training captions and fresh noise, drawn
# with this seed: the same batches every time, so a resumed run saves what an uninterrupted one saves.
BATCHNORM_BATCHES, BATCHNORM_SEED = 8, 4321


class GeneratorEMA:
    """The average of `generator`'s weights; `saved_model` is what becomes epoch_N_Gen.pt. Its BatchNorm statistics
    are measured on captions of `dataset` (items as ZipDataset's, (images, image embedding, text embedding))."""

    def __init__(self, generator: nn.Module, decay: float, dataset=None, batch_size: int = 64, noise_dim: int = 100):
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)
        self.decay = decay
        self.dataset, self.batch_size, self.noise_dim = dataset, batch_size, noise_dim
        self.statistics_at: int | None = None  # the update count when the statistics were last measured
        self._ema_params = list(self.model.parameters())
        self._ema_buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self, generator: nn.Module, num_updates: int) -> None:
        # A short warm-up, so that the average is not dominated by the random initialisation in short runs.
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        torch._foreach_lerp_(self._ema_params, [p.detach() for p in generator.parameters()], 1 - decay)
        if self._ema_buffers:  # GALIP's generator has no BatchNorm, so no buffers
            torch._foreach_copy_(self._ema_buffers, list(generator.buffers()))

    def saved_model(self, num_updates: int) -> nn.Module:
        """The average, with BatchNorm statistics measured through itself (once per `num_updates`, the count of
        updates so far), in eval mode."""
        if self.statistics_at != num_updates and self.dataset is not None:
            device = next(self.model.parameters()).device
            # A private random stream (the caption pick and the CA's noise draw from the global one), so that
            # training's random numbers, and an exact resume, are untouched.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(BATCHNORM_SEED)
                recompute_batchnorm(self.model, self.batchnorm_batches(device))
            self.statistics_at = num_updates
        return self.model

    def batchnorm_batches(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """BATCHNORM_BATCHES batches of (caption embedding, noise) as training draws them: random training images,
        one of each image's captions, N(0, I) noise; in fp32, as the graders generate."""
        size = min(self.batch_size, len(self.dataset))
        batches = []
        for _ in range(BATCHNORM_BATCHES):
            indices = torch.randperm(len(self.dataset))[:size].tolist()
            text = torch.stack([torch.as_tensor(self.dataset[index][2]) for index in indices]).float()
            noise = torch.randn(size, self.noise_dim)
            # Our ZipDataset leaves non-finite embeddings out; the course's loader cannot, and one NaN caption here
            # would make every statistic NaN.
            finite = torch.isfinite(text).all(dim=1)
            if int(finite.sum()) >= 2:
                batches.append((text[finite].to(device), noise[finite].to(device)))
        return batches


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
