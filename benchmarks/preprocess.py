"""Preprocessing throughput (images/s) with a ViT-B/32-sized random CLIP: batched against one image at a time.

Builds a synthetic raw dataset and a random-weight ViT-B/32 CLIP in a temporary folder, then runs the train
preprocessing twice: with --batch_size B and decoding threads, and with --batch_size 1 and one thread.

    python -m benchmarks.preprocess --n 48 --batch_size 16
    python -m benchmarks.preprocess --n 512 --batch_size 128 --device cuda
"""
from __future__ import annotations

import argparse
import os
import tempfile
from argparse import Namespace

import torch

import preproc_datasets_celeba_zip_train
from t2i import clip_utils
from t2i.data import preprocessing
from t2i.synthetic import world


def throughput(source: str, clip_path: str, dest: str, device: str, batch_size: int, workers: int, n: int,
               captions: int) -> float:
    argv = ["--source", source, "--dest", dest, "--clip_model", clip_path, "--device", device, "--max-images", str(n),
            "--batch_size", str(batch_size), "--num_workers", str(workers), "--num_captions", str(captions),
            "--overwrite"]
    # The train command's own option parsing, then the pipeline itself (whose summary holds the timing).
    values = preproc_datasets_celeba_zip_train.convert_dataset.make_context("preprocess", argv).params
    summary = preprocessing.run(Namespace(**values), "train")
    return summary.written / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="images per run")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--captions", type=int, default=4, help="captions encoded per image")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        clip_path = clip_utils.make_random_clip(os.path.join(folder, "vit_b_32_random.pt"), "vit-b-32", 512)
        raw = world.write_raw_dataset(folder, num_images=args.n, num_train=args.n, num_test=0, size=512,
                                      seed=0, long_captions=0.05)
        source, dest = raw["paths"]["source"], os.path.join(folder, "out.zip")
        # A short warm-up so both measurements start with loaded weights and warm kernels.
        throughput(source, clip_path, dest, args.device, 4, 1, 4, args.captions)
        batched = throughput(source, clip_path, dest, args.device, args.batch_size, args.num_workers, args.n,
                             args.captions)
        single = throughput(source, clip_path, dest, args.device, 1, 1, args.n, args.captions)
    print(f"device {args.device}, {torch.get_num_threads()} torch threads, ViT-B/32-sized random CLIP, "
          f"{args.n} images of 512 px, {args.captions} captions each")
    print(f"batched (batch {args.batch_size}, {args.num_workers} decode threads): {batched:.1f} img/s")
    print(f"one image at a time (batch 1, 1 thread):         {single:.1f} img/s")
    print(f"speed-up: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
