"""Image transforms shared by preprocessing, the dataset, training and evaluation.

* `clip_resize` / `clip_normalize` / `random_crop_resize`: CLIP's input transforms, behind the course's
  `train_utils.clip_transform`, `clip_preprocess` and `custom_reshape`.

* `stage_images_from_uint8`: uint8 images -> the per-stage float images in [-1, 1] (area downsampling),
  on whatever device the images are on, so training can do it on the GPU.
* `random_square_crop` / `clip_view`: the random crop of `random_crop_resize`, and the whole
  `clip_resize(224)` + `random_crop_resize` chain that L_ConG applies to generated images, done as two small
  matrix products per image. Both resizes are linear and separable, so their composition is one [224, n]
  matrix per axis; the result equals the chain to float rounding and draws the same random numbers, but
  its backward pass is a pair of matmuls instead of two bicubic backward kernels (about 10x faster on CPU).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

from t2i.clip_utils import CLIP_MEAN, CLIP_STD


def stage_images_from_uint8(images_uint8: torch.Tensor, num_stage: int) -> list[torch.Tensor]:
    """[B, C, H, W] uint8 -> num_stage float tensors [B, C, 64 * 2**s, 64 * 2**s] in [-1, 1].

    Sizes at or below the stored size are area-downsampled (an exact box average for integer factors);
    a stage larger than the stored image is upsampled bicubically and clamped.
    """
    if images_uint8.dim() != 4:
        raise ValueError(f"stage_images_from_uint8: expected [B, C, H, W], got shape {tuple(images_uint8.shape)}")
    images = images_uint8.float().div_(127.5).sub_(1.0)
    height, width = images.shape[-2:]
    stages = []
    for stage in range(num_stage):
        size = 64 * 2 ** stage
        if (size, size) == (height, width):
            stages.append(images)
        elif size <= height and size <= width:
            stages.append(F.interpolate(images, size=(size, size), mode="area"))
        else:
            stages.append(F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp_(-1, 1))
    return stages


def clip_resize(n_px: int) -> Compose:
    """Bicubic resize of the short side to n_px, then a centre crop to n_px x n_px (works on batches)."""
    return Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px)])


def clip_normalize() -> Normalize:
    """CLIP's input normalisation, for [0, 1] images."""
    return Normalize(CLIP_MEAN, CLIP_STD)


def random_crop_resize(img: torch.Tensor, mode: str = "bicubic", ratio: float = 0.99,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One random square crop of at least `ratio` of the side, resized to 224 (the same for the whole batch).

    Images under 224 px are instead padded with 1.0 (white) at a random offset. `generator` makes the crop
    reproducible (preprocessing); by default the global torch RNG is used."""
    size = img.shape[-2]
    if size < 224:
        pad_left = int(torch.randint(0, 224 - size + 1, (), generator=generator))
        pad_top = int(torch.randint(0, 224 - size + 1, (), generator=generator))
        return F.pad(img, (pad_left, 224 - size - pad_left, pad_top, 224 - size - pad_top), value=1.0)
    crop, left, top = random_square_crop(size, ratio, generator)
    cropped = img[..., top:top + crop, left:left + crop]
    return F.interpolate(cropped, size=(224, 224), mode=mode, align_corners=False)


def random_square_crop(size: int, ratio: float, generator: torch.Generator | None = None) -> tuple[int, int, int]:
    """(side, left, top) of a random square crop of at least `ratio` of `size`, drawn in random_crop_resize's order."""
    crop = int(torch.randint(int(ratio * size), size + 1, (), generator=generator))
    left = int(torch.randint(0, size - crop + 1, (), generator=generator))
    top = int(torch.randint(0, size - crop + 1, (), generator=generator))
    return crop, left, top


@functools.lru_cache(maxsize=32)
def _resize_matrix(in_size: int, out_size: int, antialias: bool) -> torch.Tensor:
    """[out_size, in_size] float64 matrix of a 1-D bicubic resize, read off F.interpolate applied to a basis."""
    basis = torch.eye(in_size, dtype=torch.float64)[None, None]
    return F.interpolate(basis, size=(out_size, in_size), mode="bicubic", align_corners=False,
                         antialias=antialias)[0, 0]


@functools.lru_cache(maxsize=64)
def _crop_resize_matrix(in_size: int, size: int, crop: int, start: int, device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    """[size, in_size] matrix of resizing to `size`, cropping `crop` from `start`, resizing back to `size`, on the
    device. Cached: a crop of at least 0.99 of 224 px takes one of ten (crop, start) pairs per axis, so after the
    first steps no iteration builds one on the host or copies one to the device (a copy that would make the host
    wait for the device)."""
    matrix = _resize_matrix(crop, size, False) @ _resize_matrix(in_size, size, True)[start:start + crop]
    return matrix.to(device, dtype)


def clip_view(images: torch.Tensor, size: int = 224, ratio: float = 0.99,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """`random_crop_resize(clip_resize(size)(images), ratio=ratio)` for square [B, C, n, n] images, as matmuls.

    clip_resize is torchvision's tensor Resize (bicubic with antialiasing; its centre crop is a
    no-op on square images); random_crop_resize crops and resizes back with plain bicubic interpolation.
    """
    height, width = images.shape[-2:]
    if height != width:
        raise ValueError(f"clip_view: expected square images, got {height}x{width}")
    crop, left, top = random_square_crop(size, ratio, generator)
    rows = _crop_resize_matrix(height, size, crop, top, images.device, images.dtype)
    cols = _crop_resize_matrix(height, size, crop, left, images.device, images.dtype)
    return rows @ images @ cols.t()
