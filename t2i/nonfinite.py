"""A training step whose loss is not finite changes nothing.

One NaN caption embedding, or one fp16 overflow on a T4, makes a step's losses non-finite. Skipping its update
is not enough: the forward passes have already written NaN into the BatchNorm running statistics, and every
later checkpoint would draw garbage in eval mode (what the graders run). `BatchNormGuard` keeps a copy of
every BatchNorm buffer taken before the step and puts it back when the step is skipped.

Whether a step was skipped is known on the device only (`precision.step_optimizers`): reading it on the host
would make the host wait for the device twice an iteration. So the copy goes back on the device: a select
between the live and the saved statistics, done on all of them at once.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BatchNormGuard:
    """Snapshots the BatchNorm running statistics of some models, and puts them back on the device when a step
    was not taken. The buffers are grouped by dtype and shape kind (the [C] statistics, the scalar counters), so
    each direction is a few operations whatever the number of layers."""

    def __init__(self, models: list[nn.Module]):
        buffers = [buffer for model in models for module in model.modules()
                   if isinstance(module, nn.modules.batchnorm._BatchNorm) for buffer in module.buffers()]
        groups: dict[tuple[torch.dtype, bool], list[torch.Tensor]] = {}
        for buffer in buffers:
            groups.setdefault((buffer.dtype, buffer.dim() == 0), []).append(buffer)
        self.groups = list(groups.values())
        self.saved = [self._flat(group) for group in self.groups]

    @staticmethod
    def _flat(group: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """One 1-D tensor of a group's values (scalars stacked, vectors concatenated)."""
        join = torch.stack if group[0].dim() == 0 else torch.cat
        return join(group) if out is None else join(group, out=out)

    @torch.no_grad()
    def save(self) -> None:
        for group, saved in zip(self.groups, self.saved):
            self._flat(group, out=saved)

    @torch.no_grad()
    def restore_unless(self, taken: torch.Tensor) -> None:
        """Put the saved statistics back unless `taken` (a bool tensor on the device) is true."""
        for group, saved in zip(self.groups, self.saved):
            kept = torch.where(taken, self._flat(group), saved)
            parts = kept.unbind() if group[0].dim() == 0 else kept.split([buffer.numel() for buffer in group])
            torch._foreach_copy_(group, parts)
