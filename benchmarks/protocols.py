"""Do the standard and the graders' FID and IS rank models and epochs the same way? Both, on the synthetic world.

1. Data: `benchmarks.conditional`'s (its training images and its small CLIP, trained on them for
   --train_clip_steps), and a test split of new images of the first --test_combos attribute combinations seen in
   training (--test_per_combo each: the training distribution, as CelebA's test split is), preprocessed at 64 px
   by the test command.
2. Models: the guideline recipe, the recommended `--recipe fast` and GALIP, at `benchmarks.conditional`'s CPU
   widths (1 stage, 64 px), each trained for --num_epochs in one run that keeps every epoch.
3. At each epoch of --epochs, both protocols on the same test zip: the standard one (`t2i.evaluation.evaluator.
   Evaluator`: torch-fidelity's FID and IS of one image per test image from its own caption) and the graders'
   (`t2i.evaluation.course.CourseEvaluator`: every fake from --prompt, the course loader's real images, loader
   batches of --course_batch).
Reported: every figure by model and epoch; the epoch each protocol would submit (its lowest FID) per model; the
model each ranks first; Kendall's tau between the two protocols' FID orderings of all (model, epoch) points.

Inception weights are downloaded when --fidelity_weights / --course_weights are not given (the real protocols);
offline, --standins writes the random stand-ins the tests use: the figures then compare the two pipelines in a
random feature space, not in ImageNet's (say so wherever they are quoted).

    python -m benchmarks.protocols --threads 2 --standins --out protocols.json
    python -m benchmarks.protocols --train_clip_steps 0 --num_epochs 5 --epochs 1,4 --test_combos 60 \
        --course_batch 30 --standins      # what fitted on the shared 2-core CPU (docs/evaluation.md)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from scipy.stats import kendalltau

import preproc_datasets_celeba_zip_test
from benchmarks import conditional
from models import NETWORKS
from t2i import checkpoints, clip_utils
from t2i.evaluation import course as course_metrics
from t2i.evaluation import evaluator as evaluation
from t2i.evaluation import metrics
from t2i.generation import encode_prompt
from t2i.synthetic import held_out

IMAGE_SIZE = conditional.IMAGE_SIZE
MODELS = {  # name: (benchmarks.conditional --arch, --train_args)
    "guideline": ("stackgan", ""),
    "fast": ("stackgan", "--recipe fast"),
    "galip": ("galip", ""),
}


def write_test_zip(work_dir: str, combos: list[dict], per_combo: int, clip_path: str, seed: int) -> str:
    """New images of `combos` (`per_combo` each), preprocessed at 64 px into the test zip."""
    raw = held_out.write_raw(os.path.join(work_dir, "test_raw"), [], combos, 0, per_combo, seed + 100)
    test_zip = os.path.join(work_dir, "test.zip")
    preproc_datasets_celeba_zip_test.convert_dataset.main(
        ["--source", raw["source"], "--dest", test_zip, "--clip_model", clip_path, "--emb_dim", "512", "--width",
         str(IMAGE_SIZE), "--height", str(IMAGE_SIZE), "--device", "cpu", "--num_workers", "2", "--overwrite"],
        standalone_mode=False)
    return test_zip


def rank_agreement(points: list[dict]) -> dict:
    """What each protocol would pick among (model, epoch) points, and how alike the two FID orderings are."""
    def best(rows: list[dict], key: str) -> dict:
        return min(rows, key=lambda row: row[key])

    models = sorted({point["model"] for point in points})
    epoch_choice = {model: {key: best([p for p in points if p["model"] == model], key)["epoch"]
                            for key in ("fid", "course_fid")} for model in models}
    best_model = {key: best(points, key)["model"] for key in ("fid", "course_fid")}
    tau = kendalltau([p["fid"] for p in points], [p["course_fid"] for p in points]).statistic
    is_tau = kendalltau([p["is"] for p in points], [p["course_is"] for p in points]).statistic
    return {"epoch_choice": epoch_choice, "best_model": best_model, "fid_kendall_tau": float(tau),
            "is_kendall_tau": float(is_tau)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--num_epochs", type=int, default=6, help="epochs each model trains")
    parser.add_argument("--epochs", default="1,3,5", help="the epochs measured (counted from 0)")
    parser.add_argument("--test_combos", type=int, default=120, help="seen combinations in the test split (of 120)")
    parser.add_argument("--test_per_combo", type=int, default=1, help="test images per combination")
    parser.add_argument("--train_clip_steps", type=int, default=1000,
                        help="benchmarks.conditional's CLIP training (0: its random-weight CLIP)")
    parser.add_argument("--course_batch", type=int, default=40,
                        help="the graders' loader batch (theirs: 128 of 6000 test images); whole batches only")
    parser.add_argument("--prompt", default=course_metrics.PUBLISHED_PROMPT, help="the graders' one prompt")
    parser.add_argument("--fidelity_weights", default=None, help="torch-fidelity's Inception weights file")
    parser.add_argument("--course_weights", default=None, help="torchvision's inception_v3_google-0cc3c7bd.pth")
    parser.add_argument("--standins", action="store_true", help="write and use random-weight Inceptions (offline)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (training uses the course's seed 0)")
    parser.add_argument("--work_dir", default=None, help="data, checkpoints and reports (default: a temp folder)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="protocols_bench_")
    epochs = [int(epoch) for epoch in args.epochs.split(",")]
    fidelity_weights, course_weights = args.fidelity_weights, args.course_weights
    if args.standins:
        fidelity_weights = metrics.make_random_inception(os.path.join(work_dir, "fidelity_random.pth"))
        course_weights = course_metrics.make_random_course_inception(os.path.join(work_dir, "torchvision_random.pth"))
    started = time.time()
    bench_args = conditional.build_parser().parse_args(["--seed", str(args.seed), "--data_dir",
                                                        os.path.join(work_dir, "data"), "--train_clip_steps",
                                                        str(args.train_clip_steps)])
    data = conditional.load_or_build_data(bench_args, work_dir)
    test_zip = write_test_zip(work_dir, data["train_combos"][:args.test_combos], args.test_per_combo,
                              data["clip_path"], args.seed)
    device = torch.device("cpu")
    clip_model = clip_utils.load_clip(data["clip_path"], device)
    standard = evaluation.Evaluator(evaluation.load_test_dataset(test_zip, 512, progress=False), clip_model=clip_model,
                                    inception_weights=fidelity_weights, progress=False)
    course = course_metrics.CourseEvaluator(test_zip, encode_prompt(clip_model, args.prompt, device),
                                            prompt=args.prompt, device=device, inception_weights=course_weights,
                                            batch_size=args.course_batch, progress=False)
    print(f"data and test zip ({standard.num_samples} test images; the graders' protocol scores {course.num_real}) "
          f"in {time.time() - started:.0f} s", flush=True)
    points, seconds = [], {}
    for model in args.models.split(","):
        arch, train_args = MODELS[model]
        model_started = time.time()
        fixed = conditional.fixed_train_args(argparse.Namespace(base_args=conditional.BASE_TRAIN_ARGS, arch=arch))
        trained = conditional.train(data["train_zip"], data["clip_path"], os.path.join(work_dir, model), fixed,
                                    train_args, args.num_epochs, None)
        seconds[model] = {"train": trained["seconds"]}
        for epoch in epochs:
            generator, _ = checkpoints.load_generator(trained["checkpoint_path"], epoch, device, networks=NETWORKS)
            figures, graders = standard(generator), course(generator)
            points.append({"model": model, "epoch": epoch, "fid": figures["fid"], "is": figures["is_mean"],
                           "clip_score": figures["clip_score"], "course_fid": graders["course_fid"],
                           "course_is": graders["course_is"]})
            print(f"{model:>9} epoch {epoch}: standard FID {figures['fid']:8.2f} IS {figures['is_mean']:6.3f} CLIP "
                  f"{figures['clip_score']:6.2f} | graders' FID {graders['course_fid']:.6f} IS "
                  f"{graders['course_is']:.6f}", flush=True)
        seconds[model]["total"] = time.time() - model_started
    report = {"points": points, **rank_agreement(points), "num_epochs": args.num_epochs,
              "test_images": standard.num_samples, "course_images": course.num_real, "prompt": args.prompt,
              "standins": args.standins, "seconds": seconds, "work_dir": work_dir}
    print(f"epoch each would submit (lowest FID): {report['epoch_choice']}; best model: standard "
          f"{report['best_model']['fid']}, graders' {report['best_model']['course_fid']}; Kendall's tau of the "
          f"FID orderings {report['fid_kendall_tau']:.2f}, of the IS orderings {report['is_kendall_tau']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
