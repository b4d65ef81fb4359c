"""The GPU path end to end, one line per step: run it on any machine with a CUDA GPU (Colab, a lent device).

    python .ci/gpu_check.py                 # every step; about 5 minutes on one GPU
    python .ci/gpu_check.py --skip_tests    # without the test suite at the end
    python .ci/gpu_check.py --skip_tests --benchmark   # and the training-loop benchmark (about 10 more minutes)

On synthetic data, with a random-weight ViT-B/32 (the real architecture; nothing is downloaded):
  1. every command of colab.ipynb's cells, in order, at reduced sizes (the settings cell's values are replaced:
     its Drive and /content paths moved into a temporary folder, the stand-in CLIP and Inception, a small model);
  2. training without and with AMP, and a resume of the AMP run;
  3. generation, evaluation and the submission check on the resumed run;
  4. the demo (`demo.py --quick --offline`);
  5. the whole test suite with CUDA visible (its CUDA-only tests run; the CPU ones pin the CPU);
  6. with --benchmark, on CUDA only: `benchmarks.train_loop` at the course's sizes (the README's GPU table).
Without a GPU the steps run on the CPU and the ones that need CUDA say SKIP with the reason. The last line sums
up; the exit status is 1 when a step failed.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this file runs as a script from .ci/: the package lives one folder up

NOTEBOOK = os.path.join(ROOT, "colab.ipynb")
# The notebook's settings at reduced sizes (every other setting keeps its value).
SMALL_SETTINGS = {"NUM_EPOCHS": 2, "BATCH_SIZE": 8, "REPORT_INTERVAL": 2, "SAVE_EVERY_STEPS": 2, "KEEP_LAST": 2,
                  "EVAL_SAMPLES": 16, "TRAIN_CAPTIONS": 2}
SMALL_MODEL = ["--g_in_chans", "128", "--d_in_chans", "16"]
# The README's GPU command: batch 24, Ng 1024, Nd 64, ViT-B/32, 200 timed iterations a run, 2 host threads.
BENCHMARK = ["-m", "benchmarks.train_loop", "--device", "cuda", "--stages", "1,3", "--variants", "ours,course",
             "--rounds", "2", "--iterations", "200", "--epoch_iterations", "100", "--count_ops"]


def small_settings(content_dir: str, clip_path: str, inception_path: str, course_inception_path: str) -> dict:
    """SMALL_SETTINGS, Colab's /content (and Drive in it) moved to `content_dir`, the stand-in CLIP and the two
    protocols' Inception files, and SMALL_MODEL: the values that run the notebook on any machine, offline."""
    return {**SMALL_SETTINGS, "CONTENT_DIR": content_dir, "DRIVE_DIR": f"{content_dir}/drive/MyDrive/t2i",
            "WORK_DIR": f"{content_dir}/t2i", "CLIP_MODEL": clip_path, "INCEPTION_WEIGHTS": inception_path,
            "COURSE_INCEPTION_WEIGHTS": course_inception_path, "EXTRA_TRAIN_FLAGS": shlex.join(SMALL_MODEL)}


def with_settings(source: str, values: dict) -> str:
    """A settings cell's source with its `NAME = value` lines set to `values`, as a user edits the form; a name
    that the cell does not set is an error (a setting renamed in the notebook)."""
    for name, value in values.items():
        source, found = re.subn(rf"^{name} = .*$", lambda _: f"{name} = {value!r}", source, flags=re.M)
        if found != 1:
            raise ValueError(f"colab.ipynb: the settings cell sets {name} {found} times, not once")
    return source


def notebook_settings(values: dict) -> dict:
    """The names the settings cell defines, run as Colab runs it with `values` in the form."""
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            exec(with_settings(cell.source, values), namespace)
    namespace.pop("__builtins__", None)
    return namespace


def notebook_commands() -> list[tuple[int, str]]:
    """(cell index, command) of every `!command` line of the code cells, continuations joined."""
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    commands = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            source = re.sub(r"\\\n\s*", " ", cell.source)
            commands += [(index, line.strip()[1:]) for line in source.splitlines() if line.strip().startswith("!")]
    return commands


def expand(command: str, namespace: dict) -> str:
    """IPython's `{expression}` expansion of a shell command."""
    return re.sub(r"\{([^{}]+)\}", lambda match: str(eval(match.group(1), {}, namespace)), command)


class Checker:
    def __init__(self, device: str):
        self.device = device
        self.results: list[str] = []

    def step(self, name: str, command: list[str] | str, timeout: float = 600, show: bool = False) -> bool:
        """Run one command; print one line: PASS or FAIL (with its last line of output), and the time; with
        `show`, then its whole standard output (a benchmark's figures)."""
        started = time.time()
        shell = isinstance(command, str)
        try:
            result = subprocess.run(command, shell=shell, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            ok, detail = result.returncode == 0, (result.stderr.strip() or result.stdout.strip()).splitlines()
        except subprocess.TimeoutExpired:
            ok, detail = False, [f"timed out after {timeout:.0f} s"]
        status = "PASS" if ok else "FAIL"
        line = f"[{status}] {name} ({time.time() - started:.1f} s)"
        if not ok:
            line += f": {detail[-1] if detail else 'no output'}"
        print(line, flush=True)
        if show and ok:
            print(result.stdout, flush=True)
        self.results.append(status)
        return ok

    def skip(self, name: str, reason: str) -> None:
        print(f"[SKIP] {name}: {reason}", flush=True)
        self.results.append("SKIP")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the GPU path end to end, one line per step.")
    parser.add_argument("--skip_tests", action="store_true", help="leave out the test suite at the end")
    parser.add_argument("--clip", choices=["vit-b-32", "tiny"], default="vit-b-32",
                        help="the random CLIP's architecture: ViT-B/32's, or a tiny one for a quick run on a CPU")
    parser.add_argument("--benchmark", action="store_true",
                        help="also run the training-loop benchmark, ours against the course (CUDA only; ~10 min)")
    args = parser.parse_args(argv)

    import torch

    from t2i import checkpoints, clip_utils
    from t2i.evaluation import course, metrics
    from t2i.synthetic import world

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA GPU: the steps run on the CPU"
    print(f"GPU check: torch {torch.__version__}, {name}", flush=True)
    checker = Checker(device)
    started = time.time()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        clip_path = clip_utils.make_random_clip(os.path.join(tmp, f"clip_{args.clip}.pt"), args.clip, 512)
        inception_path = metrics.make_random_inception(os.path.join(tmp, "inception_random.pth"))
        course_inception_path = course.make_random_course_inception(os.path.join(tmp, course.INCEPTION_FILE))

        # 1. The notebook's commands, in order.
        namespace = notebook_settings(small_settings(os.path.join(tmp, "content"), clip_path, inception_path,
                                                     course_inception_path))
        drive = namespace["DRIVE_DIR"]
        world.write_raw_dataset(drive, num_images=60, num_train=40, num_test=20, size=256, seed=0)
        for folder in (namespace["OUTPUT_DIR"], os.path.dirname(namespace["LOCAL_RAW_ZIP"])):
            os.makedirs(folder, exist_ok=True)
        for cell, command in notebook_commands():
            if command.split()[0] in ("git", "pip"):
                continue  # the repository and its packages are here already
            if "--load_epoch" in command or "--epoch" in command:
                epochs = checkpoints.complete_epochs(namespace["CKPT_DIR"], namespace["NUM_STAGE"])
                namespace["EPOCH"] = epochs[-1] if epochs else 0
            expanded = expand(command, namespace)
            words = shlex.split(expanded)
            if words[0] in ("python", "python3"):  # each command's device: CUDA when there is one
                words = [python, *words[1:]]
                checker.step(f"notebook cell {cell}: {' '.join(words[1:3])}", words)
            else:  # a shell line (copies between Drive and the local disk), run as the notebook runs it
                checker.step(f"notebook cell {cell}: {words[0]}", expanded)

        # 2. Training in fp32 and with AMP, and a resume.
        train_zip = namespace["LOCAL_TRAIN_ZIP"]
        base = [python, "main.py", "--train_data", train_zip, "--batch_size", "8", "--report_interval", "2",
                "--num_stage", "3", "--use_uncond_loss", "--use_contrastive_loss", "--clip_model", clip_path,
                "--device", device, *SMALL_MODEL]
        fp32_dir, amp_dir = os.path.join(tmp, "fp32"), os.path.join(tmp, "amp")
        checker.step("training, fp32 (--no-amp)", base + ["--num_epochs", "1", "--no-amp", "--checkpoint_path",
                                                          fp32_dir, "--result_path", fp32_dir + "_results"])
        amp = base + ["--amp", "--checkpoint_path", amp_dir, "--result_path", amp_dir + "_results"]
        if cuda:
            checker.step("training, fp16 autocast + gradient scaling (--amp)", amp + ["--num_epochs", "1"])
            checker.step("resume of the --amp run", amp + ["--num_epochs", "2", "--resume_checkpoint_path", amp_dir,
                                                           "--resume_epoch", "latest"])
        else:
            checker.skip("training with --amp, and its resume", "fp16 AMP needs a CUDA GPU (the tests reproduce "
                                                                "it on the CPU)")
            amp_dir = fp32_dir

        # 3. Generation, evaluation and the submission check on that run.
        epoch = checkpoints.complete_epochs(amp_dir, 3)[-1] if checkpoints.complete_epochs(amp_dir, 3) else 0
        checker.step("generation", [python, "generate_image.py", "--prompt", "The woman has blond hair.",
                                    "--load_epoch", str(epoch), "--checkpoint_path", amp_dir, "--clip_model",
                                    clip_path, "--device", device, "--out_dir", os.path.join(tmp, "generated")])
        checker.step("evaluation", [python, "evaluate.py", "--checkpoint_path", amp_dir, "--load_epoch", str(epoch),
                                    "--test_data", namespace["LOCAL_TEST_ZIP"], "--num_samples", "16", "--clip_model",
                                    clip_path, "--inception_weights", inception_path, "--device", device, "--quiet"])
        checker.step("evaluation, the graders' protocol (--protocol course)",
                     [python, "evaluate.py", "--protocol", "course", "--checkpoint_path", amp_dir, "--load_epoch",
                      str(epoch), "--test_data", namespace["LOCAL_TEST_ZIP"], "--num_samples", "8", "--clip_model",
                      clip_path, "--inception_weights", course_inception_path, "--device", device, "--quiet"])
        checker.step("submission check", [python, "check_submission.py", "--checkpoint_path", amp_dir, "--epoch",
                                          str(epoch), "--clip_model", clip_path, "--device", device, "--out_dir",
                                          os.path.join(tmp, "check"), "--num_images", "1"])

        # 4. The demo.
        checker.step("demo (--quick --offline)", [python, "demo.py", "--quick", "--offline", "--device", device,
                                                  "--out_dir", os.path.join(tmp, "demo")])
    # 5. The test suite, with CUDA visible.
    if args.skip_tests:
        checker.skip("test suite", "--skip_tests")
    else:
        checker.step("test suite (CUDA visible)" if cuda else "test suite", [python, "-m", "pytest", "-q", "-x",
                                                                            "tests", "-p", "no:cacheprovider"],
                     timeout=1800)
    # 6. The training loop against the course's, the README's GPU figures.
    if args.benchmark and cuda:
        checker.step("benchmark: training loop, ours against the course", [python, *BENCHMARK], timeout=1500,
                     show=True)
    elif args.benchmark:
        checker.skip("benchmark: training loop", "needs CUDA")
    counts = {status: checker.results.count(status) for status in ("PASS", "FAIL", "SKIP")}
    print(f"GPU check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{time.time() - started:.0f} s on {name}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
