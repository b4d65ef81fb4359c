"""Write a synthetic stand-in for Multimodal CelebA-HQ, in exactly the raw layout the preprocessing reads.

    python synthetic_data.py --out demo_data --num_images 300 --size 256 --seed 0

The pictures and captions: `t2i/synthetic/world.py`.
"""
from __future__ import annotations

import argparse

from t2i.errors import one_line_errors
from t2i.synthetic.world import write_raw_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic raw Multimodal CelebA-HQ-style dataset.")
    parser.add_argument("--out", required=True, help="output folder (zip, split pickles, attributes json)")
    parser.add_argument("--num_images", type=int, default=300)
    parser.add_argument("--num_train", type=int, default=None, help="ids in the train pickle (default 80%%)")
    parser.add_argument("--num_test", type=int, default=None, help="ids in the test pickle (default the rest)")
    parser.add_argument("--size", type=int, default=256, help="side of the JPEG images in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long_captions", type=float, default=0.0,
                        help="fraction of captions made longer than CLIP's 77 tokens")
    parser.add_argument("--image_dir", default="image", help="image folder name (image or images)")
    parser.add_argument("--caption_dir", default="celeba-caption", help="caption folder name")
    parser.add_argument("--folder", action="store_true", help="write a folder instead of a zip")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with one_line_errors():  # a full disk or a read-only --out: one line naming the file
        result = write_raw_dataset(args.out, args.num_images, args.num_train, args.num_test, args.size, args.seed,
                                   args.long_captions, args.image_dir, args.caption_dir, args.folder)
    splits = result["splits"]
    print(f"wrote {args.num_images} images to {result['paths']['source']} "
          f"({len(splits['train'])} train, {len(splits['test'])} test ids)")


if __name__ == "__main__":
    main()
