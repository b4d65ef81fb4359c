"""Our re-creation of the course's plain `main.py`, written from the contract: only the course's flags.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time.
"""
import argparse
import os

from fix_seed import seed_fix
from train import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_data", type=str, default="./train_data_6cap.zip")
    parser.add_argument("--batch_size", type=int, default=24)
    parser.add_argument("--num_epochs", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--report_interval", type=int, default=50)
    parser.add_argument("--noise_dim", type=int, default=100)
    parser.add_argument("--projection_dim", type=int, default=128)
    parser.add_argument("--clip_embedding_dim", type=int, default=512)
    parser.add_argument("--checkpoint_path", type=str, default="./checkpoints")
    parser.add_argument("--result_path", type=str, default="./results")
    parser.add_argument("--num_stage", type=int, default=3)
    parser.add_argument("--resume_epoch", type=int, default=-1)
    parser.add_argument("--use_uncond_loss", action="store_true")
    parser.add_argument("--use_contrastive_loss", action="store_true")
    parser.add_argument("--resume_checkpoint_path", type=str, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    os.makedirs(args.checkpoint_path, exist_ok=True)
    os.makedirs(args.result_path, exist_ok=True)
    seed_fix(0)
    train(args)
