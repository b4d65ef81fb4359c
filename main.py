"""Command line for training: the course's flags with the course's meaning, plus options with defaults.

    python main.py --train_data train_data_6cap.zip --batch_size 24 --num_epochs 20 --learning_rate 2e-4 \
        --report_interval 50 --noise_dim 100 --projection_dim 128 --clip_embedding_dim 512 \
        --checkpoint_path ./checkpoints --result_path ./results --num_stage 3 --resume_epoch -1 \
        --use_uncond_loss --use_contrastive_loss

Every option is declared once, in `t2i/training/options.py`. The folders are made by `train` once the input is checked.
"""
from __future__ import annotations

import argparse

from fix_seed import seed_fix
from t2i.training import options
from train import train

DESCRIPTION = "Train the CLIP-conditioned StackGAN++ (course flags first)."


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(DESCRIPTION)


def main(argv: list[str] | None = None) -> None:
    args = options.parse(argv, DESCRIPTION)
    seed_fix(0)
    train(args)


if __name__ == "__main__":
    main()
