"""The whole course pipeline on a synthetic dataset, in about ten minutes on a 2-core CPU, and text that visibly
controls the pictures.

    python demo.py                 # the default run (README, "What the demo shows")
    python demo.py --quick         # tiny sizes (the test suite runs this)

The data are face-like drawings fully determined by four attributes that every caption names (hair colour,
background colour, skin tone, eyeglasses; `t2i/synthetic/held_out.py`). 30 of the 150 attribute combinations are held
out: no training image shows them, and the demo asks for exactly those, then reads the attributes back from the
pixels of what it drew (`t2i/synthetic/attribute_score.py`) and prints the share drawn as asked.

Steps, each through the real entry point:
  1. a raw dataset in the Multimodal CelebA-HQ layout, with held-out combinations   (t2i/synthetic/held_out.py)
  2. the text encoder: OpenAI's ViT-B/32 when it can be loaded; otherwise a small CLIP whose text encoder is
     trained here on the training captions (t2i/synthetic/clip_training.py), a stand-in that knows only this world
  3. preproc_datasets_*       train and test zips with that CLIP's embeddings
  4. main.py                  the 64 px stage alone (--num_stage 1, --recipe fast)
  5. main.py                  grown to 3 stages: the 64 px stage's weights carried over, the 128 and 256 px
                              stages new and first taught to upsample the 64 px picture (a short regression);
                              a short 3-stage GAN run resumed from there (the real resume path)
  6. generate_image.py        images for held-out prompts; the held-out attribute accuracy of every stage
  7. evaluate.py              FID, KID, IS and CLIP score on the test split
  8. check_submission.py      the graders' loading check, and the submission zip

Why two training runs: a 3-stage image costs about 12 times a 64 px image on a CPU (the 128 and 256 px
discriminators and generator stages), so a 3-stage run from scratch would learn little in minutes. The 64 px
stage learns the text; the larger stages learn to upsample it, mostly from the regression. The pictures say so.

torch-fidelity's Inception is used when its weights can be loaded; otherwise a random-weight stand-in, and the
demo says so at the start and at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Callable

import PIL.Image
import torch
from tqdm import tqdm

import check_submission
import evaluate
import generate_image
import main as train_cli
import network
import preproc_datasets_celeba_zip_test
import preproc_datasets_celeba_zip_train
from models import NETWORKS
from network import weight_init
from t2i import checkpoints, clip_utils
from t2i.data.zip_dataset import ZipDataset
from t2i.devices import resolve_device
from t2i.evaluation import metrics
from t2i.files import atomic_save
from t2i.generation import encode_prompt
from t2i.plots import plt  # pyplot with the files-only backend that t2i.plots selects
from t2i.synthetic.attribute_score import CHANCE, evaluate_generator
from t2i.synthetic.clip_training import make_trained_clip
from t2i.synthetic.held_out import ATTRIBUTES, held_out_captions, split_combinations, write_raw

REAL_CLIP = "ViT-B/32"
DOWNLOAD_TIMEOUT_S = 30  # a blocked network fails within this instead of hanging the demo
HELD_OUT_COMBINATIONS = 30  # of the 150; the conditional benchmark's split
DATA_SEED = 0
LAST_STEPS = 20  # the upsampling's final loss is averaged over these steps
NUM_PROMPTS = 3  # held-out combinations drawn for the prompt grids
# What the demo writes in its --out_dir; a folder holding only these is a previous demo run's, removed at the start.
OWN_ENTRIES = frozenset({"data", "checkpoints_64px", "results_64px", "checkpoints", "results", "generated", "eval",
                         "submission_check", "submission.zip", "inception_random.pth"})


@dataclass(frozen=True)
class Sizes:
    images_per_combo: int       # training images of each seen attribute combination
    train_combos: int | None    # only the first N seen combinations (None: all 120); tiny runs only
    test_images_per_combo: int  # test images of each held-out combination (evaluate.py's split)
    raw_size: int               # side of the raw JPEGs (the zips are 256 px, the course's size)
    clip_steps: int             # contrastive steps of the small CLIP (when ViT-B/32 cannot be loaded)
    clip_batch: int
    g_in_chans: int             # Ng
    d_in_chans: int             # Nd
    batch_64: int               # the 64 px run
    epochs_64: int
    upsample_steps: int         # the new 128 and 256 px stages' regression onto the 64 px picture
    upsample_batch: int
    batch_3: int                # the 3-stage run
    epochs_3: int
    captions_per_combo: int     # held-out scoring: captions of each held-out combination ...
    samples: int                # ... and images drawn for each caption
    eval_samples: int           # evaluate.py's test images
    images_per_prompt: int


# Chosen by measurement (README, "What the demo shows"): the recipe `fast`, the conditional
# benchmark's learning rate and Nd, Ng 256 (at 128 the 256 px stage's image layer reads 2 channels, too few for
# the colours), as many 64 px steps as fit the time, the upsampling warm start, and a short 3-stage run.
FULL = Sizes(images_per_combo=4, train_combos=None, test_images_per_combo=2, raw_size=256, clip_steps=150,
             clip_batch=64, g_in_chans=256, d_in_chans=16, batch_64=32, epochs_64=32, upsample_steps=200,
             upsample_batch=4, batch_3=8, epochs_3=1, captions_per_combo=2, samples=4, eval_samples=60,
             images_per_prompt=4)
QUICK = Sizes(images_per_combo=1, train_combos=16, test_images_per_combo=1, raw_size=64, clip_steps=4,
              clip_batch=8, g_in_chans=64, d_in_chans=8, batch_64=8, epochs_64=1, upsample_steps=2,
              upsample_batch=2, batch_3=8, epochs_3=1, captions_per_combo=1, samples=2, eval_samples=10,
              images_per_prompt=2)
# main.py's flags for both runs beside the sizes: the course's values except the learning rate, the recipe and
# the projection (32, not 128: the 128 and 256 px stages convolve the condition tiled over every pixel, which at
# these widths was about half of a 3-stage generator step; four attributes need far fewer than 32 dimensions).
PROJECTION_DIM = 32
TRAIN_FLAGS = ["--noise_dim", "100", "--projection_dim", str(PROJECTION_DIM), "--clip_embedding_dim", "512",
               "--use_uncond_loss", "--use_contrastive_loss", "--recipe", "fast", "--overwrite"]
# The 64 px run's lr is 1e-3: the narrow generator needs thousands of 2e-4 steps just to reach full contrast.
# The 3-stage run fine-tunes at the course's 2e-4, Adam starting afresh: on one 64 px run the 128 / 256 px
# held-out accuracy was 0.78 / 0.66 after it, 0.68 / 0.51 after the same epoch at 1e-3 (README, the demo).
LR_64, LR_3 = "1e-3", "2e-4"


def graded_epoch(sizes: Sizes) -> int:
    """The epoch submitted: the 3-stage run continues the 64 px run's epoch count."""
    return sizes.epochs_64 - 1 + sizes.epochs_3


def small_clip_path(out_dir: str) -> str:
    return os.path.join(os.path.abspath(out_dir), "data", "small_clip.pt")


def train_combinations(sizes: Sizes) -> int:
    return sizes.train_combos or 150 - HELD_OUT_COMBINATIONS


def training_64(sizes: Sizes) -> str:
    """What the 64 px run trains: '32 epochs of batch 32 (480 steps, lr 1e-3)'."""
    steps = sizes.epochs_64 * -(-train_combinations(sizes) * sizes.images_per_combo // sizes.batch_64)
    return f"{sizes.epochs_64} epochs of batch {sizes.batch_64} ({steps} steps, lr {LR_64})"


def training_3(sizes: Sizes) -> str:
    """What the 3-stage run trains: '1 epoch(s) of batch 8 (60 steps, lr 2e-4)'."""
    steps = sizes.epochs_3 * -(-train_combinations(sizes) * sizes.images_per_combo // sizes.batch_3)
    return f"{sizes.epochs_3} epoch(s) of batch {sizes.batch_3} ({steps} steps, lr {LR_3})"


def upsampling(sizes: Sizes) -> str:
    """What the new stages' warm start trains: '200 regression steps of batch 4'."""
    return f"{sizes.upsample_steps} regression steps of batch {sizes.upsample_batch}"


def settings_line(sizes: Sizes) -> str:
    """The one line that states what a run trains (printed by the demo, quoted by the README)."""
    train_combos = train_combinations(sizes)
    return (f"demo settings: {train_combos * sizes.images_per_combo} training images ({train_combos} attribute "
            f"combinations x {sizes.images_per_combo}), {HELD_OUT_COMBINATIONS} combinations held out; --recipe "
            f"fast, Ng {sizes.g_in_chans}, Nd {sizes.d_in_chans}, projection {PROJECTION_DIM}; 64 px: "
            f"{training_64(sizes)}; new stages: {upsampling(sizes)}; 3 stages: {training_3(sizes)}; small CLIP "
            f"(offline): {sizes.clip_steps} steps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the whole pipeline on a synthetic dataset (minutes on a CPU).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", default="demo_output",
                        help="everything the demo writes goes here; a previous demo run's folder is replaced")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and no download attempts (for tests)")
    parser.add_argument("--offline", action="store_true",
                        help="do not try to download CLIP or Inception weights: train a small CLIP, use a "
                             "random-weight Inception")
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


def fresh_output_folder(out: str) -> bool:
    """Make `out` an empty folder; True when a previous demo run was removed from it. The demo owns its folder, so
    re-runs replace it rather than piling up main.py's previous_run_<time> set-asides; a folder holding anything
    the demo does not write is left untouched and refused."""
    entries = set(os.listdir(out)) if os.path.isdir(out) else set()
    foreign = sorted(entries - OWN_ENTRIES)
    if foreign:
        raise DemoError(f"{out} holds files the demo does not write ({', '.join(foreign[:3])}); pass another "
                        f"--out_dir or empty that folder")
    if entries:
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    return bool(entries)


def real_clip_or_reason(try_real: bool) -> str | None:
    """None when ViT-B/32 loads; otherwise why not."""
    if not try_real:
        return "--quick or --offline: no download attempted"
    try:
        with_download_timeout(lambda: clip_utils.load_clip(REAL_CLIP, "cpu"))
        return None
    except Exception as err:
        return f"{REAL_CLIP} could not be loaded ({type(err).__name__}: {err})"


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


def stand_in_notes(clip_reason: str | None, inception_reason: str | None, sizes: Sizes) -> list[str]:
    notes = [f"Training: the 64 px stage learns the text; the 128 and 256 px stages are added after it, taught to "
             f"upsample its picture ({upsampling(sizes)}) and then trained as a GAN with it ({training_3(sizes)}), "
             f"so they draw the 64 px picture larger, with little detail of their own. A GAN trained for minutes "
             f"on a CPU: judge whether the text controls the picture, not image quality."]
    if clip_reason is None:
        notes.append(f"CLIP: the real {REAL_CLIP} weights.")
    else:
        notes.append(
            f"CLIP: OFFLINE, a stand-in ({clip_reason}): a small CLIP (the real architecture and tokenizer, 512-d "
            f"embeddings) whose text encoder was trained here for {sizes.clip_steps} steps on the demo's captions. "
            f"It separates the four attributes of these captions and knows nothing else; its image encoder is "
            f"untrained, so the CLIP score below means nothing.")
    if inception_reason is None:
        notes.append("Inception: torch-fidelity's real weights, so FID/KID/IS are the standard figures.")
    else:
        notes.append(
            f"Inception: a random-weight stand-in ({inception_reason}). FID, KID and IS are computed by the real "
            f"code on random features: they exercise the evaluation, but are not comparable with any published or "
            f"course figure.")
    return notes


def run_step(name: str, entry_point: Callable[[], object], timings: dict) -> object:
    """Run one step; a SystemExit or a non-zero return becomes a DemoError naming the step. Records wall and
    process CPU seconds (on a shared machine the CPU time is the fair figure)."""
    print(f"\n=== {name} ===", flush=True)
    started, cpu_started = time.time(), time.process_time()
    try:
        status = entry_point()
    except SystemExit as exit_:
        status = exit_.code
    if isinstance(status, (int, str)) and status != 0:  # an exit status (None: success)
        raise DemoError(f"step '{name}' failed ({status})")
    timings[name] = (time.time() - started, time.process_time() - cpu_started)
    return status


def grow_to_three_stages(source: str, epoch: int, dest: str, train_zip: str, sizes: Sizes) -> dict:
    """Epoch `epoch` of the 64 px run `source` as a 3-stage checkpoint in `dest`, which main.py then resumes: the
    conditioning augmentation, the 64 px generator stage and its discriminator carried over; the 128 and 256 px
    stages initialised as train() initialises them (weight_init), then taught to upsample (`teach_upsampling`).
    Only the weights: Adam starts afresh. Returns the upsampling's losses (`teach_upsampling`)."""
    hyp = dict(checkpoints.read_hyperparameters(source), num_stage=3)
    os.makedirs(dest, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = checkpoints.build_generator(hyp, "cpu", network)
        generator.apply(weight_init)
        trained = torch.load(checkpoints.generator_file(source, epoch), map_location="cpu", weights_only=True)
        if not set(trained) < set(generator.state_dict()):
            raise DemoError("the 64 px run's generator is not the first stage of the 3-stage generator")
        generator.load_state_dict(trained, strict=False)
        losses = teach_upsampling(generator, train_zip, sizes.upsample_steps, sizes.upsample_batch)
        atomic_save(generator.state_dict(), checkpoints.generator_file(dest, epoch))
        shutil.copyfile(checkpoints.discriminator_file(source, epoch, 0),
                        checkpoints.discriminator_file(dest, epoch, 0))
        for stage in (1, 2):
            discriminator = checkpoints.build_discriminator(hyp, stage, "cpu", network)
            discriminator.apply(weight_init)
            atomic_save(discriminator.state_dict(), checkpoints.discriminator_file(dest, epoch, stage))
    return losses


def teach_upsampling(generator: torch.nn.Module, train_zip: str, steps: int, batch_size: int) -> dict:
    """Teach the new 128 and 256 px stages to redraw the trained 64 px picture at their size: Adam (lr 1e-2) on
    the L1 distance between each new stage's image and the 64 px image upsampled (bilinear), for training
    captions and fresh noise; the conditioning augmentation and the 64 px stage are frozen, in eval mode.

    Why: a new stage's image layer starts with weights near zero, so it draws grey, and Adam at a GAN's lr
    grows them to full contrast only after hundreds of steps, while a 3-stage GAN step costs over a second on a
    CPU (measured: after 60 GAN steps both stages were at chance). A dense target at lr 1e-2 gets there in a few
    hundred steps of a fifth of that cost (README, "What the demo shows"). The short GAN run that follows trains
    every stage as main.py always does; this warm start is the demo's alone. Returns the first step's loss and
    the mean of the last LAST_STEPS steps' (one batch of 4 is a noisy figure)."""
    captions = ZipDataset(train_zip, 1, progress=False).txt_emb
    captions = torch.nn.functional.normalize(captions, dim=-1)
    new_stages = generator.g_layer[1:]
    optimizer = torch.optim.Adam(new_stages.parameters(), lr=1e-2, betas=(0.5, 0.999))
    generator.eval()
    new_stages.train()
    losses = []
    for _ in tqdm(range(steps), desc="teaching the 128/256 px stages to upsample", unit="step"):
        picked = captions[torch.randint(len(captions), (batch_size,))]
        with torch.no_grad():
            condition, _, _ = generator.condition_aug(picked)
            out, image_64 = generator.g_layer[0](condition, torch.randn(batch_size, generator.noise_dim))
        loss = 0.0
        for stage in new_stages:
            out, image = stage(condition, out)
            target = torch.nn.functional.interpolate(image_64, size=image.shape[-1], mode="bilinear")
            loss = loss + torch.nn.functional.l1_loss(image, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"first_loss": losses[0], "last_loss": sum(losses[-LAST_STEPS:]) / len(losses[-LAST_STEPS:])}


def demo_prompts(test_combos: list[dict]) -> list[tuple[str, dict]]:
    """NUM_PROMPTS held-out combinations that differ in hair, background and glasses, each with one plain
    caption in a template seen in training."""
    chosen: list[dict] = []
    for combo in test_combos:
        if all(combo["hair"] != c["hair"] and combo["background"] != c["background"] for c in chosen):
            if len(chosen) < NUM_PROMPTS - 1 or {c["eyeglasses"] for c in chosen} != {combo["eyeglasses"]}:
                chosen.append(combo)
        if len(chosen) == NUM_PROMPTS:
            break
    glasses = {True: "wears eyeglasses", False: "wears no glasses"}
    return [(f"The person has {c['hair']} hair, has {c['skin']} skin, is in front of a {c['background']} "
             f"background and {glasses[c['eyeglasses']]}.", c) for c in chosen]


def score_held_out(checkpoint_path: str, epoch: int, clip_model: str, test_combos: list[dict], sizes: Sizes,
                   device: torch.device) -> list[dict]:
    """The graded generator (eval mode, as the graders load it) on fresh captions of every held-out combination:
    the share of attribute values read back from the pixels as asked, per stage."""
    generator, hyp = checkpoints.load_generator(checkpoint_path, epoch, device, networks=NETWORKS)
    clip_model = clip_utils.load_clip(clip_model, device)
    captions, targets = held_out_captions(test_combos, sizes.captions_per_combo, DATA_SEED)
    features = torch.cat([encode_prompt(clip_model, caption, device) for caption in captions])
    return evaluate_generator(generator, features, targets, hyp["noise_dim"], sizes.samples, device)


def accuracy_line(figures: list[dict]) -> str:
    parts = [f"{64 * 2 ** stage} px {stage_figures['overall']:.2f} (" + " / ".join(
        f"{stage_figures[name]:.2f}" for name in ATTRIBUTES) + ")" for stage, stage_figures in enumerate(figures)]
    return (f"held-out attribute accuracy (hair / background / skin / glasses): {', '.join(parts)}; "
            f"chance {CHANCE['overall']:.2f}")


def save_prompt_sheet(prompts: list[tuple[str, dict]], folders: list[str], sizes: Sizes, path: str) -> None:
    """One picture of what generate_image.py drew for the held-out prompts: a row per prompt, a column per stage,
    titled with what each stage is."""
    trained_64, trained_3 = training_64(sizes), training_3(sizes)
    titles = [f"64 px stage\n(trained {trained_64}\n+ the 3-stage run)"] + [
        f"{size} px stage: taught to upsample\n({upsampling(sizes)}),\nthen GAN {trained_3}" for size in (128, 256)]
    titles[2] += f"\nat Ng {sizes.g_in_chans} it draws from {sizes.g_in_chans // 64} channels: few colours"
    fig, axes = plt.subplots(len(prompts), 3, figsize=(12, 4.3 * len(prompts)), squeeze=False)
    for row, ((prompt, _), folder) in enumerate(zip(prompts, folders)):
        for column, size in enumerate((64, 128, 256)):
            axis = axes[row][column]
            image = PIL.Image.open(os.path.join(folder, f"result_{size}.png"))
            axis.imshow(image, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=10)
            if column == 0:
                axis.set_ylabel("\n".join(textwrap.wrap(prompt, 34)), fontsize=9)
    fig.suptitle("Held-out prompts: no training image shows these attribute combinations\n"
                 f"({sizes.images_per_prompt} noises each; check hair, background, skin and glasses)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> dict:
    """Run every step; return the paths and figures the summary prints."""
    sizes = QUICK if args.quick else FULL
    device = str(resolve_device(args.device))
    out = os.path.abspath(args.out_dir)
    data = os.path.join(out, "data")
    ckpt_64, results_64 = os.path.join(out, "checkpoints_64px"), os.path.join(out, "results_64px")
    ckpt, results = os.path.join(out, "checkpoints"), os.path.join(out, "results")
    if fresh_output_folder(out):
        print(f"removed the previous demo run in {out}")
    os.makedirs(data)
    try_real = not (args.quick or args.offline)
    clip_reason = real_clip_or_reason(try_real)
    inception_weights, inception_reason = choose_inception(out, try_real)
    notes = stand_in_notes(clip_reason, inception_reason, sizes)
    print(settings_line(sizes))
    print("\n".join(notes), flush=True)

    timings: dict[str, tuple[float, float]] = {}
    train_combos, test_combos = split_combinations(HELD_OUT_COMBINATIONS, DATA_SEED)
    train_combos = train_combos[:sizes.train_combos]
    raw = run_step("1. synthetic raw dataset, held-out combinations", lambda: write_raw(
        data, train_combos, test_combos, sizes.images_per_combo, sizes.test_images_per_combo, DATA_SEED,
        sizes.raw_size), timings)
    print(f"{len(raw['splits']['train'])} training images of {len(train_combos)} combinations, "
          f"{len(raw['splits']['test'])} test images of {len(test_combos)} held-out combinations")
    clip_model, clip_summary = REAL_CLIP, None
    if clip_reason is not None:
        clip_model = small_clip_path(out)
        # Its text tower alone, on paraphrases, in batches of eyeglasses twins: within the few steps the time
        # allows, the only way measured that separates eyeglasses (t2i/synthetic/clip_training.py).
        clip_summary = run_step("2. train a small CLIP's text encoder (the stand-in)", lambda: make_trained_clip(
            clip_model, raw, test_combos, sizes.clip_steps, DATA_SEED, glasses_pairs=True, text_only=True,
            batch_size=sizes.clip_batch), timings)
        print(f"small CLIP: loss {clip_summary['first_loss']:.2f} -> {clip_summary['last_loss']:.2f}; "
              f"caption-embedding variance explained by " + ", ".join(
                  f"{name} {share:.2f}" for name, share in clip_summary["attribute_variance_share"].items()))

    train_zip, test_zip = os.path.join(data, "train_data.zip"), os.path.join(data, "test_data.zip")
    commands = {"train": preproc_datasets_celeba_zip_train.convert_dataset,
                "test": preproc_datasets_celeba_zip_test.convert_dataset}
    for split, dest in (("train", train_zip), ("test", test_zip)):
        run_step(f"3. preprocess the {split} split", lambda split=split, dest=dest: commands[split].main(
            ["--source", raw["source"], "--dest", dest, "--emb_dim", "512", "--transform", "center-crop", "--width",
             "256", "--height", "256", "--clip_model", clip_model, "--device", device, "--batch_size", "64",
             "--num_workers", "2", "--overwrite"], standalone_mode=False), timings)

    common = ["--train_data", train_zip, "--clip_model", clip_model, "--device", device, "--g_in_chans",
              str(sizes.g_in_chans), "--d_in_chans", str(sizes.d_in_chans), *TRAIN_FLAGS]
    last_64 = sizes.epochs_64 - 1
    run_step("4. train the 64 px stage", lambda: train_cli.main(common + [
        "--learning_rate", LR_64, "--num_stage", "1", "--batch_size", str(sizes.batch_64), "--num_epochs",
        str(sizes.epochs_64), "--report_interval", "10", "--checkpoint_path", ckpt_64, "--result_path", results_64,
        "--resume_epoch", "-1"]), timings)
    last_epoch = graded_epoch(sizes)
    upsample_losses = run_step("5. grow to 3 stages, teach the new stages to upsample", lambda: grow_to_three_stages(
        ckpt_64, last_64, ckpt, train_zip, sizes), timings)
    print(f"128 and 256 px stages, L1 to the upsampled 64 px picture: {upsample_losses['first_loss']:.2f} at the "
          f"first step, {upsample_losses['last_loss']:.2f} over the last {LAST_STEPS} of {sizes.upsample_steps}")
    run_step("5. train the 3 stages as a GAN, briefly", lambda: train_cli.main(common + [
        "--learning_rate", LR_3, "--num_stage", "3", "--batch_size", str(sizes.batch_3), "--num_epochs",
        str(last_epoch + 1), "--report_interval", "10", "--checkpoint_path", ckpt, "--result_path", results,
        "--resume_epoch", str(last_64), "--resume_checkpoint_path", ckpt]), timings)

    prompts = demo_prompts(test_combos)
    prompt_dirs = [os.path.join(out, "generated", f"prompt_{index + 1}") for index in range(len(prompts))]
    for index, ((prompt, _), folder) in enumerate(zip(prompts, prompt_dirs)):
        run_step(f"6. generate held-out prompt {index + 1}", lambda prompt=prompt, folder=folder: generate_image.main(
            ["--prompt", prompt, "--load_epoch", str(last_epoch), "--checkpoint_path", ckpt, "--clip_model",
             clip_model, "--num_images", str(sizes.images_per_prompt), "--seed", "0", "--out_dir", folder,
             "--device", device]), timings)
    prompt_sheet = os.path.join(out, "generated", "held_out_prompts.png")
    save_prompt_sheet(prompts, prompt_dirs, sizes, prompt_sheet)
    accuracy_64, accuracy = run_step("6. score the held-out combinations", lambda: tuple(
        score_held_out(folder, epoch, clip_model, test_combos, sizes, torch.device(device))
        for folder, epoch in ((ckpt_64, last_64), (ckpt, last_epoch))), timings)
    print("after the 64 px run alone, " + accuracy_line(accuracy_64))
    print("graded generator (after the 3-stage run), " + accuracy_line(accuracy))

    report_path = os.path.join(out, "eval", "report.json")
    eval_argv = ["--checkpoint_path", ckpt, "--load_epoch", str(last_epoch), "--test_data", test_zip,
                 "--num_samples", str(sizes.eval_samples), "--batch_size", "30", "--device", device,
                 "--clip_model", clip_model, "--out", report_path, "--quiet"]
    if inception_weights is not None:
        eval_argv += ["--inception_weights", inception_weights]
    run_step("7. evaluate", lambda: evaluate.main(eval_argv), timings)
    submission_zip = os.path.join(out, "submission.zip")
    run_step("8. submission check", lambda: check_submission.main(
        ["--checkpoint_path", ckpt, "--epoch", str(last_epoch), "--clip_model", clip_model, "--out_dir",
         os.path.join(out, "submission_check"), "--num_images", str(sizes.images_per_prompt), "--zip",
         submission_zip, "--device", device]), timings)

    with open(report_path) as f:
        report = json.load(f)
    return {"notes": notes, "settings": settings_line(sizes), "timings": timings, "report": report,
            "report_path": report_path, "data": data, "checkpoints": ckpt, "results": results,
            "results_64": results_64, "last_64": last_64, "prompt_dirs": prompt_dirs, "prompt_sheet": prompt_sheet,
            "prompts": [prompt for prompt, _ in prompts], "accuracy": accuracy, "accuracy_64": accuracy_64,
            "clip": clip_summary, "submission_zip": submission_zip,
            "submission_check": os.path.join(out, "submission_check"), "last_epoch": last_epoch,
            "real_clip": clip_reason is None, "real_inception": inception_reason is None}


def print_summary(summary: dict) -> None:
    report = summary["report"]
    epoch = summary["last_epoch"]
    wall = sum(seconds for seconds, _ in summary["timings"].values())
    cpu = sum(seconds for _, seconds in summary["timings"].values())
    lines = [
        "", "=== demo finished ===",
        summary["settings"],
        f"data (raw, train and test zips):  {summary['data']}",
        f"checkpoints (epoch {epoch} graded): {summary['checkpoints']}",
        f"64 px stage alone, epoch {summary['last_64']}:   {summary['results_64']}/epoch_{summary['last_64']}.png",
        f"3 stages (256 px), epoch {epoch}:     {summary['results']}/epoch_{epoch}.png, loss_curve.png",
        f"held-out prompts, every stage:    {summary['prompt_sheet']}",
        *(f"  {folder}/result_grid.png: {prompt}" for folder, prompt in zip(summary["prompt_dirs"],
                                                                           summary["prompts"])),
        f"evaluation:                       {summary['report_path']} (and its _grid.png)",
        f"  {evaluate.summary_line(report)}",
        f"submission check images:          {summary['submission_check']}/prompts.png",
        f"submission zip:                   {summary['submission_zip']}",
        "step times (wall / process CPU): " + ", ".join(
            f"{name.split(' ', 1)[1]} {seconds:.0f}/{cpu_seconds:.0f}s"
            for name, (seconds, cpu_seconds) in summary["timings"].items()),
        f"total: {wall:.0f} s wall, {cpu:.0f} s CPU",
        "after the 64 px run alone, " + accuracy_line(summary["accuracy_64"]),
        "graded generator (after the 3-stage run), " + accuracy_line(summary["accuracy"]),
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
