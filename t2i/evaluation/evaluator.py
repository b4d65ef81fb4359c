"""Scoring a generator on the preprocessed test split: FID, KID and IS (torch-fidelity) and CLIP score.

Used by `evaluate.py` (a checkpoint) and by training every `--eval_every` epochs (the generator in memory). One
image is generated per test image, from one of its captions; the caption, the noise and the conditioning
augmentation's draw all come from `--seed`, so two runs (same seed and batch size) score the same images, and a
`--num_samples` estimate draws a seeded subset of the test images, each with the caption and noise it gets in
the full run. FID and KID compare the generated images with
the real 256 px test images, IS (10 splits) is of the generated ones; CLIP score is 100 x the mean cosine
between each generated image's CLIP embedding and its caption's embedding stored in the test zip (the real
images' CLIP score against the same captions is reported beside it as a reference).

The metrics see the generator's largest stage. A model with fewer than 3 stages (64 or 128 px) is upsampled
bicubically to the test images' size (256 px) first, so that FID compares like with like; the report records
the native size as `generated_size`.

An `Evaluator` extracts the real images' features once, so training keeps one for the whole run. With
`--eval_protocol course` training gets the graders' measurement instead (`t2i/evaluation/course.py`), and
`summary_line` prints either kind of report.
"""
from __future__ import annotations

import json
import os
import time
from argparse import Namespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from t2i import clip_utils, plots
from t2i.data.zip_dataset import ZipDataset
from t2i.errors import T2IError
from t2i.evaluation import course, metrics
from t2i.evaluation.metrics import (IS_SPLITS, clip_image_embeddings, clip_score, fidelity_metrics, inception_features,
                                    load_inception)
from t2i.files import atomic_write_text, make_folder
from t2i.generation import encode_prompt
from t2i.plots import to_uint8

GRID_IMAGES = 64
GRID_COLUMNS = 8


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
    """The preprocessed test zip; T2IError (one line) when missing, unreadable, or when its embeddings
    are not `clip_embedding_dim`-dimensional (the generator's input size)."""
    if not os.path.isfile(path):
        raise T2IError(f"{path}: no such test zip; preprocess the test split with "
                              f"preproc_datasets_celeba_zip_test.py and pass the zip it writes")
    dataset = ZipDataset(path, 1, progress=progress)
    if clip_embedding_dim is not None and dataset.embedding_dim != clip_embedding_dim:
        raise T2IError(
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
                 inception_weights: str | None = None, seed: int = 0, progress: bool = True,
                 samples_flag: str = "--num_samples"):
        total = len(dataset)
        num_samples = total if num_samples is None else min(num_samples, total)
        if total < IS_SPLITS:
            raise T2IError(f"{dataset.data_path}: holds {total} images, but IS uses {IS_SPLITS} splits and needs at "
                           f"least {IS_SPLITS}; preprocess at least {IS_SPLITS} test images (raise or drop "
                           f"--max-images of preproc_datasets_celeba_zip_test.py)")
        if num_samples < IS_SPLITS:
            raise T2IError(f"{samples_flag} {num_samples}: IS uses {IS_SPLITS} splits, so at least {IS_SPLITS} "
                           f"images are needed; pass {samples_flag} {IS_SPLITS} or more (the test zip holds {total})")
        if batch_size < 1:
            raise T2IError(f"--batch_size {batch_size}: must be at least 1")
        if clip_model is not None and clip_utils.clip_embedding_dim(clip_model) != dataset.embedding_dim:
            raise T2IError(
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
    def generate(self, generator: nn.Module) -> torch.Tensor:
        """One uint8 [3, S, S] image per selected test image (S: the test images' size), from its caption."""
        # network.py's Generator calls its text width text_embedding_dim, GALIP's (network_galip.py) clip_embedding_dim
        text_dim = getattr(generator, "text_embedding_dim", None) or generator.clip_embedding_dim
        if text_dim != self.dataset.embedding_dim:
            raise T2IError(
                f"{self.dataset.data_path}: its caption embeddings are {self.dataset.embedding_dim}-d but the "
                f"generator takes clip_embedding_dim {text_dim}; preprocess the test split with --emb_dim {text_dim}")
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

    def __call__(self, generator: nn.Module, grid_path: str | None = None) -> dict:
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
            make_folder(os.path.dirname(os.path.abspath(grid_path)))
            shown = range(min(GRID_IMAGES, self.num_samples))
            captions = [self.dataset.captions_of(int(self.indices[i]))[int(self.captions[i])] for i in shown]
            plots.save_image_grid(images[:len(shown)].float() / 127.5 - 1, grid_path, ncol=GRID_COLUMNS,
                                  captions=captions if any(captions) else None)
        figures.update(protocol="standard", num_samples=self.num_samples, seed=self.seed,
                       generated_size=generated_size, eval_size=self.image_size,
                       seconds=round(time.time() - started, 1),
                       clip=clip_utils.clip_identity_of(self.clip_model) if self.clip_model is not None else None,
                       test_data_clip=self.dataset.settings.get("clip"))
        return figures


def write_report(path: str, report: dict) -> None:
    make_folder(os.path.dirname(os.path.abspath(path)))
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def make_training_evaluator(args: Namespace, clip_model: nn.Module | None, device: torch.device,
                            train_clip: dict | None = None) -> Evaluator | course.CourseEvaluator:
    """The test-split evaluator for --eval_every, built once: the test zip, Inception and the real images'
    features are loaded a single time for the whole run. The test zip must come from the train zip's CLIP.
    --eval_protocol course: the graders' FID and IS of the first --eval_samples test images in the graders' batches
    of 128 (fewer: one batch of them), their prompt read by --clip_model even when training does not use CLIP."""
    if args.eval_protocol == "course":
        clip_model = clip_model or clip_utils.load_clip_checked(args.clip_model, device, args.clip_embedding_dim,
                                                                "--clip_embedding_dim")
        prompt = course.PUBLISHED_PROMPT
        return course.CourseEvaluator(
            args.eval_data, encode_prompt(clip_model, prompt, device), prompt=prompt,
            device=device, inception_weights=args.inception_weights,
            batch_size=min(course.GRADERS_BATCH_SIZE, args.eval_samples), num_samples=args.eval_samples,
            samples_flag="--eval_samples")
    dataset = load_test_dataset(args.eval_data, args.clip_embedding_dim)
    clip_utils.check_same_clip(dataset.settings.get("clip"), f"--eval_data {args.eval_data}", train_clip,
                               f"the CLIP of --train_data {args.train_data}", args.allow_clip_mismatch)
    clip_utils.check_clip_matches(dataset.settings.get("clip"), clip_model, f"--eval_data {args.eval_data}",
                                  args.allow_clip_mismatch)
    return Evaluator(dataset, num_samples=args.eval_samples, batch_size=args.batch_size, device=device,
                     clip_model=clip_model, inception_weights=args.inception_weights, seed=0,
                     samples_flag="--eval_samples")


def evaluate_epoch(evaluator: Evaluator | None, generator: nn.Module, epoch: int, every: int,
                   result_path: str) -> dict | None:
    """--eval_every's figures of the saved generator after `epoch` (None when not due): a report (JSON and a grid
    PNG) in `result_path` and one printed line."""
    if evaluator is None or (epoch + 1) % every:
        return None
    report = os.path.join(result_path, f"eval_epoch_{epoch}")
    figures = evaluator(generator, report + ".png")
    write_report(report + ".json", figures)
    print(f"Epoch {epoch} evaluation: {summary_line(figures)}")
    return figures


def _spread(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_line(figures: dict) -> str:
    """Every figure with the number of images it was measured on, and a caveat where it is biased or not
    measured (the full sentences are in the report's `caveats`); the graders' figures for a course report."""
    if figures.get("protocol") == "course":
        return course.summary_line(figures)
    n_gen = figures.get("fid_num_generated", figures["num_samples"])
    n_real = figures.get("fid_num_real", figures["num_samples"])
    fid_note = "; biased below 2048: compare at equal sizes" if min(n_gen, n_real) < metrics.FID_FEATURES else ""
    kid_note = "; spread not measured: the subsets are the whole sets" if figures["kid_std"] is None else ""
    splits = figures.get("is_splits", IS_SPLITS)
    parts = [f"FID {figures['fid']:.2f} ({n_gen} vs {n_real} images{fid_note})",
             f"KID {figures['kid_mean']:.4f} ± {_spread(figures['kid_std'], 4)} "
             f"(subsets of {figures.get('kid_subset_size', min(n_gen, n_real))}{kid_note})",
             f"IS {figures['is_mean']:.3f} ± {_spread(figures['is_std'], 3)} ({n_gen} images, {splits} splits)"]
    if figures.get("clip_score") is not None:
        real = figures.get("clip_score_real")
        parts.append(f"CLIP {figures['clip_score']:.2f} ({n_gen} images; real {_spread(real, 2)})")
    return " | ".join(parts)


