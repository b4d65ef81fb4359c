"""Evaluate a checkpoint on the preprocessed test split: FID, KID and IS (torch-fidelity) and CLIP score.

    python evaluate.py --checkpoint_path checkpoints --load_epoch 5 --test_data test_data.zip

One image is generated per test image, from one of its captions; the caption, the noise and the conditioning
augmentation's draw all come from `--seed`, so two runs (same seed and batch size) score the same images, and a
`--num_samples` estimate draws a seeded subset of the test images, each with the caption and noise it gets in
the full run. FID and KID compare the generated images with
the real 256 px test images, IS (10 splits) is of the generated ones; CLIP score is 100 x the mean cosine
between each generated image's CLIP embedding and its caption's embedding stored in the test zip (the real
images' CLIP score against the same captions is reported beside it as a reference).

The metrics see the generator's largest stage. A model with fewer than 3 stages (64 or 128 px) is upsampled
bicubically to the test images' size (256 px) first, so that FID compares like with like; the report records
the native size as `generated_size`.

Training calls `evaluate_generator` every `--eval_every` epochs with its in-memory generator; a caller that
evaluates repeatedly can instead keep one `Evaluator`, which extracts the real images' features only once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import clip_utils
import plots
from plots import to_uint8
from checkpoints import CheckpointError, load_generator
from metrics import (IS_SPLITS, EvaluationError, clip_image_embeddings, clip_score, fidelity_metrics,
                     inception_features, load_inception)
from network import Generator
from read_dataset import ZipDataset

GRID_IMAGES = 64
GRID_ROWS = 8


class _DatasetImages:
    """The test images at `indices` as a lazily stacked uint8 [N, 3, H, W] sequence: slicing copies one batch,
    so the metric code never holds a second copy of the whole test set."""

    def __init__(self, dataset: ZipDataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, batch: slice) -> torch.Tensor:
        return torch.stack([self.dataset.uint8_image(int(i)) for i in self.indices[batch]])


def load_test_dataset(path: str, clip_embedding_dim: int | None = None, progress: bool = True) -> ZipDataset:
    """The preprocessed test zip; EvaluationError (one line) when missing, unreadable, or when its embeddings
    are not `clip_embedding_dim`-dimensional (the generator's input size)."""
    if not os.path.isfile(path):
        raise EvaluationError(f"{path}: no such test zip; preprocess the test split with "
                              f"preproc_datasets_celeba_zip_test.py and pass the zip it writes")
    try:
        dataset = ZipDataset(path, 1, progress=progress)
    except ValueError as err:
        raise EvaluationError(f"test zip {err}") from None
    if clip_embedding_dim is not None and dataset.embedding_dim != clip_embedding_dim:
        raise EvaluationError(
            f"{path}: its caption embeddings are {dataset.embedding_dim}-d but the generator takes "
            f"clip_embedding_dim {clip_embedding_dim}; preprocess the test split with --emb_dim {clip_embedding_dim} "
            f"(the CLIP model used for training)")
    return dataset


class Evaluator:
    """Scores generators on a fixed draw of test images, captions and noise.

    The draw and the Inception network are made at construction, the real images' features at the first call;
    each call generates and scores one generator."""

    def __init__(self, dataset: ZipDataset, *, num_samples: int | None = None, batch_size: int = 64,
                 device: torch.device | str = "cpu", clip_model: nn.Module | None = None,
                 inception_weights: str | None = None, seed: int = 0, progress: bool = True):
        total = len(dataset)
        num_samples = total if num_samples is None else min(num_samples, total)
        if total < IS_SPLITS:
            raise EvaluationError(f"{dataset.data_path}: holds {total} images, but IS uses {IS_SPLITS} splits and "
                                  f"needs at least {IS_SPLITS}")
        if num_samples < IS_SPLITS:
            raise EvaluationError(f"--num_samples {num_samples}: IS uses {IS_SPLITS} splits, so at least "
                                  f"{IS_SPLITS} images are needed")
        if batch_size < 1:
            raise EvaluationError(f"--batch_size {batch_size}: must be at least 1")
        if clip_model is not None and clip_utils.clip_embedding_dim(clip_model) != dataset.embedding_dim:
            raise EvaluationError(
                f"--clip_model gives {clip_utils.clip_embedding_dim(clip_model)}-d embeddings but the test zip's "
                f"captions are {dataset.embedding_dim}-d; use the CLIP model that preprocessed the test zip")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.clip_model = clip_model
        self.seed = seed
        self.progress = progress
        self.image_size = dataset.image_size

        # Captions and noise are drawn for every test image and then subset, so image i gets the same caption
        # and noise whatever --num_samples is.
        rng = np.random.default_rng(seed)
        counts = np.array([dataset.caption_count(i) for i in range(total)])
        captions = rng.integers(0, counts)
        self.indices = np.arange(total) if num_samples == total else np.sort(
            rng.choice(total, num_samples, replace=False))
        self.captions = captions[self.indices]
        self.text_embeddings = torch.stack([dataset.txt_embeddings_of(int(i))[int(c)]
                                            for i, c in zip(self.indices, self.captions)]).float()

        self.inception = load_inception(inception_weights, self.device)
        self._real_features: dict[str, torch.Tensor] | None = None
        self._real_clip_score: float | None = None

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def real_features(self) -> dict[str, torch.Tensor]:
        """Inception features of the selected real images, extracted at the first call and kept."""
        if self._real_features is None:
            self._real_features = inception_features(self.inception, _DatasetImages(self.dataset, self.indices),
                                                     self.batch_size, self.progress, "real inception")
        return self._real_features

    def real_clip_score(self) -> float | None:
        """CLIP score of the real images against the same captions (a reference), computed once."""
        if self._real_clip_score is None and self.clip_model is not None:
            embeddings = clip_image_embeddings(self.clip_model, _DatasetImages(self.dataset, self.indices),
                                               self.batch_size, self.progress)
            self._real_clip_score = clip_score(embeddings, self.text_embeddings)
        return self._real_clip_score

    @torch.no_grad()
    def generate(self, generator: Generator) -> torch.Tensor:
        """One uint8 [3, S, S] image per selected test image (S: the test images' size), from its caption."""
        if generator.text_embedding_dim != self.dataset.embedding_dim:
            raise EvaluationError(
                f"{self.dataset.data_path}: its caption embeddings are {self.dataset.embedding_dim}-d but the "
                f"generator takes clip_embedding_dim {generator.text_embedding_dim}; preprocess the test split with "
                f"--emb_dim {generator.text_embedding_dim}")
        noise_all = torch.randn(len(self.dataset), generator.noise_dim,
                                generator=torch.Generator().manual_seed(self.seed))
        noise = noise_all[torch.from_numpy(self.indices)]
        was_training = generator.training
        generator.eval()
        images = []
        # Conditioning augmentation draws from the global RNG: seed it for reproducibility, inside fork_rng so
        # the caller's random stream (training's) is left exactly as it was.
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            try:
                for start in tqdm(range(0, self.num_samples, self.batch_size), desc="generating", unit="batch",
                                  disable=not self.progress, leave=False):
                    stop = start + self.batch_size
                    fake_images, _, _ = generator(self.text_embeddings[start:stop].to(self.device),
                                                  noise[start:stop].to(self.device))
                    largest = fake_images[-1].float()
                    if largest.shape[-1] != self.image_size:
                        largest = F.interpolate(largest, size=(self.image_size, self.image_size), mode="bicubic",
                                                align_corners=False)
                    images.append(to_uint8(largest).cpu())
            finally:
                generator.train(was_training)
        return torch.cat(images)

    def __call__(self, generator: Generator, grid_path: str | None = None) -> dict:
        """Generate and score; save a grid of the first 64 generated images at `grid_path` when given."""
        started = time.time()
        generated_size = 64 * 2 ** (generator.num_stage - 1)
        images = self.generate(generator)
        figures = fidelity_metrics(inception_features(self.inception, images, self.batch_size, self.progress,
                                                      "generated inception"), self.real_features())
        figures["clip_score"] = None
        figures["clip_score_real"] = self.real_clip_score()
        if self.clip_model is not None:
            embeddings = clip_image_embeddings(self.clip_model, images, self.batch_size, self.progress)
            figures["clip_score"] = clip_score(embeddings, self.text_embeddings)
        if grid_path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(grid_path)), exist_ok=True)
            shown = range(min(GRID_IMAGES, self.num_samples))
            captions = [self.dataset.captions_of(int(self.indices[i]))[int(self.captions[i])] for i in shown]
            plots.save_image_grid(images[:len(shown)].float() / 127.5 - 1, grid_path, ncol=GRID_ROWS,
                                  captions=captions if any(captions) else None)
        figures.update(num_samples=self.num_samples, seed=self.seed, generated_size=generated_size,
                       eval_size=self.image_size, seconds=round(time.time() - started, 1))
        return figures


def write_report(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def evaluate_generator(generator: Generator, dataset: ZipDataset, *, num_samples: int | None = None,
                       batch_size: int = 64, device: torch.device | str = "cpu", clip_model: nn.Module | None = None,
                       inception_weights: str | None = None, seed: int = 0, out_dir: str | None = None,
                       progress: bool = True) -> dict:
    """Score an in-memory generator on `dataset` (see `Evaluator`); with `out_dir`, also write
    `out_dir/report.json` and `out_dir/grid.png`. Returns the figures: fid, kid_mean, kid_std, is_mean, is_std,
    clip_score and clip_score_real (None without a CLIP model), and how they were made."""
    evaluator = Evaluator(dataset, num_samples=num_samples, batch_size=batch_size, device=device,
                          clip_model=clip_model, inception_weights=inception_weights, seed=seed, progress=progress)
    figures = evaluator(generator, None if out_dir is None else os.path.join(out_dir, "grid.png"))
    if out_dir is not None:
        write_report(os.path.join(out_dir, "report.json"), figures)
    return figures


def summary_line(figures: dict) -> str:
    clip_part = ""
    if figures["clip_score"] is not None:
        clip_part = f" | CLIP {figures['clip_score']:.2f} (real {figures['clip_score_real']:.2f})"
    return (f"FID {figures['fid']:.2f} | KID {figures['kid_mean']:.4f} ± {figures['kid_std']:.4f} | "
            f"IS {figures['is_mean']:.3f} ± {figures['is_std']:.3f}{clip_part} | {figures['num_samples']} images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="FID, KID, IS and CLIP score of a checkpoint on the test split.")
    parser.add_argument("--checkpoint_path", required=True, help="folder with hyperparameter.pt and epoch files")
    parser.add_argument("--load_epoch", type=int, required=True, help="epoch N of epoch_N_Gen.pt")
    parser.add_argument("--test_data", required=True, help="preprocessed test zip")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="score this many test images (a seeded subset) for a quick estimate; default all")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clip_model", default="ViT-B/32",
                        help="CLIP name, or a local state-dict file; must be the model that preprocessed the zip")
    parser.add_argument("--inception_weights", default=None,
                        help="torch-fidelity's InceptionV3 weights file; downloaded when absent")
    parser.add_argument("--out", default=None,
                        help="JSON report path (default CHECKPOINT_PATH/eval_epoch_N.json); the grid goes beside it")
    parser.add_argument("--seed", type=int, default=0, help="caption, noise and subset draw")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EvaluationError(f"--device {name!r}: not a device name (use cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def load_clip_model(name_or_path: str, device: torch.device) -> nn.Module:
    try:
        return clip_utils.load_clip(name_or_path, device)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    except (OSError, RuntimeError) as err:  # a failed download, or a file of another architecture
        raise EvaluationError(f"--clip_model {name_or_path}: cannot load CLIP ({type(err).__name__}: {err}); "
                              f"pass a local CLIP state-dict file") from None


def run(args: argparse.Namespace) -> dict:
    """The CLI's work; returns the report (also written to --out)."""
    device = resolve_device(args.device)
    if args.num_samples is not None and args.num_samples < IS_SPLITS:
        raise EvaluationError(f"--num_samples {args.num_samples}: at least {IS_SPLITS} (IS uses {IS_SPLITS} splits)")
    out = args.out or os.path.join(args.checkpoint_path, f"eval_epoch_{args.load_epoch}.json")
    grid_path = os.path.splitext(out)[0] + "_grid.png"
    generator, hyp = load_generator(args.checkpoint_path, args.load_epoch, device)
    progress = not args.quiet
    dataset = load_test_dataset(args.test_data, hyp["clip_embedding_dim"], progress)
    clip_model = load_clip_model(args.clip_model, device)
    evaluator = Evaluator(dataset, num_samples=args.num_samples, batch_size=args.batch_size, device=device,
                          clip_model=clip_model, inception_weights=args.inception_weights, seed=args.seed,
                          progress=progress)
    report = evaluator(generator, grid_path)
    report.update(checkpoint_path=args.checkpoint_path, load_epoch=args.load_epoch, test_data=args.test_data,
                  clip_model=args.clip_model, inception_weights=args.inception_weights, device=str(device),
                  batch_size=args.batch_size, grid=grid_path)
    write_report(out, report)
    print(f"{summary_line(report)} -> {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (EvaluationError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
