"""The whole course pipeline on a small synthetic dataset, in a few minutes on a laptop CPU.

    python demo.py                 # 144 synthetic faces, a short 3-stage run, metrics, submission check
    python demo.py --quick         # tiny sizes (the test suite runs this)

Steps, each through the real entry point (nothing here re-implements them):
  1. synthetic_data.py        writes a raw dataset in the Multimodal CelebA-HQ layout
  2. preproc_datasets_*       train and test zips with CLIP embeddings
  3. main.py                  a short training run with a small 3-stage model
  4. generate_image.py        images for a few prompts (captioned grids)
  5. evaluate.py              FID, KID, IS and CLIP score on the test split
  6. check_submission.py      the graders' loading check, and the submission zip

It uses OpenAI's ViT-B/32 CLIP and torch-fidelity's Inception when their weights can be loaded (cached, or
downloaded); otherwise, and always with --quick or --offline, random-weight stand-ins of the same interfaces,
and it says so at the start and at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable


import check_submission
import evaluate
import generate_image
import main as train_cli
import preproc_datasets_celeba_zip_test
import preproc_datasets_celeba_zip_train
import synthetic_data
from t2i import clip_utils, metrics
from t2i.devices import resolve_device

DEMO_PROMPTS = (
    "The person has blond hair, has pale skin, is in front of a blue background and wears eyeglasses.",
    "This person has black hair, has a dark complexion, is pictured against a green backdrop and wears no glasses.",
    "The individual has red hair, has a tan skin tone, is shown on a pink background and is wearing glasses.",
)
REAL_CLIP = "ViT-B/32"
DOWNLOAD_TIMEOUT_S = 30  # a blocked network fails within this instead of hanging the demo


@dataclass(frozen=True)
class Sizes:
    num_images: int
    num_train: int
    num_test: int
    raw_size: int
    num_epochs: int
    batch_size: int
    g_in_chans: int
    d_in_chans: int
    eval_samples: int
    images_per_prompt: int


# Three stages always: the graders' generate_image.py needs 64, 128 and 256 px, and the check enforces it.
FULL = Sizes(num_images=144, num_train=96, num_test=48, raw_size=256, num_epochs=5, batch_size=8,
             g_in_chans=64, d_in_chans=8, eval_samples=48, images_per_prompt=4)
QUICK = Sizes(num_images=16, num_train=4, num_test=10, raw_size=128, num_epochs=1, batch_size=4,
              g_in_chans=64, d_in_chans=8, eval_samples=10, images_per_prompt=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the whole pipeline on a synthetic dataset (minutes on a CPU).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", default="demo_output", help="everything the demo writes goes here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and no download attempts (for tests)")
    parser.add_argument("--offline", action="store_true",
                        help="do not try to download CLIP or Inception weights: use random-weight stand-ins")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available, else cpu)")
    return parser


class DemoError(Exception):
    """A step failed; the message names the step."""


def with_download_timeout(load: Callable[[], object]) -> object:
    """Run `load` with a socket timeout, so an unreachable download server fails fast."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return load()
    finally:
        socket.setdefaulttimeout(previous)


def choose_clip(work_dir: str, try_real: bool) -> tuple[str, str | None]:
    """The --clip_model value every step gets, and None if it is the real CLIP or the reason it is not."""
    reason = "--quick or --offline: no download attempted"
    if try_real:
        try:
            with_download_timeout(lambda: clip_utils.load_clip(REAL_CLIP, "cpu"))
            return REAL_CLIP, None
        except Exception as err:
            reason = f"{REAL_CLIP} could not be loaded ({type(err).__name__}: {err})"
    # The tiny preset keeps the real tokenizer, input size and 512-d output at a fraction of the compute.
    path = clip_utils.make_random_clip(os.path.join(work_dir, "clip_random_tiny.pt"), "tiny", 512)
    return path, reason


def choose_inception(work_dir: str, try_real: bool) -> tuple[str | None, str | None]:
    """The --inception_weights value (None: torch-fidelity's own weights) and None or the reason for a stand-in."""
    reason = "--quick or --offline: no download attempted"
    if try_real:
        try:
            with_download_timeout(lambda: metrics.load_inception(None, "cpu"))
            return None, None
        except Exception as err:
            reason = f"torch-fidelity's Inception weights could not be loaded ({type(err).__name__}: {err})"
    return metrics.make_random_inception(os.path.join(work_dir, "inception_random.pth")), reason


def stand_in_notes(clip_reason: str | None, inception_reason: str | None) -> list[str]:
    # A GAN needs hours on a GPU; a few dozen CPU steps only prove that every stage runs and connects.
    notes = ["Training: a few dozen steps of a small model, so expect flat or blurry images whatever the weights: "
             "the demo shows the pipeline working end to end, not image quality."]
    if clip_reason is None:
        notes.append(f"CLIP: the real {REAL_CLIP} weights.")
    else:
        notes.append(
            f"CLIP: OFFLINE, a random-weight CLIP stand-in ({clip_reason}). It maps each caption to a fixed but "
            f"arbitrary 512-d vector: different captions still differ, but similar meanings do not land close and "
            f"no image-text alignment exists, so the contrastive losses and the CLIP score are meaningless and the "
            f"pictures show that the pipeline runs, not what the model can learn.")
    if inception_reason is None:
        notes.append("Inception: torch-fidelity's real weights, so FID/KID/IS are the standard figures.")
    else:
        notes.append(
            f"Inception: a random-weight stand-in ({inception_reason}). FID, KID and IS are computed by the real "
            f"code on random features: they exercise the evaluation, but are not comparable with any published or "
            f"course figure.")
    return notes


def run_step(name: str, entry_point: Callable[[], object], timings: dict) -> None:
    """Run one entry point's main; a SystemExit or a non-zero return becomes a DemoError naming the step."""
    print(f"\n=== {name} ===", flush=True)
    started = time.time()
    try:
        status = entry_point()
    except SystemExit as exit_:
        status = exit_.code
    if status not in (None, 0):
        raise DemoError(f"step '{name}' failed ({status})")
    timings[name] = time.time() - started


def run_demo(args: argparse.Namespace) -> dict:
    """Run every step; return the paths and figures the summary prints."""
    sizes = QUICK if args.quick else FULL
    device = str(resolve_device(args.device))
    out = os.path.abspath(args.out_dir)
    data, ckpt, results = (os.path.join(out, name) for name in ("data", "checkpoints", "results"))
    os.makedirs(data, exist_ok=True)
    try_real = not (args.quick or args.offline)
    clip_model, clip_reason = choose_clip(out, try_real)
    inception_weights, inception_reason = choose_inception(out, try_real)
    notes = stand_in_notes(clip_reason, inception_reason)
    if clip_reason is None and device == "cpu":
        notes.append("Time: the real ViT-B/32 runs in every training step (the contrastive loss), so on a CPU the "
                     "training step takes several times longer than with the offline stand-in (--offline).")
    print("\n".join(notes), flush=True)

    timings: dict[str, float] = {}
    train_zip, test_zip = os.path.join(data, "train_data.zip"), os.path.join(data, "test_data.zip")
    last_epoch = sizes.num_epochs - 1
    run_step("1. synthetic raw dataset", lambda: synthetic_data.main(
        ["--out", data, "--num_images", str(sizes.num_images), "--num_train", str(sizes.num_train),
         "--num_test", str(sizes.num_test), "--size", str(sizes.raw_size), "--seed", "0"]), timings)
    source = os.path.join(data, "multimodal_celeba_hq.zip")
    commands = {"train": preproc_datasets_celeba_zip_train.convert_dataset,
                "test": preproc_datasets_celeba_zip_test.convert_dataset}
    for split, dest in (("train", train_zip), ("test", test_zip)):
        run_step(f"2. preprocess the {split} split", lambda split=split, dest=dest: commands[split].main(
            ["--source", source, "--dest", dest, "--emb_dim", "512", "--transform", "center-crop", "--width", "256",
             "--height", "256", "--clip_model", clip_model, "--device", device, "--batch_size", "16",
             "--num_workers", "2", "--overwrite"], standalone_mode=False), timings)
    # Course values except the model widths and the epochs; no EMA: over a few dozen steps an average with
    # decay 0.999 would still be almost the initial generator.
    run_step("3. train", lambda: train_cli.main(
        ["--train_data", train_zip, "--batch_size", str(sizes.batch_size), "--num_epochs", str(sizes.num_epochs),
         "--learning_rate", "2e-4", "--report_interval", "5", "--noise_dim", "100", "--projection_dim", "128",
         "--clip_embedding_dim", "512", "--checkpoint_path", ckpt, "--result_path", results, "--num_stage", "3",
         "--resume_epoch", "-1", "--use_uncond_loss", "--use_contrastive_loss", "--clip_model", clip_model,
         "--g_in_chans", str(sizes.g_in_chans), "--d_in_chans", str(sizes.d_in_chans), "--device", device,
         "--no-ema", "--overwrite"]), timings)
    prompt_dirs = []
    for index, prompt in enumerate(DEMO_PROMPTS):
        prompt_dirs.append(os.path.join(out, "generated", f"prompt_{index + 1}"))
        run_step(f"4. generate prompt {index + 1}", lambda prompt=prompt, folder=prompt_dirs[-1]: generate_image.main(
            ["--prompt", prompt, "--load_epoch", str(last_epoch), "--checkpoint_path", ckpt, "--clip_model",
             clip_model, "--num_images", str(sizes.images_per_prompt), "--seed", "0", "--out_dir", folder,
             "--device", device]), timings)
    report_path = os.path.join(out, "eval", "report.json")
    eval_argv = ["--checkpoint_path", ckpt, "--load_epoch", str(last_epoch), "--test_data", test_zip,
                 "--num_samples", str(sizes.eval_samples), "--batch_size", "16", "--device", device,
                 "--clip_model", clip_model, "--out", report_path, "--quiet"]
    if inception_weights is not None:
        eval_argv += ["--inception_weights", inception_weights]
    run_step("5. evaluate", lambda: evaluate.main(eval_argv), timings)
    submission_zip = os.path.join(out, "submission.zip")
    run_step("6. submission check", lambda: check_submission.main(
        ["--checkpoint_path", ckpt, "--epoch", str(last_epoch), "--clip_model", clip_model, "--out_dir",
         os.path.join(out, "submission_check"), "--num_images", str(sizes.images_per_prompt), "--zip",
         submission_zip, "--device", device]), timings)

    with open(report_path) as f:
        report = json.load(f)
    return {"notes": notes, "timings": timings, "report": report, "report_path": report_path, "data": data,
            "checkpoints": ckpt, "results": results, "prompt_dirs": prompt_dirs, "submission_zip": submission_zip,
            "submission_check": os.path.join(out, "submission_check"), "last_epoch": last_epoch,
            "real_clip": clip_reason is None, "real_inception": inception_reason is None}


def print_summary(summary: dict) -> None:
    report = summary["report"]
    epoch = summary["last_epoch"]
    lines = [
        "", "=== demo finished ===",
        f"data (raw, train and test zips):  {summary['data']}",
        f"checkpoints (epoch {epoch} graded): {summary['checkpoints']}",
        f"training samples + loss curve:    {summary['results']}/epoch_{epoch}.png, loss_curve.png",
        *(f"prompt images:                    {folder}/result_grid.png" for folder in summary["prompt_dirs"]),
        f"evaluation:                       {summary['report_path']} (and its _grid.png)",
        f"  {evaluate.summary_line(report)}",
        f"submission check images:          {summary['submission_check']}/prompts.png",
        f"submission zip:                   {summary['submission_zip']}",
        "step times: " + ", ".join(f"{name.split(' ', 1)[1]} {seconds:.0f}s"
                                   for name, seconds in summary["timings"].items()),
        *summary["notes"],
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run_demo(args)
    except DemoError as err:
        print(f"error: {err}; see the output above", file=sys.stderr)
        return 1
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
