"""Evaluate a checkpoint on the preprocessed test split, by the field's standard protocol or by the graders'.

    python evaluate.py --checkpoint_path checkpoints --load_epoch 5 --test_data test_data.zip
    python evaluate.py --protocol course --checkpoint_path checkpoints --load_epoch 5 --test_data test_data.zip

--protocol standard (the default): FID, KID and IS (torch-fidelity) and CLIP score, for comparing with papers.
One image is generated per test image (or per image of a seeded subset, --num_samples), from one of its captions;
captions, noise and conditioning augmentation all come from --seed, so two runs score the same images. The
figures, how they are computed and their caveats: `t2i/evaluation/evaluator.py` and `t2i/evaluation/metrics.py`.
--protocol course: the graders' FID and IS, which rank the teams and decide Problem 6: pytorch-ignite on the
course's test loader, every fake from one prompt (`t2i/evaluation/course.py`). docs/evaluation.md compares the two.
"""
from __future__ import annotations

import argparse
import os

from models import NETWORKS
from t2i import clip_utils
from t2i.checkpoints import load_generator, read_run_record
from t2i.devices import resolve_device
from t2i.errors import T2IError, one_line_errors
from t2i.evaluation.course import GRADERS_BATCH_SIZE, GRADERS_SEED, PUBLISHED_PROMPT, CourseEvaluator, graders_lines
from t2i.evaluation.evaluator import Evaluator, load_test_dataset, summary_line, write_report
from t2i.evaluation.metrics import IS_SPLITS
from t2i.files import remove_stale_temp_files
from t2i.generation import encode_prompt

STANDARD_BATCH_SIZE = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The figures of a checkpoint on the test split: FID, KID, IS and "
                                                 "CLIP score, or the graders' FID and IS (--protocol course).")
    parser.add_argument("--checkpoint_path", required=True, help="folder with hyperparameter.pt and epoch files")
    parser.add_argument("--load_epoch", type=int, required=True, help="epoch N of epoch_N_Gen.pt")
    parser.add_argument("--test_data", required=True, help="preprocessed test zip")
    parser.add_argument("--protocol", choices=("standard", "course"), default="standard",
                        help="standard: torch-fidelity's FID, KID, IS and CLIP score (comparable with papers); "
                             "course: the graders' FID and IS (pytorch-ignite, one prompt), which rank the teams "
                             "and decide Problem 6")
    parser.add_argument("--prompt", default=PUBLISHED_PROMPT,
                        help="--protocol course: the one prompt of every generated image (default: the graders' "
                             "published run's)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="score this many test images for a quick estimate (standard: a seeded subset; course: "
                             "the first ones, in whole batches); default all")
    parser.add_argument("--batch_size", type=int, default=None,
                        help=f"images a batch (default {STANDARD_BATCH_SIZE}; --protocol course: the graders' loader "
                             f"batch, {GRADERS_BATCH_SIZE} (or --num_samples, if fewer), which drops the last "
                             f"incomplete one)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--clip_model", default="ViT-B/32",
                        help="CLIP name, or a local CLIP file (see main.py's --clip_model); must be the model that "
                             "preprocessed the zip")
    parser.add_argument("--allow_clip_mismatch", action="store_true",
                        help="accept a test zip or --clip_model other than the CLIP the checkpoint was trained with")
    parser.add_argument("--inception_weights", default=None,
                        help="the protocol's Inception weights file: torch-fidelity's "
                             "weights-inception-2015-12-05-6726825d.pth (standard) or torchvision's "
                             "inception_v3_google-0cc3c7bd.pth (course); downloaded when absent")
    parser.add_argument("--out", default=None,
                        help="JSON report path (default CHECKPOINT_PATH/eval_epoch_N.json, course_eval_epoch_N.json "
                             "for --protocol course); a picture goes beside it (_grid.png)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"the random draw: caption, noise and subset (standard, default 0); the graders' "
                             f"manual_seed (course, default {GRADERS_SEED})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def standard_report(args: argparse.Namespace, generator, hyp: dict, device, checkpoint_clip: dict | None,
                    grid_path: str, progress: bool) -> dict:
    """torch-fidelity's FID, KID, IS and CLIP score, one generated image per test image and caption."""
    dataset = load_test_dataset(args.test_data, hyp["clip_embedding_dim"], progress)
    # The test zip, the checkpoint and --clip_model must share one CLIP (each records its own).
    test_clip = dataset.settings.get("clip")
    clip_utils.check_same_clip(checkpoint_clip, f"the checkpoint in {args.checkpoint_path}", test_clip,
                               f"the CLIP of --test_data {args.test_data}", args.allow_clip_mismatch)
    clip_model = clip_utils.load_clip_checked(args.clip_model, device, dataset.embedding_dim,
                                              f"the test zip {args.test_data}")
    clip_utils.check_clip_matches(test_clip, clip_model, f"--test_data {args.test_data}", args.allow_clip_mismatch)
    clip_utils.check_clip_matches(checkpoint_clip, clip_model, f"the checkpoint in {args.checkpoint_path}",
                                  args.allow_clip_mismatch)
    evaluator = Evaluator(dataset, num_samples=args.num_samples, batch_size=args.batch_size or STANDARD_BATCH_SIZE,
                          device=device, clip_model=clip_model, inception_weights=args.inception_weights,
                          seed=0 if args.seed is None else args.seed, progress=progress)
    return evaluator(generator, grid_path)


def course_report(args: argparse.Namespace, generator, hyp: dict, device, checkpoint_clip: dict | None,
                  grid_path: str, progress: bool) -> dict:
    """The graders' FID and IS: every fake from --prompt, the real images through the course's loader."""
    clip_model = clip_utils.load_clip_checked(args.clip_model, device, hyp["clip_embedding_dim"],
                                              f"the checkpoint in {args.checkpoint_path}")
    clip_utils.check_clip_matches(checkpoint_clip, clip_model, f"the checkpoint in {args.checkpoint_path}",
                                  args.allow_clip_mismatch)
    evaluator = CourseEvaluator(args.test_data, encode_prompt(clip_model, args.prompt, device),
                                prompt=args.prompt, device=device, inception_weights=args.inception_weights,
                                batch_size=args.batch_size or min(GRADERS_BATCH_SIZE, args.num_samples or
                                                                  GRADERS_BATCH_SIZE),
                                num_samples=args.num_samples,
                                seed=GRADERS_SEED if args.seed is None else args.seed, progress=progress)
    return evaluator(generator, grid_path)


def run(args: argparse.Namespace) -> dict:
    """The command's work; returns the report (also written to --out)."""
    device = resolve_device(args.device)
    course = args.protocol == "course"
    if not course and args.num_samples is not None and args.num_samples < IS_SPLITS:
        raise T2IError(f"--num_samples {args.num_samples}: IS uses {IS_SPLITS} splits, so at least {IS_SPLITS} "
                       f"images are needed; pass --num_samples {IS_SPLITS} or more, or leave it out to score the "
                       f"whole test zip")
    name = f"{'course_' if course else ''}eval_epoch_{args.load_epoch}.json"
    out = args.out or os.path.join(args.checkpoint_path, name)
    if os.path.isdir(out):
        raise T2IError(f"--out {out}: is a folder; give the report's file name")
    grid_path = os.path.splitext(out)[0] + "_grid.png"
    generator, hyp = load_generator(args.checkpoint_path, args.load_epoch, device, networks=NETWORKS)
    record = read_run_record(args.checkpoint_path)
    checkpoint_clip = record.get("clip") if record else None
    for folder in dict.fromkeys([os.path.dirname(os.path.abspath(path)) for path in (out, grid_path)]):
        remove_stale_temp_files(folder, lambda name: name in (os.path.basename(out), os.path.basename(grid_path)))
    measure = course_report if course else standard_report
    report = measure(args, generator, hyp, device, checkpoint_clip, grid_path, not args.quiet)
    report.update(checkpoint_path=args.checkpoint_path, load_epoch=args.load_epoch, test_data=args.test_data,
                  clip_model=args.clip_model, checkpoint_clip=checkpoint_clip,
                  inception_weights=args.inception_weights, device=str(device), grid=grid_path)
    if not course:
        report.update(batch_size=args.batch_size or STANDARD_BATCH_SIZE)
    write_report(out, report)
    for caveat in report["caveats"]:
        print(f"note: {caveat}")
    if course:
        print(graders_lines(report))
    print(f"{summary_line(report)} -> {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        run(args)
    return 0


if __name__ == "__main__":
    main()
