"""`ZipDataset(data_path, num_stage)`: the preprocessed zip as a torch Dataset (the course's `read_dataset` name).

Item i is `(images, img_embedding, txt_embedding)`: a list of num_stage float tensors [3, 64 * 2**s, 64 * 2**s]
in [-1, 1], the L2-normalised image embedding [D] and one of the image's caption embeddings, L2-normalised and
picked uniformly at random.

Unlike the course's loader (which keeps 64 px copies and upsamples them), all real 256 px images are kept in
one uint8 array (4.7 GB for the 24000 training images) and every stage is area-downsampled from them.
Loading is fast because preprocess.py stores the PNGs stored and unfiltered: reading one is a file read and
a memory copy, done by a few threads. Embeddings come from the zip's `embeddings.npz`, or from `dataset.json`
for zips written by the course's own script (whose PNGs then go through Pillow, more slowly).

Images whose image embedding or any caption embedding holds NaN or Inf (a damaged zip, or a CLIP that overflowed)
are left out when the zip is loaded, with one printed line naming them; a zip with no other image is refused.

Set `dataset.return_uint8 = True` to get `(uint8 [3, H, W], img_embedding, txt_embedding)` instead, and make
the stage images on the GPU with `image_ops.stage_images_from_uint8`.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from t2i.data.images import stage_images_from_uint8
from t2i.data.png import decode_png
from t2i.errors import T2IError

JSON_MEMBER = "dataset.json"
EMBEDDINGS_MEMBER = "embeddings.npz"
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, skipped fields, file name length, extra field length
CHUNK = 256
SHOWN_LEFT_OUT = 3  # images named in the line about those left out


class _MemberReader:
    """Reads zip members by name; stored members straight from the file with os.pread (thread-safe, no copy
    through zipfile), other members through zipfile."""

    def __init__(self, path: str, archive: zipfile.ZipFile):
        self.path = path
        self.archive = archive
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, name: str) -> bytes:
        info = self.archive.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return self.archive.read(name)
        header = os.pread(self.fd, LOCAL_HEADER.size, info.header_offset)
        signature, name_length, extra_length = LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise T2IError(f"{self.path}: corrupt zip (bad local header for {name})")
        start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
        data = os.pread(self.fd, info.compress_size, start)
        if len(data) != info.compress_size:
            raise T2IError(f"{self.path}: truncated zip ({name} is cut short)")
        return data

    def close(self) -> None:
        os.close(self.fd)


def _embeddings_from_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        embeddings = {key: npz[key] for key in ("names", "ids", "img_emb", "txt_emb", "txt_offsets")}
        if "captions" in npz.files:  # caption texts (written since format 1 of preprocessing, for grids)
            embeddings["captions"] = npz["captions"]
        if "settings" in npz.files:  # what made the zip: the CLIP's name and fingerprint, ... (format 2)
            embeddings["settings"] = json.loads(str(npz["settings"]))
        return embeddings


def _embeddings_from_json(data: bytes) -> dict:
    meta = json.loads(data)
    captions = {name: features for name, features in meta["clip_txt_features"]}
    names = [name for name, _ in meta["clip_img_features"]]
    txt = [np.asarray(captions[name], dtype=np.float32).reshape(len(captions[name]), -1) for name in names]
    counts = np.array([len(t) for t in txt], dtype=np.int64)
    return {
        "names": np.array(names),
        "ids": np.array(names),
        "img_emb": np.asarray([features for _, features in meta["clip_img_features"]], dtype=np.float32),
        "txt_emb": np.concatenate(txt),
        "txt_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    }


class ZipDataset(Dataset):
    def __init__(self, data_path: str, num_stage: int, return_uint8: bool = False, num_threads: int | None = None,
                 progress: bool = True):
        self.data_path = data_path
        self.num_stage = num_stage
        self.return_uint8 = return_uint8
        try:
            archive = zipfile.ZipFile(data_path)
        except FileNotFoundError:
            raise T2IError(f"{data_path}: no such file; pass the preprocessed zip as --train_data") from None
        except (zipfile.BadZipFile, IsADirectoryError, OSError) as err:
            raise T2IError(f"{data_path}: not a readable zip ({err}); preprocess the dataset again") from None
        with archive:
            members = set(archive.namelist())
            try:
                if EMBEDDINGS_MEMBER in members:
                    embeddings = _embeddings_from_npz(archive.read(EMBEDDINGS_MEMBER))
                elif JSON_MEMBER in members:
                    embeddings = _embeddings_from_json(archive.read(JSON_MEMBER))
                else:
                    raise T2IError("no dataset.json or embeddings.npz inside")
            except (T2IError, ValueError, KeyError, zipfile.BadZipFile, OSError, EOFError) as err:
                raise T2IError(f"{data_path}: corrupt or not a preprocessed zip ({err}); preprocess it again") from None
            self.names = [str(n) for n in embeddings["names"]]
            self.ids = [str(i) for i in embeddings["ids"]]
            missing = [name for name in self.names if name not in members]
            if missing:
                raise T2IError(f"{data_path}: {len(missing)} images listed in the embeddings are missing from "
                                 f"the zip (first: {missing[0]})")
            self.img_emb = torch.from_numpy(embeddings["img_emb"])
            self.txt_emb = torch.from_numpy(embeddings["txt_emb"])
            self.txt_offsets = torch.from_numpy(embeddings["txt_offsets"])
            self.caption_counts = self.txt_offsets[1:] - self.txt_offsets[:-1]
            self.caption_texts = [str(c) for c in embeddings["captions"]] if "captions" in embeddings else None
            self.embedding_dim = int(self.img_emb.shape[1])
            self.settings: dict = embeddings.get("settings", {})
            if not self.names or len(self.img_emb) != len(self.names) or len(self.txt_offsets) != len(self.names) + 1:
                raise T2IError(f"{data_path}: embeddings and image list disagree in length")
            self.left_out = self._leave_out_nonfinite()
            self.images = self._load_images(archive, num_threads, progress)

    def _leave_out_nonfinite(self) -> list[str]:
        """Drop the images with a NaN or Inf image or caption embedding (module docstring); their names."""
        caption_owner = torch.repeat_interleave(torch.arange(len(self.names)), self.caption_counts)
        bad_caption = ~torch.isfinite(self.txt_emb).all(dim=1)
        keep = torch.isfinite(self.img_emb).all(dim=1)
        keep[caption_owner[bad_caption]] = False
        if bool(keep.all()):
            return []
        left_out = [self.names[i] for i in (~keep).nonzero().flatten().tolist()]
        if not bool(keep.any()):
            raise T2IError(f"{self.data_path}: every one of its {len(self.names)} images has NaN or Inf CLIP "
                           f"embeddings, so nothing can be trained or scored on it; preprocess the dataset again")
        kept = keep.nonzero().flatten()
        kept_captions = keep[caption_owner]
        shown = ", ".join(f"{self.names[i]} (id {self.ids[i]})" for i in (~keep).nonzero().flatten()[:SHOWN_LEFT_OUT])
        more = f" and {len(left_out) - SHOWN_LEFT_OUT} more" if len(left_out) > SHOWN_LEFT_OUT else ""
        print(f"Warning: {self.data_path}: {len(left_out)} of {len(self.names)} images have NaN or Inf CLIP "
              f"embeddings and are left out: {shown}{more}")
        self.names = [self.names[i] for i in kept.tolist()]
        self.ids = [self.ids[i] for i in kept.tolist()]
        self.img_emb = self.img_emb[kept]
        self.txt_emb = self.txt_emb[kept_captions]
        self.caption_counts = self.caption_counts[kept]
        self.txt_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self.caption_counts, 0)])
        if self.caption_texts is not None:
            self.caption_texts = [text for text, k in zip(self.caption_texts, kept_captions.tolist()) if k]
        return left_out

    def _load_images(self, archive: zipfile.ZipFile, num_threads: int | None, progress: bool) -> np.ndarray:
        """All images into one [N, H, W, 3] uint8 array, filled by a few threads."""
        reader = _MemberReader(self.data_path, archive)
        try:
            first = decode_png(reader.read(self.names[0]))
            images = np.empty((len(self.names), *first.shape), dtype=np.uint8)

            def load(start: int) -> int:
                stop = min(start + CHUNK, len(self.names))
                for index in range(start, stop):
                    data = reader.read(self.names[index])
                    try:
                        image = decode_png(data)
                    except Exception as err:
                        raise T2IError(f"{self.data_path}: unreadable image {self.names[index]} ({err})") from None
                    if image.shape != first.shape:
                        raise T2IError(f"{self.data_path}: {self.names[index]} is {image.shape}, expected "
                                         f"{first.shape} like the other images")
                    images[index] = image
                return stop - start

            threads = num_threads or min(4, os.cpu_count() or 1)
            with ThreadPoolExecutor(threads) as pool, tqdm(total=len(self.names), unit="img", disable=not progress,
                                                           desc=f"loading {os.path.basename(self.data_path)}") as bar:
                for done in as_completed([pool.submit(load, s) for s in range(0, len(self.names), CHUNK)]):
                    bar.update(done.result())
        finally:
            reader.close()
        return images

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def uint8_image(self, index: int) -> torch.Tensor:
        """[3, H, W] uint8 copy of image `index`."""
        return torch.from_numpy(self.images[index]).permute(2, 0, 1).contiguous()

    def img_embedding_of(self, index: int, normalized: bool = True) -> torch.Tensor:
        emb = self.img_emb[index]
        return F.normalize(emb, dim=-1) if normalized else emb.clone()

    def txt_embeddings_of(self, index: int, normalized: bool = True) -> torch.Tensor:
        """All caption embeddings [n, D] of image `index`, in the order of its caption file."""
        emb = self.txt_emb[self.txt_offsets[index]:self.txt_offsets[index + 1]]
        return F.normalize(emb, dim=-1) if normalized else emb.clone()

    def captions_of(self, index: int) -> list[str]:
        """The caption texts of image `index` (empty strings for zips written without them)."""
        start, stop = int(self.txt_offsets[index]), int(self.txt_offsets[index + 1])
        return self.caption_texts[start:stop] if self.caption_texts is not None else [""] * (stop - start)

    def caption_count(self, index: int) -> int:
        return int(self.caption_counts[index])

    def __getitem__(self, index: int):
        image = self.uint8_image(index)
        pick = int(self.txt_offsets[index]) + int(torch.randint(int(self.caption_counts[index]), (1,)))
        txt_embedding = F.normalize(self.txt_emb[pick], dim=-1)
        img_embedding = F.normalize(self.img_emb[index], dim=-1)
        if self.return_uint8:
            return image, img_embedding, txt_embedding
        stages = stage_images_from_uint8(image[None], self.num_stage)
        return [stage[0] for stage in stages], img_embedding, txt_embedding
