"""Prompt -> result_64.png, result_128.png, result_256.png (the course's command, and what graders run).

    python generate_image.py --prompt "The woman is young and has blond hair." --load_epoch 19 \
        --checkpoint_path ./checkpoints
"""
from __future__ import annotations

import argparse
import math
import os

import torch

import clip_utils
import plots
from checkpoints import CheckpointError, load_generator
from train_utils import normalize, print_hyp

# The course's short names for --clip_model, beside full CLIP names and local state-dict files.
CLIP_SHORT_NAMES = {"B/32": "ViT-B/32", "L/14": "ViT-L/14", "B/16": "ViT-B/16"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate images for a text prompt from a checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompt", type=str, required=True)
    parser.add_argument("--load_epoch", type=int, required=True)
    parser.add_argument("--checkpoint_path", type=str, required=True)
    parser.add_argument("--show_hyp", action="store_true", help="print hyperparameter.pt")
    parser.add_argument("--clip_model", type=str, default="B/32",
                        help="B/32, L/14, B/16, a full CLIP name, or a local CLIP state-dict file")
    parser.add_argument("--seed", type=int, default=None, help="seed for the noise (default: random)")
    parser.add_argument("--num_images", type=int, default=1, help="more than 1 saves grids of that many images")
    parser.add_argument("--out_dir", type=str, default=".", help="where the PNG files go")
    parser.add_argument("--device", type=str, default=None, help="default: cuda if available, else cpu")
    return parser


def encode_prompt(clip_model: torch.nn.Module, prompt: str, device: torch.device) -> torch.Tensor:
    """normalize(encode_text(tokenize(prompt))) as float32, [1, D]."""
    try:
        tokens = clip_utils.tokenize([prompt])
    except ValueError:
        raise CheckpointError(f"--prompt is longer than CLIP's {clip_utils.CONTEXT_LENGTH} tokens; "
                              f"shorten it") from None
    with torch.no_grad():
        return normalize(clip_model.encode_text(tokens.to(device)).float())


@torch.no_grad()
def generate(generator: torch.nn.Module, txt_feature: torch.Tensor, noise_dim: int, num_images: int,
             device: torch.device) -> list[torch.Tensor]:
    """One [num_images, 3, H, W] batch in [-1, 1] per stage; noise ~ N(0, I) of shape [n, noise_dim]."""
    noise = torch.randn(num_images, noise_dim).to(device)
    fake_images, _, _ = generator(txt_feature.expand(num_images, -1), noise)
    return [images.float().cpu() for images in fake_images]


def save_results(fake_images: list[torch.Tensor], out_dir: str, prompt: str) -> list[str]:
    """result_{64,128,256}.png for the stages that exist: one image, or a grid of all of them."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for images in fake_images[-3:]:
        path = os.path.join(out_dir, f"result_{images.shape[-1]}.png")
        ncol = math.ceil(math.sqrt(len(images)))
        plots.save_image_grid(images, path, ncol=ncol)
        paths.append(path)
    if len(fake_images[-1]) > 1:
        path = os.path.join(out_dir, "result_grid.png")
        plots.save_image_grid(fake_images[-1], path, ncol=math.ceil(math.sqrt(len(fake_images[-1]))),
                              captions=[f"{prompt} (#{i})" for i in range(len(fake_images[-1]))])
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.num_images < 1:
        raise SystemExit("Error: --num_images must be at least 1")
    try:
        generator, hyp = load_generator(args.checkpoint_path, args.load_epoch, device)
        if args.show_hyp:
            print_hyp(hyp)
        clip_name = CLIP_SHORT_NAMES.get(args.clip_model, args.clip_model)
        clip_model = clip_utils.load_clip(clip_name, device)
        if clip_utils.clip_embedding_dim(clip_model) != hyp["clip_embedding_dim"]:
            raise CheckpointError(f"--clip_model {args.clip_model} gives {clip_utils.clip_embedding_dim(clip_model)}"
                                  f"-d embeddings but the checkpoint was trained on {hyp['clip_embedding_dim']}-d")
        txt_feature = encode_prompt(clip_model, args.prompt, device)
    except (CheckpointError, ValueError) as err:
        raise SystemExit(f"Error: {err}") from None
    if args.seed is not None:
        torch.manual_seed(args.seed)
    paths = save_results(generate(generator, txt_feature, hyp["noise_dim"], args.num_images, device),
                         args.out_dir, args.prompt)
    print(f"Saved {', '.join(paths)} for {args.prompt!r} (epoch {args.load_epoch})")


if __name__ == "__main__":
    main()
