"""Raw Multimodal CelebA-HQ (zip or folder) -> preprocessed training/test zip with CLIP embeddings.

The one module behind `preproc_datasets_celeba_zip_train.py` and `preproc_datasets_celeba_zip_test.py`: their
click command `convert_dataset` takes the options declared here (`course_options`) and calls `convert`. The
skeleton's helpers `open_dataset`, `open_dest` and `make_transform` are here too.

Output zip (stored, not deflated):
* `NNNNN/imgNNNNNNNN.png`: 256x256 RGB PNGs (uncompressed and unfiltered: valid for every reader, and a
  memory copy to decode).
* `dataset.json`: the course's format, `{"clip_img_features": [[name, [D]], ...], "clip_txt_features":
  [[name, [[D] per caption]], ...]}` with raw CLIP outputs, plus a `preprocess` entry recording the settings
  (among them the CLIP's name and fingerprint, which training, generation and evaluation check).
* `embeddings.npz` (see EMBEDDINGS_MEMBER): the same embeddings in binary form, read by our ZipDataset.

Image embedding: a random crop of at least 0.99 of each side, resized to 224, CLIP-normalised, `encode_image`;
the crop is drawn from a generator seeded by (--seed, image id), so it does not depend on batching or threads.
Caption embedding: `encode_text`; a caption over 77 tokens is split at periods and commas and the parts'
embeddings are averaged (a part still too long is truncated; both are counted in the summary).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import sys
import time
import zipfile
import zlib
from argparse import Namespace
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import click
import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from t2i import clip_utils
from t2i.data.images import clip_normalize, random_crop_resize
from t2i.data.png import encode_png
from t2i.data.zip_dataset import EMBEDDINGS_MEMBER, JSON_MEMBER
from t2i.devices import resolve_device
from t2i.errors import T2IError, os_error, write_error
from t2i.files import atomic_write_text, make_folder, remove_file, remove_stale_temp_files, temp_path

# EMBEDDINGS_MEMBER, the binary embeddings: an uncompressed .npz (no pickled objects) holding
#   names [N] str (PNG member names), ids [N] str (raw dataset ids), img_emb [N, D] float32,
#   txt_emb [M, D] float32 (all captions, image by image), txt_offsets [N + 1] int64
#   (image i owns txt_emb[txt_offsets[i]:txt_offsets[i + 1]]), captions [M] str (the caption texts, in the
#   same order, for captioned grids), settings [] str (JSON: what made the zip, the CLIP's identity among it),
#   format_version [] int64.
FORMAT_VERSION = 2
DEFAULT_NUM_CAPTIONS = {"train": 4, "test": None}
IMAGE_FOLDERS = ("image", "images")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CROP_RATIO = 0.99
# Image sides a run can use: the first stage is 64 px; ZipDataset holds every image in memory (24000 at 1024 px:
# 75 GB).
MIN_SIZE, MAX_SIZE = 64, 1024
RESIZE_FILTERS = {"box": PIL.Image.BOX, "lanczos": PIL.Image.LANCZOS}


def course_options(split: str) -> Callable:
    """The click options of `convert_dataset`: the course's (in its order), then ours."""
    default_captions = DEFAULT_NUM_CAPTIONS[split]
    declared = [
        click.option("--source", required=True, help="raw dataset: multimodal_celeba_hq.zip or its folder"),
        click.option("--dest", required=True, help="output zip"),
        click.option("--max-images", "max_images", type=int, default=None,
                     help="use only the first N ids of the split (a quick sample run)"),
        click.option("--transform", type=click.Choice(["center-crop", "center-crop-wide"]), default="center-crop",
                     show_default=True, help="crop to the output's aspect ratio before resizing"),
        click.option("--resize-filter", "resize_filter", type=click.Choice(sorted(RESIZE_FILTERS)),
                     default="lanczos", show_default=True, help="resampling filter"),
        click.option("--width", type=int, default=256, show_default=True, help="output width"),
        click.option("--height", type=int, default=256, show_default=True, help="output height"),
        click.option("--emb_dim", type=int, default=512, show_default=True,
                     help="CLIP embedding size (512 for ViT-B/32)"),
        click.option("--clip_model", default="ViT-B/32", show_default=True,
                     help="CLIP name or a local CLIP file (see main.py's --clip_model: a TorchScript file runs code)"),
        click.option("--num_captions", type=int, default=default_captions,
                     help=f"captions kept per image (default: {default_captions or 'all'})"),
        click.option("--batch_size", type=int, default=64, show_default=True, help="images per CLIP encoding batch"),
        click.option("--split_dir", default=None,
                     help=f"folder of celeba_filenames_{split}.pickle (default: beside --source, then .)"),
        click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)"),
        click.option("--overwrite", is_flag=True, help="replace --dest if it exists (never --source)"),
        click.option("--seed", type=int, default=0, show_default=True, help="seed of the random CLIP crops"),
        click.option("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                     help="threads decoding images while CLIP encodes (default: up to 8, one per core)"),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(declared):
            command = option(command)
        return command

    return decorate


# ----------------------------------------------------------------------------------------------- raw input

class RawSource:
    """The raw dataset, a zip or a folder: images under image/ or images/, captions in a folder named *caption*."""

    def __init__(self, path: str):
        self.path = path
        self.archive: zipfile.ZipFile | None = None
        if not os.path.exists(path):
            raise T2IError(f"--source {path}: no such file or folder; pass the path of multimodal_celeba_hq.zip")
        if os.path.isdir(path):
            members = [os.path.relpath(os.path.join(root, name), path).replace(os.sep, "/")
                       for root, _, names in os.walk(path) for name in names]
        elif zipfile.is_zipfile(path):
            self.archive = zipfile.ZipFile(path)
            members = self.archive.namelist()
        else:
            raise T2IError(f"--source {path}: not a zip file or a folder")
        self.images: dict[str, str] = {}
        self.captions: dict[str, str] = {}
        for member in members:
            parts = member.split("/")
            if len(parts) < 2:
                continue
            folder, stem, extension = parts[-2].lower(), *os.path.splitext(parts[-1])
            if folder in IMAGE_FOLDERS and extension.lower() in IMAGE_EXTENSIONS:
                self.images.setdefault(stem, member)
            elif "caption" in folder and extension.lower() == ".txt":
                self.captions.setdefault(stem, member)
        if not self.images:
            raise T2IError(f"--source {path}: no images found (expected image/<id>.jpg or images/<id>.jpg)")
        if not self.captions:
            raise T2IError(f"--source {path}: no caption files found (expected a folder named like "
                                  "celeba-caption holding <id>.txt)")

    def read(self, member: str) -> bytes:
        if self.archive is not None:
            return self.archive.read(member)
        with open(os.path.join(self.path, member), "rb") as f:
            return f.read()

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def find_split_file(split: str, source: str, split_dir: str | None) -> str:
    name = f"celeba_filenames_{split}.pickle"
    folders = [split_dir] if split_dir else [os.path.dirname(os.path.abspath(source)), os.getcwd()]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    flag = "--split_dir" if split_dir else "--split_dir (not given)"
    raise T2IError(f"{name} not found in {' or '.join(folders)}; put it there or pass {flag} with its folder")


class _ListOfStrings(pickle.Unpickler):
    """Unpickles plain data only: a pickle naming any class or function (code it would run) is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}, and a split list holds only strings")


def read_split_ids(path: str) -> list[str]:
    """The ids of a split pickle: a list of strings, read without running anything the file could hold."""
    try:
        with open(path, "rb") as f:
            ids = _ListOfStrings(f, encoding="latin1").load()  # latin1: Python 2 pickles of str
    except Exception as err:
        raise T2IError(f"{path}: not a plain pickled list of ids ({err}); use the course's split file") from None
    if not isinstance(ids, (list, tuple)) or not ids or not all(isinstance(i, (str, int)) for i in ids):
        raise T2IError(f"{path}: expected a non-empty pickled list of id strings")
    return [str(i) for i in ids]


# ------------------------------------------------------------------------------------------ image handling

def make_transform(transform: str, width: int, height: int, resize_filter: str
                   ) -> Callable[[PIL.Image.Image], np.ndarray]:
    """Center crop to the output aspect ratio, then resize to width x height: PIL image -> [H, W, 3] uint8."""
    resample = RESIZE_FILTERS[resize_filter]
    aspect = 1.0 if transform == "center-crop" else width / height

    def apply(image: PIL.Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        w, h = image.size
        crop_w, crop_h = (w, round(w / aspect)) if w / h <= aspect else (round(h * aspect), h)
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), resample)
        return np.array(image)

    return apply


def crop_generator(seed: int, image_id: str) -> torch.Generator:
    """The generator of one image's CLIP crop: depends only on the seed and the raw id."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{image_id}".encode()))


def clip_image_input(image: np.ndarray, generator: torch.Generator, ratio: float = CROP_RATIO) -> torch.Tensor:
    """[H, W, 3] uint8 -> CLIP input [3, 224, 224]: the course's custom_reshape (a random crop of at least
    `ratio` of the side resized to 224, padded instead when smaller), then CLIP normalisation."""
    # torch.tensor copies: decoded images are often read-only arrays, which from_numpy would warn about.
    pixels = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1).div_(255)
    return clip_normalize()(random_crop_resize(pixels[None], ratio=ratio, generator=generator))[0]


# ---------------------------------------------------------------------------------------- caption handling

def split_long_caption(caption: str) -> list[str]:
    """The pieces of a caption between periods and commas (empty pieces dropped)."""
    return [part.strip() for part in re.split(r"[.,]", caption) if part.strip()]


@dataclass
class CaptionTokens:
    tokens: torch.Tensor            # [P, 77]: one row per caption, or per part of a long caption
    owner: list[int]                # caption index of each row
    num_captions: int
    num_long: int = 0               # captions split at periods and commas
    num_truncated: int = 0          # parts still over 77 tokens, truncated
    texts: list[str] = field(default_factory=list)  # the captions themselves, kept for captioned grids


def tokenize_captions(captions: list[str]) -> CaptionTokens:
    rows, owner, num_long, num_truncated = [], [], 0, 0
    for index, caption in enumerate(captions):
        try:
            rows.append(clip_utils.tokenize([caption]))
            owner.append(index)
            continue
        except ValueError:
            num_long += 1
        for part in split_long_caption(caption) or [caption]:
            try:
                rows.append(clip_utils.tokenize([part]))
            except ValueError:
                rows.append(clip_utils.tokenize([part], truncate=True))
                num_truncated += 1
            owner.append(index)
    return CaptionTokens(torch.cat(rows), owner, len(captions), num_long, num_truncated, list(captions))


def read_captions(data: bytes, num_captions: int | None) -> list[str]:
    lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines()]
    captions = [line for line in lines if line]
    return captions if num_captions is None else captions[:num_captions]


# -------------------------------------------------------------------------------------------- output zip

def archive_name(index: int) -> str:
    digits = f"{index:08d}"
    return f"{digits[:5]}/img{digits}.png"


class PreprocessedZipWriter:
    """Writes the preprocessed zip under a temporary name; `close()` adds the embeddings and renames it.

    Used as a context manager, an exception removes the temporary file, so an interrupted run never leaves a
    truncated zip under the final name.
    """

    def __init__(self, path: str, emb_dim: int, settings: dict | None = None):
        self.path = path
        self.emb_dim = emb_dim
        self.settings = settings or {}
        self.temp_path = temp_path(path)
        try:
            self.archive = zipfile.ZipFile(self.temp_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        except OSError as err:  # a read-only or vanished folder
            raise write_error(path, err) from None
        self.names: list[str] = []
        self.ids: list[str] = []
        self.img_emb: list[np.ndarray] = []
        self.txt_emb: list[np.ndarray] = []
        self.captions: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def add(self, image: np.ndarray, img_emb: np.ndarray, txt_emb: np.ndarray, source_id: str,
            captions: list[str] | None = None) -> str:
        """Add one [H, W, 3] uint8 image with its raw [D] image and [n, D] caption embeddings (and, optionally,
        the n caption texts, which grids print under the images)."""
        img_emb = np.asarray(img_emb, dtype=np.float32).reshape(-1)
        txt_emb = np.asarray(txt_emb, dtype=np.float32).reshape(-1, self.emb_dim)
        if img_emb.shape[0] != self.emb_dim or len(txt_emb) == 0:
            raise ValueError(f"{source_id}: expected a {self.emb_dim}-d image embedding and at least one caption")
        captions = list(captions) if captions is not None else [""] * len(txt_emb)
        if len(captions) != len(txt_emb):
            raise ValueError(f"{source_id}: {len(captions)} caption texts for {len(txt_emb)} caption embeddings")
        name = archive_name(len(self.names))
        self.archive.writestr(name, encode_png(image))
        self.names.append(name)
        self.ids.append(str(source_id))
        self.img_emb.append(img_emb)
        self.txt_emb.append(txt_emb)
        self.captions.extend(captions)
        return name

    def _write_json(self) -> None:
        # Streamed entry by entry: the full training set's JSON is over a gigabyte.
        info = zipfile.ZipInfo(JSON_MEMBER, time.localtime()[:6])
        with self.archive.open(info, "w", force_zip64=True) as f:
            f.write(b'{"clip_img_features": [')
            for i, (name, emb) in enumerate(zip(self.names, self.img_emb)):
                f.write(((", " if i else "") + json.dumps([name, emb.tolist()])).encode())
            f.write(b'], "clip_txt_features": [')
            for i, (name, emb) in enumerate(zip(self.names, self.txt_emb)):
                f.write(((", " if i else "") + json.dumps([name, emb.tolist()])).encode())
            f.write(b'], "preprocess": ' + json.dumps(self.settings).encode() + b"}")

    def _write_embeddings(self) -> None:
        counts = np.array([len(t) for t in self.txt_emb], dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, names=np.array(self.names), ids=np.array(self.ids),
                 img_emb=np.stack(self.img_emb), txt_emb=np.concatenate(self.txt_emb),
                 txt_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                 captions=np.array(self.captions, dtype=str), settings=np.array(json.dumps(self.settings)),
                 format_version=np.array(FORMAT_VERSION, dtype=np.int64))
        self.archive.writestr(EMBEDDINGS_MEMBER, buffer.getbuffer())

    def close(self) -> None:
        if not self.names:
            self.abort()
            raise T2IError(f"--dest {self.path}: no images were written")
        self._write_json()
        self._write_embeddings()
        self.archive.close()
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        """Remove the temporary file, whatever state a failed write left the archive in."""
        try:
            self.archive.close()  # may fail again (a full disk cannot take the central directory either)
        except (OSError, ValueError, zipfile.BadZipFile):
            pass
        finally:
            if self.archive.fp is not None:
                self.archive.fp.close()  # frees the disk space at once
            remove_file(self.temp_path)

    def __enter__(self) -> "PreprocessedZipWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            try:
                self.close()
            except BaseException as err:
                self.abort()
                if isinstance(err, OSError):  # a full disk or a lost folder while finishing the zip
                    raise write_error(self.path, err) from None
                raise
            return
        self.abort()
        if isinstance(value, OSError):  # a full disk or a lost folder while writing
            raise write_error(self.path, value) from None


# ------------------------------------------------------------------------------------------------ pipeline

@dataclass
class Sample:
    image_id: str
    image: np.ndarray | None = None
    clip_input: torch.Tensor | None = None
    captions: CaptionTokens | None = None
    error: str | None = None


@dataclass
class Summary:
    written: int = 0
    captions: int = 0
    long_captions: int = 0
    truncated_parts: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)   # split ids without an image or caption file
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    problems_file: str | None = None                   # where the full lists went


def _load_sample(source: RawSource, image_id: str, transform: Callable, seed: int, num_captions: int | None) -> Sample:
    """Runs in a worker thread: read, decode, crop and resize one image, and tokenize its captions."""
    try:
        with PIL.Image.open(io.BytesIO(source.read(source.images[image_id]))) as pil_image:
            image = transform(pil_image)
    except Exception as err:
        return Sample(image_id, error=f"{source.images[image_id]}: {type(err).__name__}: {err}")
    try:
        captions = read_captions(source.read(source.captions[image_id]), num_captions)
    except Exception as err:
        return Sample(image_id, error=f"{source.captions[image_id]}: {type(err).__name__}: {err}")
    if not captions:
        return Sample(image_id, error=f"{source.captions[image_id]}: no caption text")
    return Sample(image_id, image, clip_image_input(image, crop_generator(seed, image_id)), tokenize_captions(captions))


@torch.no_grad()
def encode_batch(model: torch.nn.Module, samples: list[Sample], device: torch.device,
                 text_batch: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """Raw CLIP image embeddings [B, D] and, per sample, caption embeddings [n, D] (long captions averaged)."""
    dtype = clip_utils.clip_dtype(model)
    images = torch.stack([s.clip_input for s in samples]).to(device, dtype)
    img_emb = model.encode_image(images).float().cpu()
    tokens = torch.cat([s.captions.tokens for s in samples])
    rows = torch.cat([model.encode_text(chunk.to(device)).float().cpu() for chunk in tokens.split(text_batch)])
    per_sample, start = [], 0
    for s in samples:
        count = len(s.captions.owner)
        owner = torch.tensor(s.captions.owner)
        sums = torch.zeros(s.captions.num_captions, rows.shape[1]).index_add_(0, owner, rows[start:start + count])
        parts = torch.bincount(owner, minlength=s.captions.num_captions).unsqueeze(1)
        per_sample.append((sums / parts).numpy())
        start += count
    return img_emb.numpy(), per_sample


def open_dataset(source_path: str, split: str, split_dir: str | None, max_images: int | None
                 ) -> tuple[RawSource, list[str], int]:
    """The raw dataset, the ids of `split` it has an image and a caption file for (the first `max_images`),
    and how many of the split's ids it lacks."""
    source = RawSource(source_path)
    split_path = find_split_file(split, source_path, split_dir)
    ids = read_split_ids(split_path)
    present = [i for i in ids if i in source.images and i in source.captions]
    missing = [i for i in ids if i not in source.images or i not in source.captions]
    if not present:
        source.close()
        raise T2IError(f"{split_path}: none of its {len(ids)} ids has both an image and a caption file in "
                       f"{source.path}; check that the pickle belongs to this dataset")
    if missing:
        print(f"warning: {len(missing)} of {len(ids)} {split} ids have no image or caption in {source.path} "
              f"(first: {', '.join(missing[:5])}; the full list goes to DEST{PROBLEMS_SUFFIX}); continuing with "
              f"{len(present)}", file=sys.stderr)
    source.missing_ids = missing
    return source, present[:max_images] if max_images is not None else present, len(missing)


def protected_inputs(source: str, split_dir: str | None) -> list[str]:
    """The files preprocessing reads and must never replace: the raw dataset and both split lists."""
    protected = [source]
    for split in DEFAULT_NUM_CAPTIONS:
        try:
            protected.append(find_split_file(split, source, split_dir))
        except T2IError:
            pass
    return protected


def check_dest(dest: str, overwrite: bool, protected: list[str]) -> None:
    """--dest may not be a folder, an existing file (unless --overwrite), or one of the `protected` inputs (the raw
    zip, the split pickles) under any name (a relative path, a symbolic or hard link), even with --overwrite."""
    if os.path.isdir(dest):
        raise T2IError(f"--dest {dest}: is a folder; pass a zip file name")
    real_dest = os.path.realpath(dest)

    def same(path: str) -> bool:  # the same path through links, or the same file under another name (a hard link)
        if not os.path.exists(path):
            return False
        return os.path.realpath(path) == real_dest or (os.path.exists(dest) and os.path.samefile(path, dest))

    if any(same(path) for path in protected):
        raise T2IError(f"--dest {dest}: is an input of this run (the raw dataset or a split list); choose another "
                       f"file name, such as train_data.zip")
    if os.path.exists(dest) and not overwrite:
        raise T2IError(f"--dest {dest}: already exists; choose another name, or pass --overwrite to replace it")


def open_dest(dest: str, overwrite: bool, protected: list[str], emb_dim: int, settings: dict
              ) -> PreprocessedZipWriter:
    """The writer of the output zip, after the checks that keep the input safe (`check_dest`). Temporary files of
    earlier interrupted runs for this --dest are removed."""
    check_dest(dest, overwrite, protected)
    folder = os.path.dirname(os.path.abspath(dest))
    make_folder(folder, "--dest")
    for path in remove_stale_temp_files(folder, lambda name: name == os.path.basename(dest)):
        print(f"Removed {path}, left by an interrupted run")
    return PreprocessedZipWriter(dest, emb_dim, settings)


def run(args: Namespace, split: str) -> Summary:
    """Preprocess `split` with the command's options; T2IError for bad input."""
    if args.max_images is not None and args.max_images < 1:
        raise T2IError(f"--max-images {args.max_images}: must be at least 1")
    if args.num_captions is not None and args.num_captions < 1:
        raise T2IError(f"--num_captions {args.num_captions}: must be at least 1")
    for name in ("batch_size", "num_workers", "emb_dim"):
        if getattr(args, name) < 1:
            raise T2IError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.width != args.height:
        raise T2IError(f"--width {args.width} --height {args.height}: must be equal (CLIP's crop and every stage "
                       f"are square); the course uses --width 256 --height 256")
    if not MIN_SIZE <= args.width <= MAX_SIZE:
        raise T2IError(f"--width {args.width}: must be {MIN_SIZE} (the first stage's size) to {MAX_SIZE} (training "
                       f"holds every image in memory); the course uses 256")
    device = resolve_device(args.device)
    source, ids, num_missing = open_dataset(args.source, split, args.split_dir, args.max_images)
    protected = protected_inputs(args.source, args.split_dir)
    try:
        check_dest(args.dest, args.overwrite, protected)  # before the work, not only before the write
        model = clip_utils.load_clip(args.clip_model, device)
        clip_dim = clip_utils.clip_embedding_dim(model)
        if clip_dim != args.emb_dim:
            raise T2IError(f"--emb_dim {args.emb_dim}: --clip_model {args.clip_model} gives {clip_dim}-d "
                           f"embeddings; pass --emb_dim {clip_dim}")
        settings = {"split": split, "clip": clip_utils.clip_identity_of(model), "emb_dim": clip_dim,
                    "seed": args.seed, "num_captions": args.num_captions, "transform": args.transform,
                    "width": args.width, "height": args.height, "resize_filter": args.resize_filter,
                    "crop_ratio": CROP_RATIO, "format_version": FORMAT_VERSION}
        transform = make_transform(args.transform, args.width, args.height, args.resize_filter)
        summary = Summary(skipped=num_missing, missing=list(getattr(source, "missing_ids", [])))
        start = time.time()
        with open_dest(args.dest, args.overwrite, protected, clip_dim, settings) as writer, \
                ThreadPoolExecutor(args.num_workers) as pool, \
                tqdm(total=len(ids), unit="img", desc=f"preprocess {split}", dynamic_ncols=True) as bar:
            # Decoding runs ahead in the pool (bounded) while the main thread encodes and writes.
            pending: deque = deque()
            queue = iter(ids)
            ahead = 2 * args.batch_size + args.num_workers
            batch: list[Sample] = []
            while True:
                while len(pending) < ahead:
                    image_id = next(queue, None)
                    if image_id is None:
                        break
                    pending.append(pool.submit(_load_sample, source, image_id, transform, args.seed,
                                               args.num_captions))
                if pending:
                    sample = pending.popleft().result()
                    if sample.error is None:
                        batch.append(sample)
                    else:
                        summary.failed.append(sample.error)
                        bar.update(1)
                if batch and (len(batch) == args.batch_size or not pending):
                    img_emb, txt_emb = encode_batch(model, batch, device)
                    for s, image_emb, caption_emb in zip(batch, img_emb, txt_emb):
                        if not (np.isfinite(image_emb).all() and np.isfinite(caption_emb).all()):
                            summary.failed.append(f"{source.images[s.image_id]}: CLIP gave NaN or Inf embeddings")
                            continue
                        writer.add(s.image, image_emb, caption_emb, s.image_id, s.captions.texts)
                        summary.captions += len(caption_emb)
                        summary.long_captions += s.captions.num_long
                        summary.truncated_parts += s.captions.num_truncated
                    bar.update(len(batch))
                    batch = []
                if not pending:
                    break
            summary.written = len(writer)
            if not summary.written:
                raise T2IError(f"--source {args.source}: none of the {len(ids)} selected images could be read "
                               f"(first: {summary.failed[0]})")
        summary.seconds = time.time() - start
        summary.problems_file = write_problems(summary, args.dest)
        return summary
    finally:
        source.close()


PROBLEMS_SUFFIX = ".problems.txt"
SHOWN_FAILURES = 3


def write_problems(summary: Summary, dest: str) -> str | None:
    """Every id skipped and every image that failed, one a line, in DEST.problems.txt (None when there is
    none, and an older list of that name, from an earlier run, is removed)."""
    path = dest + PROBLEMS_SUFFIX
    if not summary.failed and not summary.missing:
        remove_file(path)
        return None
    lines = [f"unreadable\t{failure}" for failure in summary.failed]
    lines += [f"no image or caption\t{image_id}" for image_id in summary.missing]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def format_summary(summary: Summary, dest: str) -> str:
    rate = summary.written / max(summary.seconds, 1e-9)
    text = (f"done: wrote {summary.written} images with {summary.captions} captions to {dest} in "
            f"{summary.seconds:.1f} s ({rate:.1f} img/s); {summary.long_captions} captions over 77 tokens split "
            f"and averaged")
    if summary.truncated_parts:
        text += f" ({summary.truncated_parts} parts still too long, truncated)"
    text += f"; skipped {summary.skipped} ids without image or caption; failed {len(summary.failed)} unreadable"
    if summary.failed:
        shown = "; ".join(summary.failed[:SHOWN_FAILURES])
        more = f"; and {len(summary.failed) - SHOWN_FAILURES} more" if len(summary.failed) > SHOWN_FAILURES else ""
        text += f" ({shown}{more})"
    if summary.problems_file:
        text += f"; full list in {summary.problems_file}"
    return text


def convert(split: str, **values) -> Summary:
    """The body of the preprocessing commands: `values` are convert_dataset's options; prints the summary."""
    try:
        summary = run(Namespace(**values), split)
    except OSError as err:  # one not met where a file is written (a vanished source, a lost drive)
        raise os_error(err, where=f"--source {values['source']} or --dest {values['dest']}") from None
    print(format_summary(summary, values["dest"]))
    return summary
