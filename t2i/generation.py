"""Images from a prompt: the text feature as the graders compute it, the generator's images, the PNG files.

Used by `generate_image.py`, `check_submission.py` and the benchmarks.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from t2i import clip_utils, plots
from t2i.errors import T2IError


def encode_prompt(clip_model: torch.nn.Module, prompt: str, device: torch.device) -> torch.Tensor:
    """normalize(encode_text(tokenize(prompt))) as float32, [1, D]."""
    try:
        tokens = clip_utils.tokenize([prompt])
    except ValueError:
        raise T2IError(f"--prompt is longer than CLIP's {clip_utils.CONTEXT_LENGTH} tokens; shorten it") from None
    with torch.no_grad():
        return F.normalize(clip_model.encode_text(tokens.to(device)).float(), dim=-1)


@torch.no_grad()
def generate(generator: torch.nn.Module, txt_feature: torch.Tensor, noise_dim: int, num_images: int,
             device: torch.device) -> list[torch.Tensor]:
    """One [num_images, 3, H, W] batch in [-1, 1] per stage; noise ~ N(0, I) of shape [n, noise_dim]."""
    noise = torch.randn(num_images, noise_dim).to(device)
    fake_images, _, _ = generator(txt_feature.expand(num_images, -1), noise)
    return [images.float().cpu() for images in fake_images]


def save_results(fake_images: list[torch.Tensor], out_dir: str, prompt: str) -> list[str]:
    """result_{64,128,256}.png for the stages that exist: one image, or a grid of all of them."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for images in fake_images[-3:]:
        path = os.path.join(out_dir, f"result_{images.shape[-1]}.png")
        ncol = math.ceil(math.sqrt(len(images)))
        plots.save_image_grid(images, path, ncol=ncol)
        paths.append(path)
    if len(fake_images[-1]) > 1:
        path = os.path.join(out_dir, "result_grid.png")
        plots.save_image_grid(fake_images[-1], path, ncol=math.ceil(math.sqrt(len(fake_images[-1]))),
                              captions=[f"{prompt} (#{i})" for i in range(len(fake_images[-1]))])
        paths.append(path)
    return paths
