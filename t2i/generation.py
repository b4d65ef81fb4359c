"""Images from a prompt: the text feature as the graders compute it, the generator's images, the PNG files.

Used by `generate_image.py`, `check_submission.py` and the benchmarks.
"""
from __future__ import annotations

import math
import os

import torch

from t2i import clip_utils, plots
from t2i.errors import T2IError
from t2i.files import make_folder, remove_file, remove_stale_temp_files

# Every name save_results writes; a run removes those it does not write itself, so that a folder never shows
# another run's images beside this one's (a 1-stage model's result_64.png beside an older result_256.png).
RESULT_NAMES = ("result_64.png", "result_128.png", "result_256.png", "result_grid.png")


def check_prompt(prompt: str) -> None:
    """Refuse a prompt with no text: CLIP would encode only its start and end tokens, an image of nothing asked."""
    if not prompt.strip():
        raise T2IError(f"--prompt {prompt!r}: is blank; describe the image, e.g. \"The woman is young and has blond "
                       f"hair.\"")


def encode_prompt(clip_model: torch.nn.Module, prompt: str, device: torch.device) -> torch.Tensor:
    """normalize(encode_text(tokenize(prompt))), [1, D] float32: normalised in CLIP's dtype (fp16 on CUDA) and then
    cast, in the graders' order."""
    check_prompt(prompt)
    try:
        tokens = clip_utils.tokenize([prompt])
    except ValueError:
        raise T2IError(f"--prompt is longer than CLIP's {clip_utils.CONTEXT_LENGTH} tokens; shorten it") from None
    with torch.no_grad():
        features = clip_model.encode_text(tokens.to(device))
        return (features / features.norm(dim=-1, keepdim=True)).type(torch.float32)


@torch.no_grad()
def generate(generator: torch.nn.Module, txt_feature: torch.Tensor, noise_dim: int, num_images: int,
             device: torch.device) -> list[torch.Tensor]:
    """One [num_images, 3, H, W] batch in [-1, 1] per stage; noise ~ N(0, I) of shape [n, noise_dim]."""
    noise = torch.randn(num_images, noise_dim).to(device)
    fake_images, _, _ = generator(txt_feature.expand(num_images, -1), noise)
    return [images.float().cpu() for images in fake_images]


def check_out_dir(out_dir: str, flag: str = "--out_dir") -> None:
    """Refuse an output folder that is a file, before any work is done."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise T2IError(f"{flag} {out_dir}: is a file, not a folder; give a folder for the images")


def save_results(fake_images: list[torch.Tensor], out_dir: str, prompt: str) -> list[str]:
    """result_{64,128,256}.png for the stages that exist: one image, or a grid of all of them. Files of those
    names that this call does not write (another run's) are removed from `out_dir`; nothing else is touched."""
    make_folder(out_dir, "--out_dir")
    remove_stale_temp_files(out_dir, lambda name: name in RESULT_NAMES)
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
    for name in RESULT_NAMES:
        path = os.path.join(out_dir, name)
        if path not in paths and os.path.isfile(path):
            remove_file(path)
    return paths
