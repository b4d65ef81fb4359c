"""Small image helpers shared by preprocessing, the dataset, training and evaluation.

* `clip_resize` / `clip_normalize` / `random_crop_resize`: CLIP's input transforms, behind the course's
  `train_utils.clip_transform`, `clip_preprocess` and `custom_reshape`.

* `stage_images_from_uint8`: uint8 images -> the per-stage float images in [-1, 1] (area downsampling),
  on whatever device the images are on, so training can do it on the GPU.
* `random_square_crop` / `clip_view`: the random crop of `random_crop_resize`, and the whole
  `clip_resize(224)` + `random_crop_resize` chain that L_ConG applies to generated images, done as two small
  matrix products per image. Both resizes are linear and separable, so their composition is one [224, n]
  matrix per axis; the result equals the chain to float rounding and draws the same random numbers, but
  its backward pass is a pair of matmuls instead of two bicubic backward kernels (about 10x faster on CPU).
* `encode_png` / `decode_png`: the preprocessed zips store 256 px PNGs uncompressed and unfiltered (the
  course also stores them uncompressed). Such a file is a valid PNG for any reader, and decoding it is a
  memory copy, which is what lets `ZipDataset` load 24000 real 256 px images in seconds. `decode_png` falls
  back to Pillow for any other PNG (for example zips written by the course's own preprocessing script).
"""
from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

from t2i.clip_utils import CLIP_MEAN, CLIP_STD

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    to_size = _resize_matrix(height, size, True)
    from_crop = _resize_matrix(crop, size, False)
    rows = (from_crop @ to_size[top:top + crop]).to(images.device, images.dtype)
    cols = (from_crop @ to_size[left:left + crop]).to(images.device, images.dtype)
    return rows @ images @ cols.t()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(image: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> an RGB PNG with filter type 0 on every row and stored (level 0) deflate blocks."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_png: expected an [H, W, 3] uint8 array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = image.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
            + _chunk(b"IEND", b""))


def _decode_unfiltered_png(data: bytes | memoryview) -> np.ndarray | None:
    """The fast path for PNGs written by `encode_png`-like writers; None when the file needs a full decoder."""
    data = memoryview(data)
    if bytes(data[:8]) != PNG_SIGNATURE or bytes(data[12:16]) != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or colour != 2 or interlace != 0:
        return None
    pos, idat = 33, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = bytes(data[pos + 4:pos + 8])
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    raw = zlib.decompress(idat[0] if len(idat) == 1 else b"".join(idat))
    if len(raw) != height * (1 + 3 * width):
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + 3 * width)
    if rows[:, 0].any():
        return None
    return rows[:, 1:].reshape(height, width, 3)


def decode_png(data: bytes | memoryview) -> np.ndarray:
    """PNG (or any image Pillow reads) bytes -> [H, W, 3] uint8 RGB array."""
    image = _decode_unfiltered_png(data)
    if image is not None:
        return image
    with PIL.Image.open(io.BytesIO(data)) as pil_image:
        return np.asarray(pil_image.convert("RGB"))
