"""Command line for training: the course's flags with the course's meaning, plus options with defaults.

    python main.py --train_data train_data_6cap.zip --batch_size 24 --num_epochs 20 --learning_rate 2e-4 \
        --report_interval 50 --noise_dim 100 --projection_dim 128 --clip_embedding_dim 512 \
        --checkpoint_path ./checkpoints --result_path ./results --num_stage 3 --resume_epoch -1 \
        --use_uncond_loss --use_contrastive_loss
"""
from __future__ import annotations

import argparse
import os

from fix_seed import seed_fix
from train import OPTION_DEFAULTS, train


def resume_epoch(value: str) -> int | str:
    """An epoch number, -1 for no resume, or 'latest' (the newest complete or mid-epoch checkpoint)."""
    if value == "latest":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an epoch number, -1 or 'latest', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the CLIP-conditioned StackGAN++ (course flags first).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    course = parser.add_argument_group("course flags")
    course.add_argument("--train_data", type=str, default="train_data_6cap.zip", help="preprocessed train zip")
    course.add_argument("--batch_size", type=int, default=24)
    course.add_argument("--num_epochs", type=int, default=20, help="total epochs (epochs count from 0)")
    course.add_argument("--learning_rate", type=float, default=2e-4)
    course.add_argument("--report_interval", type=int, default=50, help="log the losses every N iterations")
    course.add_argument("--noise_dim", type=int, default=100)
    course.add_argument("--projection_dim", type=int, default=128, help="conditioning augmentation output size")
    course.add_argument("--clip_embedding_dim", type=int, default=512)
    course.add_argument("--checkpoint_path", type=str, default="./checkpoints")
    course.add_argument("--result_path", type=str, default="./results")
    course.add_argument("--num_stage", type=int, default=3, help="1, 2 or 3 stages (64, 128, 256 px)")
    course.add_argument("--resume_epoch", type=resume_epoch, default=-1,
                        help="continue after this epoch; -1: fresh run; 'latest': newest checkpoint, if any")
    course.add_argument("--use_uncond_loss", action="store_true")
    course.add_argument("--use_contrastive_loss", action="store_true")
    course.add_argument("--resume_checkpoint_path", type=str, default=None)

    d = OPTION_DEFAULTS
    extra = parser.add_argument_group("options")
    extra.add_argument("--clip_model", default=d["clip_model"], help="CLIP name, or a local CLIP state-dict file")
    extra.add_argument("--g_in_chans", type=int, default=d["g_in_chans"], help="Ng, generator width")
    extra.add_argument("--d_in_chans", type=int, default=d["d_in_chans"], help="Nd, discriminator width")
    extra.add_argument("--device", default=d["device"], help="cuda, cuda:1, cpu (default: cuda if available)")
    extra.add_argument("--num_workers", type=int, default=d["num_workers"], help="DataLoader worker processes")
    extra.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d["amp"],
                       help="mixed precision: fp16 + gradient scaling on CUDA (default there), bf16 on CPU")
    extra.add_argument("--gamma", type=float, default=d["gamma"], help="weight of L_ConD")
    extra.add_argument("--lam", type=float, default=d["lam"], help="weight of L_ConG")
    extra.add_argument("--beta", type=float, default=d["beta"], help="weight of the KL term L_CA")
    extra.add_argument("--ca_init_std", type=float, default=d["ca_init_std"],
                       help="init std of the conditioning-augmentation weights that give mu (0.02: the course's)")
    extra.add_argument("--tau", type=float, default=d["tau"], help="contrastive temperature")
    extra.add_argument("--language_free", action="store_true", help="LAFITE: train from image embeddings only")
    extra.add_argument("--xi", type=float, default=d["xi"], help="language-free perturbation size")
    extra.add_argument("--g_lr", type=float, default=d["g_lr"], help="generator learning rate (default: lr)")
    extra.add_argument("--d_lr", type=float, default=d["d_lr"], help="discriminator learning rate (default: lr)")
    extra.add_argument("--ema", action=argparse.BooleanOptionalAction, default=d["ema"],
                       help="save an exponential moving average of G as epoch_N_Gen.pt")
    extra.add_argument("--ema_decay", type=float, default=d["ema_decay"])
    extra.add_argument("--diffaugment", default=d["diffaugment"],
                       help="DiffAugment policy for D inputs, e.g. color,translation,cutout ('' = off)")
    extra.add_argument("--mismatch", action=argparse.BooleanOptionalAction, default=d["mismatch"],
                       help="mismatched-caption negatives for the conditional discriminator")
    extra.add_argument("--detach_condition", action=argparse.BooleanOptionalAction, default=d["detach_condition"],
                       help="G's step shows D a detached mu, so only the image can pass (off: the course's graph)")
    extra.add_argument("--save_every_steps", type=int, default=d["save_every_steps"],
                       help="mid-epoch snapshot every N iterations (0: off)")
    extra.add_argument("--keep_last", type=int, default=d["keep_last"],
                       help="keep only the newest K epochs' files (0: keep all)")
    extra.add_argument("--max_bad_steps", type=int, default=d["max_bad_steps"],
                       help="stop after this many non-finite losses in a row")
    extra.add_argument("--overwrite", action="store_true",
                       help="allow a fresh run into a checkpoint folder that already holds epochs")
    extra.add_argument("--eval_every", type=int, default=d["eval_every"],
                       help="evaluate FID/IS/KID/CLIP score every K epochs (0: off)")
    extra.add_argument("--eval_data", default=d["eval_data"], help="preprocessed test zip for --eval_every")
    extra.add_argument("--eval_samples", type=int, default=d["eval_samples"])
    extra.add_argument("--inception_weights", default=d["inception_weights"],
                       help="local Inception weights for the metrics (default: downloaded)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.makedirs(args.checkpoint_path, exist_ok=True)
    os.makedirs(args.result_path, exist_ok=True)
    seed_fix(0)
    train(args)


if __name__ == "__main__":
    main()
