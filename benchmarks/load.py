"""Load time and peak RSS of ZipDataset against a loader that behaves like the course's, for N images.

The preprocessed zip is written directly (random photo-like images and random embeddings) with the preprocessing's
own writer, so it has exactly the real format without running CLIP. Each loader runs in a fresh subprocess so
its peak RSS is its own.

    python -m benchmarks.load --n 2400
    python -m benchmarks.load --n 24000 --captions 4 --course_max 0
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import PIL.Image
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_zip(path: str, n: int, captions: int, emb_dim: int, size: int) -> None:
    from t2i.data.preprocessing import PreprocessedZipWriter

    rng = np.random.default_rng(0)
    # Smooth colour fields plus grain: a stand-in for photos (the stored PNGs are uncompressed, so content
    # does not change their size or their decoding cost).
    pool = []
    for _ in range(32):
        base = torch.from_numpy(rng.random((1, 3, 8, 8), dtype=np.float32))
        smooth = torch.nn.functional.interpolate(base, size=size, mode="bicubic", align_corners=False)[0]
        grain = rng.normal(0, 8, (size, size, 3))
        pool.append(np.clip(smooth.permute(1, 2, 0).numpy() * 255 + grain, 0, 255).astype(np.uint8))
    with PreprocessedZipWriter(path, emb_dim, {"benchmark": True}) as writer:
        for i in range(n):
            image = np.roll(pool[i % len(pool)], i % size, axis=1)
            writer.add(image, rng.standard_normal(emb_dim, dtype=np.float32),
                       rng.standard_normal((captions, emb_dim), dtype=np.float32), str(i))


def course_style_load(path: str) -> int:
    """The course loader's behaviour: parse dataset.json, decode every PNG with Pillow, keep 64 px float copies."""
    archive = zipfile.ZipFile(path)
    meta = json.loads(archive.read("dataset.json"))
    captions = dict(meta["clip_txt_features"])
    images, img_features, txt_features = [], [], []
    for name, feature in meta["clip_img_features"]:
        with PIL.Image.open(io.BytesIO(archive.read(name))) as image:
            small = image.convert("RGB").resize((64, 64), PIL.Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 127.5 - 1)
        img_features.append(torch.tensor(feature))
        txt_features.append(torch.tensor(captions[name]))
    return len(images)


def child(kind: str, path: str) -> None:
    start = time.perf_counter()
    if kind == "ours":
        from t2i.data.zip_dataset import ZipDataset

        dataset = ZipDataset(path, 3, progress=False)
        dataset[0]
        count = len(dataset)
    else:
        count = course_style_load(path)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(json.dumps({"kind": kind, "n": count, "seconds": seconds, "peak_rss_gb": peak_gb}))


def measure(kind: str, path: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "benchmarks.load", "--child", kind, path],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2400, help="number of images")
    parser.add_argument("--captions", type=int, default=4, help="captions per image")
    parser.add_argument("--emb_dim", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--course_max", type=int, default=5000,
                        help="measure the course-style loader only up to this many images (it is slow)")
    parser.add_argument("--workdir", default=None, help="where to write the zip (default: a temporary folder)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        path = os.path.join(folder, "bench.zip")
        start = time.perf_counter()
        write_zip(path, args.n, args.captions, args.emb_dim, args.size)
        print(f"wrote {args.n} images x {args.captions} captions ({os.path.getsize(path) / 1e9:.2f} GB) "
              f"in {time.perf_counter() - start:.1f} s")
        results = [measure("ours", path)]
        if args.n <= args.course_max:
            results.append(measure("course", path))
        for r in results:
            label = "ZipDataset (256 px uint8)" if r["kind"] == "ours" else "course-style (64 px float)"
            print(f"{label:28s} n={r['n']}: load {r['seconds']:.2f} s, peak RSS {r['peak_rss_gb']:.2f} GB")
        if len(results) == 2:
            print(f"ratio ours/course: {results[0]['seconds'] / results[1]['seconds']:.3f} of the time")


if __name__ == "__main__":
    main()
