"""Does the text control the image? A synthetic conditional benchmark through the real code path.

1. Data (`t2i.synthetic.held_out`): face-like drawings fully determined by four attributes named in every caption (hair
   colour, background colour, skin tone, eyeglasses), plus nuisance detail the captions never mention (mouth
   shape, a side ornament), so a good generator has something to vary with the noise. A fixed share of the 150
   attribute combinations is held out: no training image shows them. The raw zip and split pickles are written
   in the layout of Multimodal CelebA-HQ and go through `preprocess`.
2. Training: `main.main` with `--num_stage 1` (64 px), a narrow generator and discriminator, on the CPU,
   one epoch per call, resuming from the previous epoch (the real resume path), until `--num_epochs` or
   the `--minutes` budget is reached.
3. Evaluation (`t2i.synthetic.attribute_score`): `checkpoints.load_generator` and `generation.encode_prompt` /
   `generate` on captions of the held-out combinations; `synthetic.read_attributes` reads the attributes back from
   pixels. Reported: accuracy per attribute and overall, chance level, the same with the text embeddings shuffled
   between captions (a generator that ignores the text scores this), diversity across noise (mean pairwise
   pixel distance between samples of one caption, beside the same figure for real images of one
   combination) and wall times.

The text encoder is a small CLIP (the real `clip.model.CLIP` class, tokenizer, 77-token context, 224 px input and
512-d embeddings) trained contrastively on the training images and their captions for --train_clip_steps steps
(`t2i.synthetic.clip_training`), so that L_ConG (--lam) carries image-text signal as the pretrained CLIP does on
CelebA; its top-1 caption retrieval among the held-out combinations (on their real test images) is reported, and
the share of the caption embeddings' variance that each attribute explains: the generator can follow only what the text
embedding separates (after 150 steps eyeglasses explained 0.01 % of it and were never learned; after the default
1000, 15 %). The held-out captions combine attribute values in ways never seen in training while using the
paraphrase templates seen there. --train_clip_steps 0 gives the earlier random-weight CLIP (BENCH_CLIP: one text
layer at ViT-B/32's width, so single words stay linearly readable from the embedding); its image tower carries no
signal, so pair it with --train_args "--lam 0".

The run's fixed flags (BASE_TRAIN_ARGS) apply L_ConG at this 64 px stage (`--clip_loss_any_size`; the course
applies it at 256 px only); --arch adds the model's (ARCH_TRAIN_ARGS: each narrowed for the CPU, G and D both at
lr 1e-3); --base_args replaces the fixed flags, --train_args adds to both (the last occurrence of a flag wins).
Data (raw images, the trained CLIP, the preprocessed zip) is built once per --data_dir and reused. Training time
is reported as wall time and as process CPU time (the fair figure on shared cores); the CLIP's training time is
reported apart.

    python -m benchmarks.conditional --minutes 15 --threads 2 --train_args "--lam 0 --beta 0.1 --detach_condition"
    python -m benchmarks.conditional --minutes 15 --threads 2 --arch galip
    python -m benchmarks.conditional --num_epochs 20 --data_dir /tmp/bench_data --train_args "--no-ema --no-mismatch"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

import torch

import main as train_main
import preproc_datasets_celeba_zip_train
from models import NETWORKS
from t2i import checkpoints, clip_utils
from t2i.generation import encode_prompt
from t2i.synthetic.attribute_score import CHANCE, evaluate_generator, real_diversity
from t2i.synthetic.clip_training import make_trained_clip
from t2i.synthetic.held_out import ATTRIBUTES, held_out_captions, split_combinations, write_raw

IMAGE_SIZE = 64
# The benchmark's text encoder: one text layer at ViT-B/32's width, a one-layer 64-wide image tower.
BENCH_CLIP = dict(embed_dim=512, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                  context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                  transformer_layers=1)
# The run's fixed part; the architecture's flags and then --train_args come after it, so they override any of these.
# --lam 10 is the package's default, measured as is: with the trained CLIP, L_ConG is about half of a CPU step.
BASE_TRAIN_ARGS = ("--batch_size 32 --report_interval 1000 --noise_dim 100 --projection_dim 128 "
                   "--clip_embedding_dim 512 --num_stage 1 --use_uncond_loss --use_contrastive_loss "
                   "--clip_loss_any_size --device cpu --num_workers 0")
# Each model narrowed for the CPU, with one rule for both: G and D at lr 1e-3. Not the course's 2e-4 (the narrow
# StackGAN generator's output layer starts at N(0, 0.02) weights on 8 channels and needs thousands of 2e-4 steps
# just to reach full contrast), nor GALIP's paper values (1e-4 / 4e-4, for batch-64 GPU runs; held-out accuracy
# 0.449 here against 0.895 at 1e-3 on data seed 1, README's GALIP section).
ARCH_TRAIN_ARGS = {
    "stackgan": "--arch stackgan --learning_rate 1e-3 --g_in_chans 128 --d_in_chans 16",
    "galip": "--arch galip --g_lr 1e-3 --d_lr 1e-3 --g_in_chans 64",  # D's width: the CLIP's token width
}


# ------------------------------------------------------------------------------------------------ data

def make_benchmark_clip(path: str, seed: int = 0) -> str:
    """Write the benchmark's random-weight CLIP (BENCH_CLIP) as a state dict that clip_utils.load_clip reads."""
    clip = clip_utils.import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.model.CLIP(**BENCH_CLIP)
        model.initialize_parameters()
    torch.save(model.state_dict(), path)
    return path


def build_data(work_dir: str, images_per_combo: int, held_out: int, captions_per_image: int, seed: int,
               train_clip_steps: int) -> dict:
    """Raw data, CLIP (trained for `train_clip_steps`, random with 0) and the preprocessed train zip; returns
    paths, combinations and timings."""
    started = time.time()
    train_combos, test_combos = split_combinations(held_out, seed)
    raw = write_raw(os.path.join(work_dir, "raw"), train_combos, test_combos, images_per_combo, 1, seed)
    clip_path = os.path.join(work_dir, "bench_clip.pt")
    clip_summary = None
    if train_clip_steps:
        clip_summary = make_trained_clip(clip_path, raw, test_combos, train_clip_steps, seed, IMAGE_SIZE)
    else:
        make_benchmark_clip(clip_path, seed)
    train_zip = os.path.join(work_dir, "train.zip")
    preproc_datasets_celeba_zip_train.convert_dataset.main(
        ["--source", raw["source"], "--dest", train_zip, "--clip_model", clip_path, "--emb_dim", "512", "--width",
         str(IMAGE_SIZE), "--height", str(IMAGE_SIZE), "--num_captions", str(captions_per_image), "--device", "cpu",
         "--num_workers", "2", "--overwrite"], standalone_mode=False)
    return {"train_zip": train_zip, "clip_path": clip_path, "clip": clip_summary, "train_combos": train_combos,
            "test_combos": test_combos, "num_train_images": len(raw["splits"]["train"]),
            "seconds": time.time() - started}


# --------------------------------------------------------------------------------------------- training

def train(train_zip: str, clip_path: str, run_dir: str, base_args: str, train_args: str, num_epochs: int | None,
          minutes: float | None) -> dict:
    """Train for `num_epochs` in one `main.main` call; or, with a time budget instead, one epoch per call,
    resuming from the last (the real resume path), while the previous epoch's duration still fits."""
    checkpoint_path, result_path = os.path.join(run_dir, "checkpoints"), os.path.join(run_dir, "results")
    base = shlex.split(base_args) + ["--train_data", train_zip, "--clip_model", clip_path,
                                     "--checkpoint_path", checkpoint_path, "--result_path", result_path]
    started, cpu_started = time.time(), time.process_time()
    if num_epochs is not None:  # a fixed length: one uninterrupted run
        train_main.main(base + ["--num_epochs", str(num_epochs), "--resume_epoch", "-1"] + shlex.split(train_args))
        return {"checkpoint_path": checkpoint_path, "epochs": num_epochs, "last_epoch": num_epochs - 1,
                "seconds": time.time() - started, "cpu_seconds": time.process_time() - cpu_started}
    epoch, last_epoch_seconds = 0, 0.0
    while True:
        if epoch > 0 and time.time() - started + last_epoch_seconds > 60 * minutes:
            break
        resume = ["--resume_epoch", "-1"] if epoch == 0 else [
            "--resume_epoch", str(epoch - 1), "--resume_checkpoint_path", checkpoint_path]
        epoch_started = time.time()
        train_main.main(base + ["--num_epochs", str(epoch + 1)] + resume + shlex.split(train_args))
        last_epoch_seconds = time.time() - epoch_started
        epoch += 1
    return {"checkpoint_path": checkpoint_path, "epochs": epoch, "last_epoch": epoch - 1,
            "seconds": time.time() - started, "cpu_seconds": time.process_time() - cpu_started}


# ------------------------------------------------------------------------------------------- evaluation

def evaluate(checkpoint_path: str, epoch: int, clip_path: str, captions: list[str], targets: list[dict],
             samples: int, seed: int) -> dict:
    """The trained generator on the held-out captions, and the same generator with the captions shuffled."""
    device = torch.device("cpu")
    generator, hyp = checkpoints.load_generator(checkpoint_path, epoch, device, networks=NETWORKS)
    clip_model = clip_utils.load_clip(clip_path, device)
    features = torch.cat([encode_prompt(clip_model, caption, device) for caption in captions])
    shuffled = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))]
    # The largest stage's figures (the only stage in the benchmark's 1-stage runs).
    return {"held_out": evaluate_generator(generator, features, targets, hyp["noise_dim"], samples, device, seed)[-1],
            "text_shuffled": evaluate_generator(generator, shuffled, targets, hyp["noise_dim"], samples, device,
                                                seed)[-1]}


# ------------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCH_TRAIN_ARGS), default="stackgan",
                        help="the model, with its flags for this benchmark (ARCH_TRAIN_ARGS)")
    parser.add_argument("--base_args", default=BASE_TRAIN_ARGS, help="the run's fixed main.py flags")
    parser.add_argument("--train_args", default="", help='extra main.py flags, e.g. "--lam 0 --beta 0.1"')
    parser.add_argument("--num_epochs", type=int, default=None, help="epochs to train (default: until --minutes)")
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (default 12 without "
                                                                    "--num_epochs)")
    parser.add_argument("--images_per_combo", type=int, default=8, help="training images per seen combination")
    parser.add_argument("--held_out", type=int, default=30, help="attribute combinations (of 150) held out")
    parser.add_argument("--captions_per_image", type=int, default=10, help="captions kept per training image")
    parser.add_argument("--train_clip_steps", type=int, default=1000,
                        help="contrastive steps training the benchmark's CLIP (0: a random-weight CLIP)")
    parser.add_argument("--samples", type=int, default=4, help="images generated per held-out caption")
    parser.add_argument("--captions_per_combo", type=int, default=2, help="held-out captions per combination")
    parser.add_argument("--seed", type=int, default=0, help="data seed (training always uses the course's seed 0)")
    parser.add_argument("--work_dir", default=None, help="where data and checkpoints go (default: a temp folder)")
    parser.add_argument("--data_dir", default=None, help="reuse the data built by an earlier run in this folder")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (on shared cores one thread avoids OpenMP spin-waiting)")
    return parser


def fixed_train_args(args: argparse.Namespace) -> str:
    """The run's fixed main.py flags: --base_args, then the architecture's (--train_args come after both)."""
    return f"{args.base_args} {ARCH_TRAIN_ARGS[args.arch]}"


def join_flag_values(argv: list[str]) -> list[str]:
    """`--train_args --no-ema` -> `--train_args=--no-ema`: argparse would take a lone flag for an option of its own."""
    joined, index = [], 0
    while index < len(argv):
        if argv[index] in ("--train_args", "--base_args") and index + 1 < len(argv):
            joined.append(f"{argv[index]}={argv[index + 1]}")
            index += 2
        else:
            joined.append(argv[index])
            index += 1
    return joined


def load_or_build_data(args: argparse.Namespace, work_dir: str) -> dict:
    """Build the data, or reuse it from --data_dir (its data.json records what was built)."""
    data_dir = args.data_dir or os.path.join(work_dir, "data")
    record = os.path.join(data_dir, "data.json")
    settings = {"images_per_combo": args.images_per_combo, "held_out": args.held_out,
                "captions_per_image": args.captions_per_image, "seed": args.seed,
                "train_clip_steps": args.train_clip_steps}
    if os.path.isfile(record):
        with open(record) as f:
            data = json.load(f)
        if data["settings"] == settings:
            return dict(data, seconds=0.0)
    os.makedirs(data_dir, exist_ok=True)
    data = build_data(data_dir, args.images_per_combo, args.held_out, args.captions_per_image, args.seed,
                      args.train_clip_steps)
    with open(record, "w") as f:
        json.dump(dict(data, settings=settings), f)
    return data


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(join_flag_values(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    minutes = 12.0 if args.minutes is None and args.num_epochs is None else args.minutes
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="conditional_bench_")
    data = load_or_build_data(args, work_dir)
    run_dir = os.path.join(work_dir, f"run_{time.strftime('%Y%m%d_%H%M%S')}")
    trained = train(data["train_zip"], data["clip_path"], run_dir, fixed_train_args(args), args.train_args,
                    args.num_epochs, minutes)

    eval_started = time.time()
    captions, targets = held_out_captions(data["test_combos"], args.captions_per_combo, args.seed)
    figures = evaluate(trained["checkpoint_path"], trained["last_epoch"], data["clip_path"], captions, targets,
                       args.samples, args.seed)
    report = {
        "arch": args.arch, "train_args": args.train_args, "epochs": trained["epochs"],
        "train_images": data["num_train_images"],
        "held_out_combinations": len(data["test_combos"]), "held_out_captions": len(captions),
        **figures, "chance": CHANCE, "clip": data["clip"],
        "real_diversity": real_diversity(data["test_combos"], args.samples, args.seed, IMAGE_SIZE),
        "seconds": {"data": data["seconds"], "train": trained["seconds"], "train_cpu": trained["cpu_seconds"],
                    "evaluate": time.time() - eval_started},
        "run_dir": run_dir,
    }
    print_report(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_report(report: dict) -> None:
    print(f"\nconditional benchmark: --arch {report['arch']}, train_args {report['train_args']!r}, {report['epochs']} "
          f"epochs on {report['train_images']} images, {report['held_out_captions']} captions of "
          f"{report['held_out_combinations']} held-out combinations")
    header = ["", *ATTRIBUTES, "overall", "all_four", "diversity"]
    print(" | ".join(f"{h:>13}" for h in header))
    for name in ("held_out", "text_shuffled"):
        row = report[name]
        print(" | ".join([f"{name:>13}", *(f"{row[k]:>13.3f}" for k in header[1:])]))
    chance = report["chance"]
    print(" | ".join([f"{'chance':>13}", *(f"{chance[k]:>13.3f}" for k in (*ATTRIBUTES, "overall")),
                      f"{'':>13}", f"{report['real_diversity']:>13.3f}"]) + "   (diversity: real images)")
    clip = report["clip"]
    if clip is not None:
        print(f"CLIP: {clip['steps']} contrastive steps in {clip['seconds']:.0f} s (loss {clip['first_loss']:.2f} -> "
              f"{clip['last_loss']:.2f}), held-out top-1 retrieval {clip['held_out_retrieval']:.3f} "
              f"(chance {clip['retrieval_chance']:.3f}); caption-embedding variance explained by "
              + ", ".join(f"{name} {share:.3f}" for name, share in clip["attribute_variance_share"].items()))
    seconds = report["seconds"]
    print(f"time: data {seconds['data']:.0f} s, training {seconds['train']:.0f} s ({seconds['train_cpu']:.0f} CPU s), "
          f"evaluation "
          f"{seconds['evaluate']:.0f} s")


if __name__ == "__main__":
    main()
