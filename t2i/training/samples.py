"""The per-epoch sample grid, `result_path/epoch_N.png`: fixed captions x fixed noises, beside the real image.

The same captions, noises and conditioning-augmentation draws every epoch, so that epochs compare at a glance.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i import plots

SAMPLE_ROWS, SAMPLE_COLS = 8, 4  # 8 fixed captions x 4 fixed noises (+ the real image)
SAMPLE_SEED = 1234


def sample_conditions(dataset, count: int = SAMPLE_ROWS) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """The first caption of the first `count` images (normalised embeddings), those images in [-1, 1] at their
    largest size, and the caption texts when the zip holds them (our ZipDataset; the course's loader has none)."""
    count = min(count, len(dataset))
    with torch.random.fork_rng(devices=[]):  # the course's loader picks a caption at random
        torch.manual_seed(SAMPLE_SEED)
        items = [dataset[i] for i in range(count)]
    if hasattr(dataset, "txt_embeddings_of"):
        txt = torch.stack([torch.as_tensor(dataset.txt_embeddings_of(i)[0]) for i in range(count)])
    else:
        txt = torch.stack([item[2] for item in items])
    first = items[0][0]
    if isinstance(first, torch.Tensor) and first.dtype == torch.uint8:
        real = torch.stack([item[0] for item in items]).float() / 127.5 - 1
    else:
        real = torch.stack([item[0][-1] for item in items])
    texts = [dataset.captions_of(i)[0] for i in range(count)] if hasattr(dataset, "captions_of") else None
    return F.normalize(txt.float(), dim=-1), real, texts if texts and any(texts) else None


@torch.no_grad()
def save_sample_grid(generator: nn.Module, txt: torch.Tensor, real: torch.Tensor, texts: list[str] | None,
                     noise_dim: int, path: str, device: torch.device) -> None:
    """Rows: the fixed captions (printed under the real image); first column the real image, then SAMPLE_COLS
    fixed noises, drawn by `generator` in eval mode (as the graders run it)."""
    was_training = generator.training
    generator.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(SAMPLE_SEED)
        noise = torch.randn(SAMPLE_COLS, txt.shape[0], noise_dim).to(device)
        columns = [generator(txt.to(device), noise[c])[0][-1].float().cpu() for c in range(SAMPLE_COLS)]
    generator.train(was_training)
    size = columns[0].shape[-1]
    real = F.interpolate(real.float(), size=(size, size), mode="area")
    captions = [text if column == 0 else "" for text in texts for column in range(SAMPLE_COLS + 1)] if texts else None
    plots.save_image_grid(torch.stack([real, *columns], dim=1).flatten(0, 1), path, ncol=SAMPLE_COLS + 1,
                          captions=captions)
