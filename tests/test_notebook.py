"""colab.ipynb: valid, and every `python ...` command in it parses against the real argument parsers."""
import argparse
import importlib.util
import os
import shlex

import nbformat
import pytest

import check_submission
import evaluate
import generate_image
import main as train_cli
import preproc_datasets_celeba_zip_test
import preproc_datasets_celeba_zip_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab.ipynb")
# Names the notebook computes while it runs (not in its settings cell), with a value of the right type.
COMPUTED = {"EPOCH": 5}


PARSERS = {
    "main.py": lambda argv: train_cli.build_parser().parse_args(argv),
    "generate_image.py": lambda argv: generate_image.build_parser().parse_args(argv),
    "preproc_datasets_celeba_zip_train.py": lambda argv: argparse.Namespace(
        **preproc_datasets_celeba_zip_train.convert_dataset.make_context("train", argv).params),
    "preproc_datasets_celeba_zip_test.py": lambda argv: argparse.Namespace(
        **preproc_datasets_celeba_zip_test.convert_dataset.make_context("test", argv).params),
    "evaluate.py": lambda argv: evaluate.build_parser().parse_args(argv),
    "check_submission.py": lambda argv: check_submission.build_parser().parse_args(argv),
}


def load_notebook() -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def load_gpu_check():
    """.ci/gpu_check.py, which reads the notebook's settings and commands as the notebook runs them."""
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, ".ci", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_CHECK = load_gpu_check()


def settings(notebook: nbformat.NotebookNode) -> dict:
    """The names the 'parameters' cells define (plain Python, run here as Colab would run them)."""
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
    namespace.pop("__builtins__", None)
    return namespace


def expand(command: str, namespace: dict) -> str:
    """IPython's `{expression}` expansion; an unknown name fails the test."""
    try:
        return GPU_CHECK.expand(command, namespace)
    except NameError as err:
        pytest.fail(f"colab.ipynb: `!{command}` uses {err}, which no settings cell defines")


def python_commands() -> list[tuple[str, list[str]]]:
    notebook = load_notebook()
    namespace = {**settings(notebook), **COMPUTED}
    found = []
    for _, command in GPU_CHECK.notebook_commands():
        if command.split()[0] in ("python", "python3"):
            words = shlex.split(expand(command, namespace))
            found.append((words[1], words[2:]))
    return found


def parse(script: str, argv: list[str]) -> argparse.Namespace:
    assert os.path.isfile(os.path.join(ROOT, script)), f"colab.ipynb runs {script}, which does not exist"
    assert script in PARSERS, f"colab.ipynb runs {script}: add its parser to this test"
    try:
        return PARSERS[script](argv)
    except SystemExit:
        pytest.fail(f"colab.ipynb: `python {script} {shlex.join(argv)}` does not parse (see the usage above)")


def test_notebook_is_valid_and_has_parameter_cells():
    notebook = load_notebook()
    names = settings(notebook)
    assert names["DRIVE_DIR"].startswith("/content/drive/")
    assert all(cell.source.strip() for cell in notebook.cells)


def test_every_path_is_a_setting_and_tensorboard_opens_before_training():
    """Paths live in the settings cell alone (a test or another machine moves them all there), and the TensorBoard
    cell comes before the training cell, which blocks every later cell while it runs."""
    code = [cell for cell in load_notebook().cells if cell.cell_type == "code"]
    for cell in code:
        if "parameters" not in cell.metadata.get("tags", []):
            assert "/content" not in cell.source, f"a literal /content path outside the settings: {cell.source[:80]}"
    (tensorboard,) = [index for index, cell in enumerate(code) if "%tensorboard" in cell.source]
    (training,) = [index for index, cell in enumerate(code) if "!python main.py" in cell.source]
    assert tensorboard < training
    assert '%tensorboard --logdir "{CKPT_DIR}"' in code[tensorboard].source


def test_every_python_command_parses():
    commands = python_commands()
    scripts = {script for script, _ in commands}
    assert scripts == set(PARSERS), f"the notebook should run every step; it runs {sorted(scripts)}"
    for script, argv in commands:
        parse(script, argv)


def test_training_uses_the_course_values_and_resumes_from_drive():
    namespace = settings(load_notebook())
    (argv,) = [argv for script, argv in python_commands() if script == "main.py"]
    args = parse("main.py", argv)
    assert (args.batch_size, args.learning_rate, args.report_interval) == (24, 2e-4, 50)
    assert (args.noise_dim, args.projection_dim, args.clip_embedding_dim, args.num_stage) == (100, 128, 512, 3)
    assert args.use_uncond_loss and args.use_contrastive_loss
    assert args.resume_epoch == "latest"
    assert args.resume_checkpoint_path == str(args.checkpoint_path) == namespace["CKPT_DIR"]  # a Path, as the course
    assert str(args.checkpoint_path).startswith(namespace["DRIVE_DIR"])
    assert args.save_every_steps > 0 and args.keep_last > 0
    assert args.arch == namespace["ARCH"] == "stackgan"  # the course's model unless the team picks GALIP


def test_preprocessing_has_a_ten_image_sample_and_the_course_flags():
    runs = [parse(script, argv) for script, argv in python_commands() if script.startswith("preproc_")]
    assert [args.max_images for args in runs].count(10) == 1
    for args in runs:
        assert (args.emb_dim, args.transform, args.width, args.height) == (512, "center-crop", 256, 256)


def test_generation_uses_the_grader_prompts():
    prompts = [parse(script, argv).prompt for script, argv in python_commands() if script == "generate_image.py"]
    assert prompts == list(check_submission.GRADER_PROMPTS)


def test_the_gpu_check_runs_every_notebook_command_at_reduced_sizes(tmp_path):
    small = GPU_CHECK.notebook_settings(GPU_CHECK.small_settings(str(tmp_path), "clip.pt", "inception.pt",
                                                                 "course_inception.pth"))
    paths = ("DRIVE_DIR", "DRIVE_MOUNT", "WORK_DIR", "LOCAL_RAW_ZIP", "LOCAL_TRAIN_ZIP", "SAMPLE_PNG", "OUTPUT_DIR")
    assert all(small[name].startswith(str(tmp_path)) for name in paths)
    assert small["DRIVE_DIR"].startswith(small["DRIVE_MOUNT"] + "/")
    assert small["NUM_EPOCHS"] == 2 and small["EVAL_SAMPLES"] < 100
    assert small["INCEPTION_FLAG"] == '--inception_weights "inception.pt"'
    assert small["COURSE_INCEPTION_FLAG"] == '--inception_weights "course_inception.pth"'
    with pytest.raises(ValueError, match="sets NO_SUCH_SETTING 0 times"):
        GPU_CHECK.notebook_settings({"NO_SUCH_SETTING": 1})
    scripts = {shlex.split(command)[1] for _, command in GPU_CHECK.notebook_commands()
               if command.startswith("python")}
    assert scripts == set(PARSERS)
