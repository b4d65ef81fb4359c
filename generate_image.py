"""Prompt -> result_64.png, result_128.png, result_256.png (the course's command, and what the graders run).

    python generate_image.py --prompt "The woman is young and has blond hair." --load_epoch 19 \
        --checkpoint_path ./checkpoints
"""
from __future__ import annotations

import argparse

import torch

from models import NETWORKS
from t2i import clip_utils
from t2i.checkpoints import load_generator, read_run_record
from t2i.devices import resolve_device
from t2i.errors import T2IError, one_line_errors
from t2i.generation import check_out_dir, check_prompt, encode_prompt, generate, save_results
from train_utils import print_hyp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate images for a text prompt from a checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompt", type=str, required=True)
    parser.add_argument("--load_epoch", type=int, required=True)
    parser.add_argument("--checkpoint_path", type=str, required=True)
    parser.add_argument("--show_hyp", action="store_true", help="print hyperparameter.pt")
    parser.add_argument("--clip_model", type=str, default="B/32",
                        help="B/32, L/14, B/16, a full CLIP name, or a local CLIP file (see main.py's --clip_model)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the noise (default: random)")
    parser.add_argument("--num_images", type=int, default=1, help="more than 1 saves grids of that many images")
    parser.add_argument("--out_dir", type=str, default=".",
                        help="where the PNG files go (result_*.png files of another run there are replaced or removed)")
    parser.add_argument("--device", type=str, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--allow_clip_mismatch", action="store_true",
                        help="accept a --clip_model other than the CLIP the checkpoint was trained with")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        check_prompt(args.prompt)
        if args.num_images < 1:
            raise T2IError(f"--num_images {args.num_images}: must be at least 1")
        check_out_dir(args.out_dir)
        device = resolve_device(args.device)
        generator, hyp = load_generator(args.checkpoint_path, args.load_epoch, device, networks=NETWORKS)
        if args.show_hyp:
            print_hyp(hyp)
        clip_model = clip_utils.load_clip_checked(args.clip_model, device, hyp["clip_embedding_dim"],
                                                  f"the checkpoint in {args.checkpoint_path}")
        record = read_run_record(args.checkpoint_path)
        if record is None:
            print(f"note: {args.checkpoint_path} has no run_options.json (not written by this package's training), so "
                  f"the CLIP it was trained with cannot be checked against --clip_model")
        clip_utils.check_clip_matches(record and record.get("clip"), clip_model,
                                      f"the checkpoint in {args.checkpoint_path}", args.allow_clip_mismatch)
        txt_feature = encode_prompt(clip_model, args.prompt, device)
        if args.seed is not None:
            torch.manual_seed(args.seed)
        paths = save_results(generate(generator, txt_feature, hyp["noise_dim"], args.num_images, device),
                             args.out_dir, args.prompt)
    print(f"Saved {', '.join(paths)} for {args.prompt!r} (epoch {args.load_epoch})")


if __name__ == "__main__":
    main()
