"""Our re-creation of the graders' plain `main.py`, written from ../shared/CONTRACT.md ("main.py flags").

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time. Facts kept: the warnings filter and the imports (train.py among
them) before the flags are read; exactly the 15 course flags with their types and defaults, so the three paths
reach `train(args)` as `pathlib.Path` objects and `--resume_checkpoint_path` as a plain str; the two folders made,
`seed_fix(0)`, then `train(args)`.
"""
import warnings

warnings.filterwarnings("ignore")

import argparse  # noqa: E402  (the graders' file filters warnings before its imports)
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402,F401  (imported by the graders' file, unused there too)

from fix_seed import seed_fix  # noqa: E402
from train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_data", type=Path, default="sample_train.zip")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_epochs", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--report_interval", type=int, default=100)
    parser.add_argument("--noise_dim", type=int, default=100)
    parser.add_argument("--projection_dim", type=int, default=128)
    parser.add_argument("--clip_embedding_dim", type=int, default=512)
    parser.add_argument("--checkpoint_path", type=Path, default="model_exp1")
    parser.add_argument("--result_path", type=Path, default="images_exp1")
    parser.add_argument("--use_uncond_loss", action="store_true")
    parser.add_argument("--use_contrastive_loss", action="store_true")
    parser.add_argument("--num_stage", type=int, default=1)
    parser.add_argument("--resume_checkpoint_path", default=None)
    parser.add_argument("--resume_epoch", type=int, default=-1)
    args = parser.parse_args()

    os.makedirs(args.checkpoint_path, exist_ok=True)
    os.makedirs(args.result_path, exist_ok=True)
    seed_fix(0)
    train(args)


if __name__ == "__main__":
    main()
