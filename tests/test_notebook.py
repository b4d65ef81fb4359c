"""colab.ipynb: valid, and every `python ...` command in it parses against the real argument parsers."""
import argparse
import os
import re
import shlex

import nbformat
import pytest

import check_submission
import evaluate
import generate_image
import main as train_cli
import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab.ipynb")
# Names the notebook computes while it runs (not in its settings cell), with a value of the right type.
COMPUTED = {"EPOCH": 5}


def evaluate_parse(argv: list[str]) -> argparse.Namespace:
    if hasattr(evaluate, "build_parser"):
        return evaluate.build_parser().parse_args(argv)
    return evaluate.parse_args(argv)


PARSERS = {
    "main.py": lambda argv: train_cli.build_parser().parse_args(argv),
    "generate_image.py": lambda argv: generate_image.build_parser().parse_args(argv),
    "preproc_datasets_celeba_zip_train.py": lambda argv: preprocess.build_parser("train").parse_args(argv),
    "preproc_datasets_celeba_zip_test.py": lambda argv: preprocess.build_parser("test").parse_args(argv),
    "evaluate.py": evaluate_parse,
    "check_submission.py": lambda argv: check_submission.build_parser().parse_args(argv),
}


def load_notebook() -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def settings(notebook: nbformat.NotebookNode) -> dict:
    """The names the 'parameters' cells define (plain Python, run here as Colab would run them)."""
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
    namespace.pop("__builtins__", None)
    return namespace


def shell_commands(notebook: nbformat.NotebookNode) -> list[str]:
    """Every `!command` line of the code cells, with backslash continuations joined as IPython joins them."""
    commands = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source = re.sub(r"\\\n\s*", " ", cell.source)
        commands += [line.strip()[1:] for line in source.splitlines() if line.strip().startswith("!")]
    return commands


def expand(command: str, namespace: dict) -> str:
    """IPython's `{expression}` expansion of a shell command; an unknown name fails the test."""
    def value(match: re.Match) -> str:
        try:
            return str(eval(match.group(1), {}, namespace))
        except NameError as err:
            pytest.fail(f"colab.ipynb: `!{command}` uses {err}, which no settings cell defines")
    return re.sub(r"\{([^{}]+)\}", value, command)


def python_commands() -> list[tuple[str, list[str]]]:
    notebook = load_notebook()
    namespace = {**settings(notebook), **COMPUTED}
    found = []
    for command in shell_commands(notebook):
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
    assert args.resume_checkpoint_path == args.checkpoint_path == namespace["CKPT_DIR"]
    assert args.checkpoint_path.startswith(namespace["DRIVE_DIR"])
    assert args.save_every_steps > 0 and args.keep_last > 0


def test_preprocessing_has_a_ten_image_sample_and_the_course_flags():
    runs = [parse(script, argv) for script, argv in python_commands() if script.startswith("preproc_")]
    assert [args.max_images for args in runs].count(10) == 1
    for args in runs:
        assert (args.emb_dim, args.transform, args.width, args.height) == (512, "center-crop", 256, 256)


def test_generation_uses_the_grader_prompts():
    prompts = [parse(script, argv).prompt for script, argv in python_commands() if script == "generate_image.py"]
    assert prompts == list(check_submission.GRADER_PROMPTS)
