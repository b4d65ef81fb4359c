"""Evaluate a checkpoint on the preprocessed test split: FID, KID and IS (torch-fidelity) and CLIP score.

    python evaluate.py --checkpoint_path checkpoints --load_epoch 5 --test_data test_data.zip

One image is generated per test image (or per image of a seeded subset, --num_samples), from one of its
captions; captions, noise and conditioning augmentation all come from --seed, so two runs score the same images.
The figures, how they are computed and their caveats: `t2i/evaluation/evaluator.py` and `t2i/evaluation/metrics.py`.
"""
from __future__ import annotations

import argparse
import os

from models import NETWORKS
from t2i import clip_utils
from t2i.checkpoints import load_generator, read_run_record
from t2i.devices import resolve_device
from t2i.errors import T2IError, one_line_errors
from t2i.evaluation.evaluator import Evaluator, load_test_dataset, summary_line, write_report
from t2i.evaluation.metrics import IS_SPLITS
from t2i.files import remove_stale_temp_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="FID, KID, IS and CLIP score of a checkpoint on the test split.")
    parser.add_argument("--checkpoint_path", required=True, help="folder with hyperparameter.pt and epoch files")
    parser.add_argument("--load_epoch", type=int, required=True, help="epoch N of epoch_N_Gen.pt")
    parser.add_argument("--test_data", required=True, help="preprocessed test zip")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="score this many test images (a seeded subset) for a quick estimate; default all")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--clip_model", default="ViT-B/32",
                        help="CLIP name, or a local CLIP file (see main.py's --clip_model); must be the model that "
                             "preprocessed the zip")
    parser.add_argument("--allow_clip_mismatch", action="store_true",
                        help="accept a test zip or --clip_model other than the CLIP the checkpoint was trained with")
    parser.add_argument("--inception_weights", default=None,
                        help="torch-fidelity's InceptionV3 weights file; downloaded when absent")
    parser.add_argument("--out", default=None,
                        help="JSON report path (default CHECKPOINT_PATH/eval_epoch_N.json); the grid goes beside it")
    parser.add_argument("--seed", type=int, default=0, help="caption, noise and subset draw")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> dict:
    """The command's work; returns the report (also written to --out)."""
    device = resolve_device(args.device)
    if args.num_samples is not None and args.num_samples < IS_SPLITS:
        raise T2IError(f"--num_samples {args.num_samples}: IS uses {IS_SPLITS} splits, so at least {IS_SPLITS} "
                       f"images are needed; pass --num_samples {IS_SPLITS} or more, or leave it out to score the "
                       f"whole test zip")
    out = args.out or os.path.join(args.checkpoint_path, f"eval_epoch_{args.load_epoch}.json")
    if os.path.isdir(out):
        raise T2IError(f"--out {out}: is a folder; give the report's file name")
    grid_path = os.path.splitext(out)[0] + "_grid.png"
    generator, hyp = load_generator(args.checkpoint_path, args.load_epoch, device, networks=NETWORKS)
    progress = not args.quiet
    dataset = load_test_dataset(args.test_data, hyp["clip_embedding_dim"], progress)
    # The test zip, the checkpoint and --clip_model must share one CLIP (each records its own).
    record = read_run_record(args.checkpoint_path)
    checkpoint_clip = record.get("clip") if record else None
    test_clip = dataset.settings.get("clip")
    clip_utils.check_same_clip(checkpoint_clip, f"the checkpoint in {args.checkpoint_path}", test_clip,
                    f"the CLIP of --test_data {args.test_data}", args.allow_clip_mismatch)
    clip_model = clip_utils.load_clip_checked(args.clip_model, device, dataset.embedding_dim,
                                              f"the test zip {args.test_data}")
    clip_utils.check_clip_matches(test_clip, clip_model, f"--test_data {args.test_data}", args.allow_clip_mismatch)
    clip_utils.check_clip_matches(checkpoint_clip, clip_model, f"the checkpoint in {args.checkpoint_path}",
                       args.allow_clip_mismatch)
    evaluator = Evaluator(dataset, num_samples=args.num_samples, batch_size=args.batch_size, device=device,
                          clip_model=clip_model, inception_weights=args.inception_weights, seed=args.seed,
                          progress=progress)
    for folder in dict.fromkeys([os.path.dirname(os.path.abspath(path)) for path in (out, grid_path)]):
        remove_stale_temp_files(folder, lambda name: name in (os.path.basename(out), os.path.basename(grid_path)))
    report = evaluator(generator, grid_path)
    report.update(checkpoint_path=args.checkpoint_path, load_epoch=args.load_epoch, test_data=args.test_data,
                  clip_model=args.clip_model, checkpoint_clip=checkpoint_clip,
                  inception_weights=args.inception_weights, device=str(device), batch_size=args.batch_size,
                  grid=grid_path)
    write_report(out, report)
    for caveat in report["caveats"]:
        print(f"note: {caveat}")
    print(f"{summary_line(report)} -> {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        run(args)
    return 0


if __name__ == "__main__":
    main()
