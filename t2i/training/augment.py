"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for the discriminators' inputs.

The same kind of random transform is applied to real and fake images before every discriminator call, in
the D step and in the G step alike; being differentiable, it lets the generator's gradient through. It
keeps the discriminator from memorising a small training set. Images are in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> (); unknown names are an error."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"--diffaugment: unknown policy {unknown}; choose from {list(POLICIES)}")
    return names


def _color(x: torch.Tensor) -> torch.Tensor:
    batch = x.shape[0]
    x = x + (torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with zeros (a gather, so it is differentiable)."""
    batch, _, height, width = x.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (batch, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (batch, 1, 1), device=x.device)
    rows = torch.arange(height, device=x.device)[None, :, None] + dy  # [B, H, 1]
    cols = torch.arange(width, device=x.device)[None, None, :] + dx   # [B, 1, W]
    padded = F.pad(x, (1, 1, 1, 1))  # index 0 and W+1 hold zeros for positions shifted off the image
    rows = rows.clamp(-1, height) + 1
    cols = cols.clamp(-1, width) + 1
    batch_index = torch.arange(batch, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch_index, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` of the size at a random place in each image."""
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height + (1 - cut_h % 2), (batch, 1, 1), device=x.device) - cut_h // 2
    left = torch.randint(0, width + (1 - cut_w % 2), (batch, 1, 1), device=x.device) - cut_w // 2
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """Apply each transform of `policy` with fresh random parameters per image."""
    for name in policy:
        x = _TRANSFORMS[name](x)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
