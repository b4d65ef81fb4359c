"""Check a checkpoint folder the way the graders will use it, before submitting it.

    python check_submission.py --checkpoint_path /content/drive/MyDrive/t2i/checkpoints --epoch 5 \
        --zip submission_epoch_5.zip

The graders rebuild the models from `hyperparameter.pt` with positional constructors, load the state dicts
strictly, and run their own `generate_image.py`. This script does the same, with the same calls, then
generates the two grader-style prompts and saves their images. Every problem that would cost points is printed
as one line naming the file; the exit status is 1 if there is any.

With --zip, once the check passes, the whole submission is packed: every item of the guideline's list for the
run's model (t2i/submission_files.py), the report and the model description built fresh from docs/ (`python -m
docs.make`; it needs `pip install -r requirements-docs.txt`), with the manifest (item -> files) printed and
written into the zip. It refuses, naming the item, when an essential item is missing or the report runs past 3
pages. The zip is then unpacked into an empty folder beside the course's six plain files (our re-creation,
t2i/course_harness) and run on its own files alone: their main.py must import the packed train.py, and their
generate_image.py must write result_64/128/256.png at those sizes from the packed weights; otherwise the zip is
removed again. With --test_data the report ends with the graders' FID and IS of the epoch
(`evaluate.py --protocol course`: what ranks the submission), printed as the graders print them.

A GALIP run (`--arch galip`, read from the run's run_options.json unless given) is graded with GALIP's module as
`network.py`. Without --zip the check runs the course's `generate_image.py` beside network_galip.py copied as
network.py, on the checkpoint folder, as well.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from PIL import Image

from docs import make as docs_make
from models import NETWORKS
from t2i import clip_utils, harness, plots, submission_files
from t2i.checkpoints import (HYPERPARAMETER_FILE, HYPERPARAMETER_KEYS, build_discriminator, build_generator,
                             clean_epoch_advice, describe_mismatch, discriminator_file, generator_file, network_of,
                             nonfinite_tensors, read_run_record, run_arch)
from t2i.devices import resolve_device
from t2i.errors import T2IError, one_line_errors
from t2i.evaluation.course import GRADERS_BATCH_SIZE, PUBLISHED_PROMPT, CourseEvaluator, graders_lines
from t2i.evaluation.evaluator import write_report
from t2i.files import atomic_write, human_size, make_folder, read_torch_file, remove_stale_temp_files
from t2i.generation import check_out_dir, encode_prompt, generate, save_results

GRADER_PROMPTS = (
    PUBLISHED_PROMPT,
    "The man is middle-aged and has black hair, a mustache and a goatee.",
)
# Constructor arguments read from hyperparameter.pt: they must be plain ints for the graders' calls to work.
INT_KEYS = ("clip_embedding_dim", "projection_dim", "noise_dim", "num_stage", "g_in_chans", "g_out_chans",
            "d_in_chans", "d_out_chans")
# The course's generate_image.py saves fake_images[-3], [-2] and [-1]: fewer stages raise an IndexError there.
GRADED_NUM_STAGE = 3
# Below this pixel standard deviation (images in [-1, 1]) a generated image is one flat colour.
FLAT_IMAGE_STD = 0.02


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)      # the graded files that exist, in packing order
    images: list[str] = field(default_factory=list)
    arch: str = "stackgan"                              # the model the run trained (--arch)
    network_py: str = ""                                # its models' module, the graded network.py
    figures: dict | None = None                         # the graders' FID and IS, with --test_data

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Check (and optionally pack) a submission as the graders load it.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="folder with hyperparameter.pt and the epoch files")
    parser.add_argument("--epoch", type=int, required=True, help="the epoch N to submit (epoch_N_Gen.pt)")
    parser.add_argument("--clip_model", default="ViT-B/32",
                        help="B/32, L/14, B/16, a full CLIP name, or a local CLIP file (see main.py's --clip_model)")
    parser.add_argument("--allow_clip_mismatch", action="store_true",
                        help="accept a --clip_model other than the CLIP the checkpoint was trained with")
    parser.add_argument("--out_dir", default="submission_check", help="where the prompts' images go")
    parser.add_argument("--seed", type=int, default=0, help="noise seed for the prompt images")
    parser.add_argument("--num_images", type=int, default=4, help="images per prompt (the grid shows them all)")
    parser.add_argument("--zip", default=None,
                        help="pack the whole submission (weights, code, report, ...) into this zip when the check "
                             "passes, then run the unpacked zip with the course's files")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--arch", default=None, choices=sorted(NETWORKS),
                        help="the model the run trained (default: its run_options.json's, else stackgan); galip "
                             "packs network_galip.py as network.py and runs the course's generate_image.py on it")
    parser.add_argument("--test_data", default=None,
                        help="preprocessed test zip: also measure the graders' FID and IS of the epoch on it "
                             "(evaluate.py --protocol course; minutes on a GPU)")
    parser.add_argument("--inception_weights", default=None,
                        help="with --test_data: a local copy of torchvision's inception_v3_google-0cc3c7bd.pth "
                             "(default: downloaded)")
    parser.add_argument("--eval_batch_size", type=int, default=GRADERS_BATCH_SIZE,
                        help="with --test_data: the graders' loader batch (it drops an incomplete last one); smaller "
                             "only for a small test zip")
    return parser


def load_dict(path: str, result: CheckResult, missing: str, kind: str) -> dict | None:
    """torch.load(path, weights_only=True) as the graders load it, or None with the problem recorded: the file is
    missing (`missing` says why that matters), unreadable (the cause and what to do) or not a dict."""
    if not os.path.isfile(path):
        result.problem(path, missing)
        return None
    result.files.append(path)
    try:
        loaded = read_torch_file(path, kind, "copy it again from the training run, or submit another epoch")
    except T2IError as err:
        result.problems.append(str(err))
        return None
    if not isinstance(loaded, dict):
        result.problem(path, f"holds a {type(loaded).__name__}, not a {kind}")
        return None
    return loaded


def read_hyperparameters(checkpoint_path: str, result: CheckResult) -> dict | None:
    """hyperparameter.pt as the graders read it, or None (with the problem recorded)."""
    path = os.path.join(checkpoint_path, HYPERPARAMETER_FILE)
    hyp = load_dict(path, result, "missing; the graders build the models from it", "dict")
    if hyp is None:
        return None
    missing = [key for key in HYPERPARAMETER_KEYS if key not in hyp]
    if missing:
        result.problem(path, f"lacks the keys {missing} (all 13 are required)")
        return None
    wrong = [key for key in INT_KEYS if type(hyp[key]) is not int]
    if wrong:
        result.problem(path, f"{wrong} must be ints, got {[type(hyp[key]).__name__ for key in wrong]}")
        return None
    if hyp["num_stage"] != GRADED_NUM_STAGE:
        result.problem(path, f"num_stage is {hyp['num_stage']}; the graders' generate_image.py saves "
                             f"fake_images[-3], [-2], [-1] and needs {GRADED_NUM_STAGE} stages (64, 128, 256 px)")
    return hyp


def load_strictly(model: nn.Module, path: str, what: str, result: CheckResult, num_stage: int | None = None) -> bool:
    """Load `path` into `model` as the graders do (weights_only=True, strict); record a problem if it fails."""
    state = load_dict(path, result, "missing", "state dict")
    if state is None:
        return False
    try:
        model.load_state_dict(state)
    except RuntimeError:
        result.problem(path, f"does not fit the {what} built from {HYPERPARAMETER_FILE}: "
                             f"{describe_mismatch(model, state)}")
        return False
    bad = nonfinite_tensors(state)
    if bad:
        advice = clean_epoch_advice([os.path.dirname(path)], num_stage, before=epoch_number(path)) \
            if num_stage is not None else "an earlier epoch may be clean"
        result.problem(path, f"{len(bad)} tensors hold NaN or Inf (e.g. {bad[0]}): the run had diverged; "
                             f"{advice}: submit that one")
        return False
    return True


def epoch_number(path: str) -> int | None:
    match = re.fullmatch(r"epoch_(\d+)_.*\.pt", os.path.basename(path))
    return int(match.group(1)) if match else None


def stray_discriminators(checkpoint_path: str, epoch: int, num_stage: int) -> list[str]:
    """epoch_N_Dis_i.pt files with i >= num_stage: left from a run with more stages."""
    pattern = re.compile(rf"epoch_{epoch}_Dis_(\d+)\.pt")
    return sorted(os.path.join(checkpoint_path, name) for name in os.listdir(checkpoint_path)
                  if (match := pattern.fullmatch(name)) and int(match.group(1)) >= num_stage)


def generate_prompts(generator: nn.Module, hyp: dict, args: argparse.Namespace, device: torch.device,
                     result: CheckResult) -> None:
    """Generate GRADER_PROMPTS like the graders' generate_image.py; save result_*.png per prompt and one grid."""
    try:
        clip_model = clip_utils.load_clip(args.clip_model, device)
    except T2IError as err:
        result.problems.append(f"cannot load CLIP to generate the prompts: {err}")
        return
    dim = clip_utils.clip_embedding_dim(clip_model)
    if dim != hyp["clip_embedding_dim"]:
        result.problem(os.path.join(args.checkpoint_path, HYPERPARAMETER_FILE),
                       f"clip_embedding_dim is {hyp['clip_embedding_dim']} but --clip_model {args.clip_model} "
                       f"gives {dim}-d embeddings; the graders encode prompts with ViT-B/32 (512)")
        return
    record = read_run_record(args.checkpoint_path)
    used = clip_utils.clip_identity_of(clip_model)
    mismatch = clip_utils.clip_mismatch(record and record.get("clip"), f"the checkpoint in {args.checkpoint_path}",
                                        used, f"--clip_model {used['name']}")
    if mismatch is not None and not args.allow_clip_mismatch:
        result.problems.append(f"{mismatch} (the graders encode their prompts with ViT-B/32)")
        return
    torch.manual_seed(args.seed)
    largest = []
    for index, prompt in enumerate(GRADER_PROMPTS):
        fake_images = generate(generator, encode_prompt(clip_model, prompt, device), hyp["noise_dim"],
                               args.num_images, device)
        if not all(torch.isfinite(images).all() for images in fake_images):
            result.problem(generator_file(args.checkpoint_path, args.epoch),
                           f"the generator outputs NaN or Inf for {prompt!r}")
            return
        spread = fake_images[-1].flatten(1).std(dim=1).max().item()
        if spread < FLAT_IMAGE_STD:
            result.warnings.append(f"{generator_file(args.checkpoint_path, args.epoch)}: the images for prompt "
                                   f"{index + 1} are flat (pixel std {spread:.3f}); the model has not learned yet")
        folder = os.path.join(args.out_dir, f"prompt_{index + 1}")
        save_results(fake_images, folder, prompt)
        result.images.append(f"{folder}/result_{{64,128,256}}.png: {prompt}")
        largest.append(fake_images[-1])
    grid_path = os.path.join(args.out_dir, "prompts.png")
    images = torch.cat(largest)
    captions = [prompt for prompt in GRADER_PROMPTS for _ in range(args.num_images)]
    plots.save_image_grid(images, grid_path, ncol=args.num_images, captions=captions)
    result.images.append(f"{grid_path}: both prompts, {args.num_images} noises each, captioned")


def check(args: argparse.Namespace) -> CheckResult:
    """Every check, in the order the graders would hit the problems."""
    result = CheckResult()
    device = resolve_device(args.device)
    if not os.path.isdir(args.checkpoint_path):
        result.problem(args.checkpoint_path, "no such folder (--checkpoint_path)")
        return result
    hyp = read_hyperparameters(args.checkpoint_path, result)
    if hyp is None:
        # Still name the epoch files that are missing, so one run lists everything to fix.
        gen_path = generator_file(args.checkpoint_path, args.epoch)
        if not os.path.isfile(gen_path):
            result.problem(gen_path, "missing")
        return result
    arch = result.arch = args.arch or run_arch(args.checkpoint_path)
    network = NETWORKS[args.arch] if args.arch else network_of(args.checkpoint_path, NETWORKS)
    result.network_py = network.__file__
    # Built exactly as the graders build them: positional arguments from hyperparameter.pt.
    generator = build_generator(hyp, device, network)
    discriminators = [build_discriminator(hyp, stage, device, network) for stage in range(hyp["num_stage"])]
    print(f"Checking epoch {args.epoch} in {args.checkpoint_path} ({arch}, {hyp['num_stage']} stages, "
          f"Ng {hyp['g_in_chans']}, Nd {hyp['d_in_chans']}, CLIP {hyp['clip_embedding_dim']}-d)")
    num_stage = hyp["num_stage"]
    generator_ok = load_strictly(generator, generator_file(args.checkpoint_path, args.epoch), "Generator", result,
                                 num_stage)
    for stage, discriminator in enumerate(discriminators):
        load_strictly(discriminator, discriminator_file(args.checkpoint_path, args.epoch, stage),
                      f"Discriminator of stage {stage}", result, num_stage)
    for path in stray_discriminators(args.checkpoint_path, args.epoch, hyp["num_stage"]):
        result.warnings.append(f"{path}: not graded (num_stage is {hyp['num_stage']}); is {HYPERPARAMETER_FILE} "
                               f"from the same run as the weights?")

    counts = {generator_file(args.checkpoint_path, args.epoch): parameter_count(generator)}
    counts.update({discriminator_file(args.checkpoint_path, args.epoch, stage): parameter_count(discriminator)
                   for stage, discriminator in enumerate(discriminators)})
    for path in result.files:
        parameters = f"{counts[path]:>13,} parameters" if path in counts else ""
        print(f"  {os.path.basename(path):<24} {human_size(os.path.getsize(path)):>10}  {parameters}")
    total = sum(os.path.getsize(path) for path in result.files)
    print(f"  {'total':<24} {human_size(total):>10}")

    if generator_ok:
        generator.to(device).eval()  # the graders' load_checkpoint puts the models in eval mode
        generate_prompts(generator, hyp, args, device, result)
    # With --zip the packed submission goes through the same path after packing (check_unpacked).
    if arch != "stackgan" and generator_ok and not result.problems and not args.zip:
        with tempfile.TemporaryDirectory() as workdir:
            harness.prepare_workdir(workdir, result.network_py, os.path.join(harness.REPO_ROOT, "train.py"))
            course_generate_image(workdir, os.path.abspath(args.checkpoint_path), harness.REPO_ROOT, args, result,
                                  result.network_py, f"{os.path.basename(result.network_py)} as network.py")
    if args.test_data is not None and generator_ok and not result.problems:
        result.figures = graders_figures(generator, hyp, args, device)
    return result


def graders_figures(generator: nn.Module, hyp: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """The graders' FID and IS of the epoch on --test_data, their published prompt; the report and a picture of
    the first Inception inputs go to --out_dir."""
    clip_model = clip_utils.load_clip_checked(args.clip_model, device, hyp["clip_embedding_dim"],
                                              f"clip_embedding_dim of {HYPERPARAMETER_FILE}")
    evaluator = CourseEvaluator(args.test_data, encode_prompt(clip_model, PUBLISHED_PROMPT, device),
                                prompt=PUBLISHED_PROMPT, device=device, inception_weights=args.inception_weights,
                                batch_size=args.eval_batch_size)
    figures = evaluator(generator, os.path.join(args.out_dir, "graders_fid_is_grid.png"))
    write_report(os.path.join(args.out_dir, "graders_fid_is.json"), figures)
    return figures


def course_generate_image(workdir: str, checkpoint_path: str, code_root: str, args: argparse.Namespace,
                          result: CheckResult, subject: str, described: str) -> None:
    """The graders' plain generate_image.py (our re-creation, t2i/course_harness), already in `workdir` beside a
    network.py, on `checkpoint_path`, with `code_root` on PYTHONPATH. Its three PNGs go to
    <out_dir>/course_generate_image/; a failure or a missing or mis-sized image is a problem of `subject`."""
    folder = os.path.join(args.out_dir, "course_generate_image")
    standin = args.clip_model if os.path.isfile(args.clip_model) else None  # else clip.load("ViT-B/32")
    argv = ["--prompt", GRADER_PROMPTS[0], "--load_epoch", str(args.epoch), "--checkpoint_path", checkpoint_path]
    done = harness.run_course_script(workdir, "generate_image.py", argv, clip_standin=standin, code_root=code_root)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        result.problem(subject, f"the course's generate_image.py fails with {described}: {last}")
        return
    os.makedirs(folder, exist_ok=True)
    for size in (64, 128, 256):
        name = f"result_{size}.png"
        if not os.path.isfile(os.path.join(workdir, name)):
            result.problem(subject, f"the course's generate_image.py wrote no {name} with {described}")
            return
        with Image.open(os.path.join(workdir, name)) as image:
            if image.size != (size, size):
                result.problem(subject, f"the course's generate_image.py wrote {name} at {image.size} with {described}")
                return
            image.save(os.path.join(folder, name))
    result.images.append(f"{folder}/result_{{64,128,256}}.png: the course's generate_image.py with {described}: "
                         f"{GRADER_PROMPTS[0]}")


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def build_documents(arch: str, result: CheckResult) -> tuple[str | None, str | None]:
    """The report, and the description of a model other than the course's, built fresh from docs/: their
    paths (None where the build failed, with the problem recorded; a report past its page limit is one)."""
    paths: dict[str, str | None] = {}
    for label, name in (("(4) report", "report"), (f"(8) own model: {arch}", arch)):
        if name not in docs_make.DOCUMENTS:
            paths[name] = None
            continue
        try:
            paths[name], pages = docs_make.build(name)
        except T2IError as err:
            result.problems.append(f"{label}: {err}")
            paths[name] = None
            continue
        limit = docs_make.DOCUMENTS[name].max_pages
        if limit is not None and pages > limit:
            result.problems.append(f"{label}: {paths[name]} has {pages} pages; the guideline allows at most {limit}: "
                                   f"shorten docs/{docs_make.DOCUMENTS[name].source}")
    return paths["report"], paths.get(arch)


def pack(listed: list[submission_files.Item], zip_path: str) -> int:
    """Every item's files in a zip under their names, with the manifest as MANIFEST.txt (written atomically, so
    a failed pack leaves nothing); returns the number of files packed."""
    folder = os.path.dirname(os.path.abspath(zip_path))
    make_folder(folder, "--zip")
    remove_stale_temp_files(folder, lambda name: name == os.path.basename(zip_path))
    names = submission_files.zip_names(listed)

    def write(f) -> None:
        # The .pt files are zip archives already: storing them costs no space and saves the compression time.
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
            for path, name in names:
                archive.write(path, arcname=name)
            archive.writestr(submission_files.MANIFEST_NAME, submission_files.manifest(listed))

    atomic_write(zip_path, write)
    return len(names)


def check_unpacked(zip_path: str, args: argparse.Namespace, result: CheckResult) -> None:
    """The zip as the graders use it: unpacked into an empty folder, the course's six plain files put beside
    (replacing ours), and run on its own files alone (nothing of this repository on the path): their main.py
    imports the packed train.py, and with it everything train.py imports; their generate_image.py writes the
    three sizes from the packed weights."""
    with tempfile.TemporaryDirectory() as tmp:
        packed = os.path.join(tmp, "unpacked")
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(packed)
            names = archive.namelist()
        workdir = harness.prepare_workdir(os.path.join(tmp, "graders"), os.path.join(packed, "network.py"),
                                          os.path.join(packed, "train.py"))
        for name in names:
            if name not in (*harness.COURSE_FILES, "network.py", "train.py"):
                os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
                shutil.copyfile(os.path.join(packed, name), os.path.join(workdir, name))
        done = harness.run_course_script(workdir, "main.py", ["--help"], code_root=workdir)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            result.problem(zip_path, f"unpacked beside the course's files, their main.py cannot import the packed "
                                     f"train.py: {last}")
            return
        course_generate_image(workdir, workdir, workdir, args, result, zip_path,
                              "the unpacked zip beside the course's files")


def pack_submission(args: argparse.Namespace, result: CheckResult) -> None:
    """Build the documents, pack every item into --zip and run the unpacked zip; a problem is recorded in
    `result`, and then no zip is left behind."""
    report, description = build_documents(result.arch, result)
    if result.problems:
        return
    listed = submission_files.items(result.arch, result.network_py, result.files, report, description)
    result.problems += submission_files.check_items(listed)
    if result.problems:
        return
    count = pack(listed, args.zip)
    print(f"Packed {count} files into {args.zip} ({human_size(os.path.getsize(args.zip))}):")
    print(submission_files.manifest(listed), end="")
    check_unpacked(args.zip, args, result)
    if result.problems:
        os.remove(args.zip)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        if args.num_images < 1:
            raise T2IError(f"--num_images {args.num_images}: must be at least 1")
        if args.eval_batch_size < 1:
            raise T2IError(f"--eval_batch_size {args.eval_batch_size}: must be at least 1")
        check_out_dir(args.out_dir)
        if args.test_data is not None and not os.path.isfile(args.test_data):
            raise T2IError(f"--test_data {args.test_data}: no such test zip; preprocess the test split with "
                           f"preproc_datasets_celeba_zip_test.py, or leave the flag out")
        if args.zip is not None and os.path.isdir(args.zip):
            raise T2IError(f"--zip {args.zip}: is a folder; give the zip's file name")
        result = check(args)
        if args.zip and not result.problems:
            pack_submission(args, result)
        for warning in result.warnings:
            print(f"warning: {warning}")
        if result.images:
            print("Prompt images (look at them: 10 points a prompt whose image matches its text):")
            for path in result.images:
                print(f"  {path}")
        if result.figures is not None:
            print(f"The graders' FID and IS of epoch {args.epoch} ({result.figures['num_real']} test images, one "
                  f"prompt; docs/evaluation.md), report in {args.out_dir}/graders_fid_is.json:")
            print(graders_lines(result.figures))
            for caveat in result.figures["caveats"]:
                print(f"  note: {caveat}")
        if result.problems:
            for problem in result.problems:
                print(f"PROBLEM: {problem}", file=sys.stderr)
            print(f"FAILED: {len(result.problems)} problem(s) would cost points; fix them before submitting"
                  + (f" (nothing packed into {args.zip})" if args.zip else ""), file=sys.stderr)
            return 1
    print(f"OK: epoch {args.epoch} in {args.checkpoint_path} loads exactly as the graders load it"
          + (f"; {args.zip} runs with the course's files" if args.zip else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
