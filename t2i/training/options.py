"""Every training option, declared once.

`OPTIONS` is the single declaration: `build_parser()` makes `main.py`'s command line from it, `complete()` gives
the course's bare Namespace (its `main.py` passes only the course flags) every other option at its default, and
`saved_form()` / `compare_with_saved()` write the options into the checkpoint folder (`run_options.json`) and
check them on resume: a model option that differs stops the run with one line naming it (the weights would not
fit); any other change is reported.

A recipe (`--recipe`) is a named set of values for options the command line does not give: `guideline` is the
guideline's settings, `fast` the best measured on the conditional benchmark (README, "Does the text control the
image?").
"""
from __future__ import annotations

import argparse
import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from t2i.errors import T2IError

COURSE, MODEL, LOSSES, IMPROVEMENTS, RUN, EVALUATION = ("course flags", "model", "losses", "improvements",
                                                       "run", "evaluation during training")
MUST_MATCH, REPORT, IGNORE = "must match on resume", "reported when changed on resume", "not compared"


def resume_epoch(value: str) -> int | str:
    """An epoch number, -1 for no resume, or 'latest' (the newest complete or mid-epoch checkpoint)."""
    if value == "latest":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an epoch number, -1 or 'latest', got {value!r}") from None


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    group: str
    on_resume: str
    type: Callable | None = None   # None: a switch (store_true for course flags, --x/--no-x otherwise)
    choices: tuple | None = None


OPTIONS: tuple[Option, ...] = (
    Option("train_data", Path("sample_train.zip"), "preprocessed train zip", COURSE, REPORT, Path),
    Option("batch_size", 64, "images per iteration (at least 2: BatchNorm needs two)", COURSE, REPORT, int),
    Option("num_epochs", 50, "total epochs (epochs count from 0)", COURSE, IGNORE, int),
    Option("learning_rate", 2e-4, "Adam learning rate of G and D", COURSE, REPORT, float),
    Option("report_interval", 100, "log the losses every N iterations", COURSE, IGNORE, int),
    Option("noise_dim", 100, "size of the noise z", COURSE, MUST_MATCH, int),
    Option("projection_dim", 128, "conditioning augmentation output size", COURSE, MUST_MATCH, int),
    Option("clip_embedding_dim", 512, "CLIP embedding size (512 for ViT-B/32)", COURSE, MUST_MATCH, int),
    Option("checkpoint_path", Path("model_exp1"), "where the checkpoints go", COURSE, IGNORE, Path),
    Option("result_path", Path("images_exp1"), "where the sample grids and the loss curve go", COURSE, IGNORE, Path),
    Option("use_uncond_loss", False, "add the unconditional GAN loss", COURSE, REPORT),
    Option("use_contrastive_loss", False, "add LAFITE's contrastive losses (L_ConD, and L_ConG at 256 px)",
           COURSE, REPORT),
    Option("num_stage", 1, "1, 2 or 3 stages (64, 128, 256 px)", COURSE, MUST_MATCH, int),
    Option("resume_checkpoint_path", None, "checkpoint folder to resume from", COURSE, IGNORE, str),
    Option("resume_epoch", -1, "continue after this epoch; -1: fresh run; 'latest': newest checkpoint, if any",
           COURSE, IGNORE, resume_epoch),

    Option("arch", "stackgan", "the model: stackgan (the course's StackGAN++, network.py) or galip (GALIP, "
           "network_galip.py: frozen-CLIP discriminator, DF-GAN generator; its defaults: --g_in_chans 256 "
           "--d_in_chans 768 --g_lr 1e-4 --d_lr 4e-4 --mismatch --ema). Default: the arch of network.py's classes",
           MODEL, MUST_MATCH, str, ("stackgan", "galip")),
    Option("g_in_chans", 1024, "Ng, generator width (galip: 8 x ngf, the width of its 8x8 block)", MODEL, MUST_MATCH,
           int),
    Option("d_in_chans", 64, "Nd, discriminator width (galip: the CLIP image encoder's token width)", MODEL,
           MUST_MATCH, int),
    Option("clip_model", "ViT-B/32", "CLIP name, or a local CLIP file: a state dict, or OpenAI's TorchScript "
           "download (read with torch.jit.load, which loads the code inside: give only OpenAI's files); must be the "
           "CLIP that made the data", MODEL, REPORT, str),
    Option("ca_init_std", None, "re-draw the conditioning-augmentation weights that give mu from N(0, std) "
           "(default: weight_init's N(0, 0.02), the course's)", MODEL, REPORT, float),

    Option("recipe", "guideline", "named settings for the options not given: guideline (exactly the guideline's "
           "model, losses and initialisation), fast (the best measured: --lam 0 --beta 0.1 --detach_condition "
           "--mismatch --ema --ca_init_std 3)", LOSSES, REPORT, str, ("guideline", "fast")),
    Option("gamma", 5.0, "weight of L_ConD", LOSSES, REPORT, float),
    Option("lam", 10.0, "weight of L_ConG", LOSSES, REPORT, float),
    Option("beta", 1.0, "weight of the KL term L_CA", LOSSES, REPORT, float),
    Option("tau", 0.5, "contrastive temperature", LOSSES, REPORT, float),
    Option("clip_loss_any_size", False, "apply L_ConG to the largest stage whatever its size (the course: only "
           "at 256 px, so 1- and 2-stage runs have none)", LOSSES, REPORT),
    Option("language_free", False, "LAFITE: train from image embeddings only (Problem 4-(f))", LOSSES, REPORT),
    Option("xi", 0.1, "language-free perturbation size", LOSSES, REPORT, float),

    Option("g_lr", None, "generator learning rate (default: --learning_rate)", IMPROVEMENTS, REPORT, float),
    Option("d_lr", None, "discriminator learning rate (default: --learning_rate)", IMPROVEMENTS, REPORT, float),
    Option("ema", False, "save an exponential moving average of G as epoch_N_Gen.pt", IMPROVEMENTS, REPORT),
    Option("ema_decay", 0.999, "decay of that average", IMPROVEMENTS, REPORT, float),
    Option("diffaugment", "", "DiffAugment policy for D inputs, e.g. color,translation,cutout ('' = off)",
           IMPROVEMENTS, REPORT, str),
    Option("mismatch", False, "mismatched-caption negatives for the conditional discriminator", IMPROVEMENTS,
           REPORT),
    Option("detach_condition", False, "G's step shows D a detached mu, so only the image can pass "
           "(off: the course's graph)", IMPROVEMENTS, REPORT),

    Option("device", None, "cuda, cuda:1 or cpu (default: cuda if available)", RUN, IGNORE, str),
    Option("amp", None, "mixed precision: fp16 with gradient scaling on CUDA (the default there); bf16 on a CPU "
           "with bf16 instructions (off by default there), refused on a CPU without them (emulated: many times "
           "slower than fp32)", RUN, REPORT),
    Option("sync_bn", True, "under torchrun, BatchNorm statistics of the global batch (every process's images), so N "
           "processes at batch B train as one at N*B (one process: no effect)", RUN, REPORT),
    Option("num_workers", 0, "DataLoader worker processes (0: the data is in memory already)", RUN, IGNORE, int),
    Option("save_every_steps", 0, "mid-epoch snapshot every N iterations (0: off)", RUN, IGNORE, int),
    Option("keep_last", 0, "keep only the newest K epochs' files (0: keep all)", RUN, IGNORE, int),
    Option("tensorboard", None, "live curves for TensorBoard in CHECKPOINT_PATH/tensorboard/ (losses, learning rates, "
           "sample grids, --eval_every figures; default: on when the tensorboard package is installed)", RUN, IGNORE),
    Option("max_bad_steps", 5, "stop after this many non-finite losses in a row", RUN, IGNORE, int),
    Option("allow_clip_mismatch", False, "accept a --clip_model other than the CLIP that preprocessed the data",
           RUN, IGNORE),
    Option("overwrite", False, "let a fresh run use folders that hold another run's files, or a resume of epoch K "
           "replace later epochs: those files are first moved into previous_run_<time>/ inside their folder "
           "(nothing is deleted)", RUN, IGNORE),

    Option("eval_every", 0, "evaluate FID/IS/KID/CLIP score every K epochs (0: off)", EVALUATION, IGNORE, int),
    Option("eval_protocol", "standard", "--eval_every's measurement: standard (torch-fidelity's FID, KID, IS and "
           "CLIP score) or course (the graders' FID and IS, which rank the teams: pytorch-ignite, one prompt, the "
           "first --eval_samples test images in batches of 128, or in one if fewer)", EVALUATION, IGNORE, str,
           ("standard", "course")),
    Option("eval_data", None, "preprocessed test zip for --eval_every", EVALUATION, IGNORE, str),
    Option("eval_samples", 1000, "test images scored at each evaluation", EVALUATION, IGNORE, int),
    Option("inception_weights", None, "local Inception weights for the metrics: torch-fidelity's "
           "weights-inception-2015-12-05-6726825d.pth, or torchvision's inception_v3_google-0cc3c7bd.pth for "
           "--eval_protocol course (default: downloaded)", EVALUATION, IGNORE, str),
)
BY_NAME = {option.name: option for option in OPTIONS}
RECIPES: dict[str, dict[str, Any]] = {
    "guideline": {},
    "fast": {"lam": 0.0, "beta": 0.1, "detach_condition": True, "mismatch": True, "ema": True, "ca_init_std": 3.0},
}
# Each architecture's own values for the options not given (applied after the recipe). GALIP's learning rates and
# widths are the paper's (ngf 32: DF-GAN's CUB width); its Adam betas (0, 0.9) are fixed in train_galip.py.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "stackgan": {},
    "galip": {"g_in_chans": 256, "d_in_chans": 768, "g_lr": 1e-4, "d_lr": 4e-4, "mismatch": True, "ema": True},
}
EXPLICIT = "explicit_options"  # the Namespace attribute listing the options given on the command line
MAX_LEARNING_RATE = 1.0  # above it no GAN here trains: one step moves each weight by up to 50 times its initial size


def add_option(group: argparse._ArgumentGroup, option: Option) -> None:
    flag = f"--{option.name}"
    if option.type is None:
        action = "store_true" if option.group == COURSE else argparse.BooleanOptionalAction
        group.add_argument(flag, action=action, default=option.default, help=option.help)
    else:
        group.add_argument(flag, type=option.type, default=option.default, choices=option.choices, help=option.help)


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS:
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        add_option(groups[option.group], option)
    return parser


def parse(argv: list[str] | None, description: str) -> argparse.Namespace:
    """Parse a command line; record which options it gave (recipes fill only the others)."""
    parser = build_parser(description)
    args = parser.parse_args(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    setattr(args, EXPLICIT, sorted(vars(parser.parse_args(argv))))
    return args


def complete(args: argparse.Namespace, network_arch: str | None = None) -> argparse.Namespace:
    """A copy of `args` with every option: missing ones (the course's main.py gives only its flags) at their
    default, the recipe's value or the architecture's (`ARCH_DEFAULTS`). Options given explicitly always win.
    `network_arch`: the architecture of the network.py in use, the default of --arch (the course's main.py cannot
    pass --arch, so GALIP's module submitted as network.py trains as GALIP)."""
    completed = copy.copy(args)
    explicit = set(getattr(args, EXPLICIT, vars(args)))
    if network_arch is not None and "arch" not in explicit:
        completed.arch = network_arch
    recipe = getattr(args, "recipe", BY_NAME["recipe"].default)
    if recipe not in RECIPES:
        raise T2IError(f"--recipe {recipe}: one of {sorted(RECIPES)}")
    for option in OPTIONS:
        if not hasattr(completed, option.name):
            setattr(completed, option.name, option.default)
        if option.name in RECIPES[recipe] and option.name not in explicit:
            setattr(completed, option.name, RECIPES[recipe][option.name])
        # The course's main.py declares its paths with type=pathlib.Path: from here on every path is a str, so
        # that JSON, the resume comparisons and the messages see the same value whichever main.py parsed it.
        if isinstance(getattr(completed, option.name), os.PathLike):
            setattr(completed, option.name, os.fspath(getattr(completed, option.name)))
    if completed.arch not in ARCH_DEFAULTS:
        raise T2IError(f"--arch {completed.arch}: one of {sorted(ARCH_DEFAULTS)}")
    for name, value in ARCH_DEFAULTS[completed.arch].items():
        if name not in explicit:
            setattr(completed, name, value)
    setattr(completed, EXPLICIT, sorted(explicit))
    return completed


def saved_form(args: argparse.Namespace) -> dict[str, Any]:
    """The options as JSON-ready values (what run_options.json holds under "options")."""
    return {option.name: getattr(args, option.name) for option in OPTIONS}


def compare_with_saved(saved: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Check a resumed run against the options its checkpoints were made with. A model option that differs is a
    T2IError naming it; the other changes are returned as lines such as '--lam: 10.0 -> 0.0'."""
    changes = []
    for option in OPTIONS:
        if option.on_resume == IGNORE or option.name not in saved:
            continue
        before, now = saved[option.name], getattr(args, option.name)
        if before == now:
            continue
        if option.on_resume == MUST_MATCH:
            raise T2IError(f"--{option.name} {now}: the checkpoints to resume were made with --{option.name} "
                           f"{before}; resume with the same value (the weights would not fit otherwise)")
        changes.append(f"--{option.name}: {before} -> {now}")
    return changes


def validate(args: argparse.Namespace) -> None:
    """One-line T2IError for a value no run can use (checked before anything is written)."""
    from t2i.training.augment import parse_policy

    at_least = {"batch_size": 2, "num_epochs": 1, "report_interval": 1, "noise_dim": 1, "projection_dim": 1,
                "clip_embedding_dim": 1, "g_in_chans": 1, "d_in_chans": 1, "num_workers": 0,
                "save_every_steps": 0, "keep_last": 0, "max_bad_steps": 1, "eval_every": 0, "eval_samples": 10}
    reasons = {"batch_size": " (BatchNorm needs two images a batch)", "eval_samples": " (IS uses 10 splits)"}
    for name, minimum in at_least.items():
        value = getattr(args, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise T2IError(f"--{name} {value}: must be an integer of at least {minimum}{reasons.get(name, '')}")
    for option in OPTIONS:
        value = getattr(args, option.name)
        if option.type is float and value is not None and not math.isfinite(value):
            raise T2IError(f"--{option.name} {value}: must be a finite number")
    for name in ("learning_rate", "g_lr", "d_lr", "tau", "xi", "ca_init_std"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise T2IError(f"--{name} {value}: must be positive")
    for name in ("learning_rate", "g_lr", "d_lr"):
        value = getattr(args, name)
        if value is not None and value > MAX_LEARNING_RATE:
            raise T2IError(f"--{name} {value}: an Adam step moves every weight by up to the learning rate, and the "
                           f"weights start near 0.02; give at most {MAX_LEARNING_RATE:g} (the course's: 2e-4)")
    for name in ("gamma", "lam", "beta"):
        if not getattr(args, name) >= 0:
            raise T2IError(f"--{name} {getattr(args, name)}: must be zero or positive")
    if not 0 < args.ema_decay < 1:
        raise T2IError(f"--ema_decay {args.ema_decay}: must be between 0 and 1")
    if args.num_stage not in (1, 2, 3):
        raise T2IError(f"--num_stage {args.num_stage}: must be 1, 2 or 3 (64, 128 or 256 px)")
    if args.arch == "galip":
        if args.g_in_chans % 8:
            raise T2IError(f"--g_in_chans {args.g_in_chans}: must be a multiple of 8 with --arch galip (8 x ngf)")
    elif args.g_in_chans % (multiple := 16 * 2 ** (args.num_stage - 1)):
        raise T2IError(f"--g_in_chans {args.g_in_chans}: must be a multiple of {multiple} for {args.num_stage} "
                       f"stages (each stage halves the width, from Ng/16 at 64 px)")
    try:
        parse_policy(args.diffaugment)
    except ValueError as err:
        raise T2IError(f"--diffaugment {args.diffaugment}: {err}") from None
    if args.resume_epoch not in (-1, "latest") and (not isinstance(args.resume_epoch, int) or args.resume_epoch < 0):
        raise T2IError(f"--resume_epoch {args.resume_epoch}: an epoch number, -1 (fresh run) or 'latest'")
    if args.resume_epoch != -1 and args.resume_checkpoint_path is None:
        raise T2IError(f"--resume_epoch {args.resume_epoch} needs --resume_checkpoint_path (the folder to resume "
                       f"from); without it the run would silently start from scratch")
    for name in ("checkpoint_path", "result_path"):
        if os.path.isfile(getattr(args, name)):
            raise T2IError(f"--{name} {getattr(args, name)}: is a file; give a folder")
    if args.eval_every and not args.eval_data:
        raise T2IError("--eval_every needs --eval_data (a preprocessed test zip)")
