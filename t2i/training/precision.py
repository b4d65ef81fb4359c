"""Mixed precision: which autocast a device gets, and optimizer steps with gradient scaling.

On CUDA, `--amp` (the default there) runs the forward passes in fp16 under autocast and scales the losses
(`torch.amp.GradScaler`), so that small fp16 gradients do not underflow; a step whose gradients overflow is
skipped by the scaler. On a CPU, `--amp` means bf16 autocast (no scaling: bf16 has fp32's range); it is off by
default there, and refused on a CPU without native bf16 support, where it is many times slower than fp32.
"""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field

import torch

from t2i.errors import T2IError


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (x86 AVX512-BF16 or AMX, Arm BF16); elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: Apple silicon has bf16 instructions, older Intel Macs do not
        return platform.machine() in ("arm64", "aarch64")
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", flags) is not None


@dataclass
class Precision:
    """Autocast settings and the two gradient scalers (discriminators, generator) of one run."""
    device_type: str
    autocast_dtype: torch.dtype | None  # None: fp32 throughout
    loss_scaling: bool
    scaler_d: torch.amp.GradScaler = field(init=False)
    scaler_g: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler_d = torch.amp.GradScaler(self.device_type, enabled=self.loss_scaling)
        self.scaler_g = torch.amp.GradScaler(self.device_type, enabled=self.loss_scaling)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def state_dict(self) -> dict:
        return {"scaler_d": self.scaler_d.state_dict(), "scaler_g": self.scaler_g.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])


def precision_for(device: torch.device, amp: bool | None) -> Precision:
    """fp16 with loss scaling on CUDA unless --no-amp; fp32 on a CPU unless --amp (bf16)."""
    if device.type == "cuda":
        return Precision("cuda", torch.float16 if amp in (None, True) else None, amp in (None, True))
    if amp and not cpu_has_native_bf16():
        raise T2IError(f"--amp on the CPU means bf16, which this CPU ({torch.backends.cpu.get_cpu_capability()}) "
                       f"only emulates, many times slower than fp32; leave --amp off on this machine")
    return Precision(device.type, torch.bfloat16 if amp else None, False)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can skip a step on the device (it takes `found_inf`, as fused Adam does)."""
    return getattr(optimizer, "_step_supports_amp_scaling", False)


def step_unless_found_inf(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """One step of an optimizer that `skips_on_device`, skipped on the device when `found_inf` (a float tensor) is
    1: the way torch.amp.GradScaler.step hands the flag over."""
    optimizer.found_inf = found_inf
    optimizer.step()
    del optimizer.found_inf


def step_if_finite(optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler, loss: torch.Tensor,
                   also_required: torch.Tensor | None = None, processes=None) -> torch.Tensor:
    """After `scaler.scale(loss).backward()`: one step of each optimizer, skipped when the loss is not finite (or
    `also_required`, a bool tensor, is false). Returns whether it was taken, as a bool tensor on the loss's device:
    the skip happens there, with nothing read back to the host, so the host never waits for the device here.

    The fused optimizers training builds (`adam_options`) skip on the device: they take `found_inf` as the
    gradient scaler hands it to them (the scaler's own check of the gradients, with loss scaling; else the
    loss's). Any other optimizer (a plain `train_step`'s) is stepped only after the host has read the flag. Under
    torchrun (`processes`, t2i/training/distributed.py) the gradients are first summed over the processes, which
    then all take the step or all skip it, and `loss` becomes the global batch's."""
    finite = torch.isfinite(loss.detach())
    if also_required is not None:
        finite = finite & also_required
    if processes is not None:
        finite = processes.sum_gradients(optimizers, loss, finite)
    if scaler.is_enabled():
        # The scaler skips a step whose gradients are not finite. A non-finite loss can still have finite
        # gradients (an infinite term no weight reaches): one NaN gradient element makes the scaler skip it too.
        nan_unless_finite = torch.where(finite, 0.0, float("nan"))
        for optimizer in optimizers:
            grad = next((p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None),
                        None)
            if grad is not None:
                grad[(0,) * grad.dim()].add_(nan_unless_finite)
            scaler.step(optimizer)
        scaler.update()
    elif all(skips_on_device(optimizer) for optimizer in optimizers):
        found_inf = (~finite).float()
        for optimizer in optimizers:
            step_unless_found_inf(optimizer, found_inf)
    elif bool(finite):
        for optimizer in optimizers:
            optimizer.step()
    return finite


def adam_options(device: torch.device) -> dict:
    """Adam's fused kernel, on CUDA and on a CPU alike: one operation a step (on a 2-core CPU 4x faster than the
    multi-tensor one, whose CPU version also reads every step count back with .item()), and it can skip a step
    on the device (`found_inf`, see `step_if_finite`)."""
    return {"fused": True}
