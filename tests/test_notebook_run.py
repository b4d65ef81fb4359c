"""Issue 31: colab.ipynb executed top to bottom in a real Jupyter kernel on the CPU, then again as after a Colab
reconnect, every code cell as it is.

What stands in for Colab: `google.colab` is a small package on the kernel's PYTHONPATH whose `drive.mount(path)`
makes `path/MyDrive` a temporary "Drive" holding the raw dataset in the course's layout; the repository the
notebook clones is the checkout the test runs from (its files as git sees them, committed into a temporary
repository); the settings cell gets reduced sizes, the tests' stand-in CLIP and Inception files and a small model
through its own settings, as a user edits the form; pip may not reach an index (PIP_NO_INDEX), so the install cell
passes only because everything it asks for is installed. A shell command (`!...`) that fails fails its cell: in
the test a setup cell makes IPython raise where Colab only prints.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tensorboard import manager as tensorboard_manager
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from test_notebook import GPU_CHECK, NOTEBOOK, ROOT

from t2i import checkpoints
from t2i.synthetic import world
from t2i.training.log import best_logged_epoch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DRIVE_STUB = '''"""google.colab.drive for tests/test_notebook_run.py: mount(path) makes path/MyDrive the folder
$T2I_TEST_DRIVE."""
import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    my_drive = os.path.join(mountpoint, "MyDrive")
    if os.path.islink(my_drive):
        print(f"Drive already mounted at {mountpoint}")
        return
    os.makedirs(mountpoint, exist_ok=True)
    os.symlink(os.environ["T2I_TEST_DRIVE"], my_drive)
    print(f"Mounted at {mountpoint}")
'''
# The first cell of the executed copy: a failed shell command raises, so that its cell fails.
CHECKED_SHELL = '''_unchecked_system = get_ipython().system


def _checked_system(command):
    _unchecked_system(command)
    status = get_ipython().user_ns["_exit_code"]
    if status != 0:
        raise RuntimeError(f"!{command} exited with status {status}")


get_ipython().system = _checked_system'''
# On top of gpu_check's reduced sizes: a smaller batch and model for a CPU (20 training images: 5 steps an epoch).
SMALL = {"BATCH_SIZE": 4, "EVAL_SAMPLES": 10, "TRAIN_CAPTIONS": 2,
         "EXTRA_TRAIN_FLAGS": "--g_in_chans 64 --d_in_chans 8"}


def write_google_colab_stub(folder: str) -> None:
    package = os.path.join(folder, "google", "colab")  # `google` stays a namespace package (protobuf lives there)
    os.makedirs(package)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write('"""A stand-in for Colab\'s google.colab (tests/test_notebook_run.py)."""\n')
    with open(os.path.join(package, "drive.py"), "w") as f:
        f.write(DRIVE_STUB)


def snapshot_repository(target: str) -> None:
    """The checkout's files as git sees them (tracked, and untracked unless ignored), committed on branch `main` of a
    new repository at `target`: the code as it is now, whether or not it is committed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in listed:
        if name and os.path.isfile(os.path.join(ROOT, name)):  # a file deleted but not yet committed is left out
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(target, name))
    git = ["git", "-C", target, "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "the checkout under test"]):
        subprocess.run(git + command, check=True, capture_output=True)


def executable_notebook(settings: dict) -> nbformat.NotebookNode:
    """colab.ipynb with `settings` in its form, and CHECKED_SHELL before its first cell."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            cell.source = GPU_CHECK.with_settings(cell.source, settings)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(CHECKED_SHELL))
    return notebook


def cell_output(cell: nbformat.NotebookNode) -> str:
    """What a cell printed (its streams, plain-text results and error), as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
        elif "text/plain" in output.get("data", {}):
            parts.append(output.data["text/plain"])
    return "".join(parts)


def run_notebook(settings: dict, env: dict, cwd: str) -> dict:
    """Execute the notebook in a new kernel; {first words of a cell's source: the executed cell}."""
    notebook = executable_notebook(settings)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}})
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        failed = [cell for cell in notebook.cells if any(out.output_type == "error" for out in cell.get("outputs", []))]
        printed = cell_output(failed[0])[-4000:] if failed else ""
        pytest.fail(f"colab.ipynb: a cell failed:\n{err}\n--- what it printed ---\n{printed}")
    cells = [cell for cell in notebook.cells[1:] if cell.cell_type == "code"]
    return {cell.source.splitlines()[0]: cell for cell in cells}


def stop_tensorboard(logdir: str) -> None:
    """End the TensorBoard that the notebook's cell started on `logdir`, if it outlived the kernel (on Linux it
    goes with the kernel's process group)."""
    for info in tensorboard_manager.get_all():
        if os.path.realpath(info.logdir) == os.path.realpath(logdir) and _alive(info.pid):
            os.kill(info.pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(info.pid):
                    break
                time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def images_shown(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cell_starting(cells: dict, words: str) -> nbformat.NotebookNode:
    (cell,) = [cell for first, cell in cells.items() if first.startswith(words)]
    return cell


def promised_files(names: dict, epoch: int) -> list[str]:
    """The files the cells promise, in a session that submits epoch `epoch`."""
    ckpt, results, outputs = names["CKPT_DIR"], names["RESULT_DIR"], names["OUTPUT_DIR"]
    return [os.path.join(names["WORK_DIR"], ".git"), names["LOCAL_RAW_ZIP"], names["SAMPLE_ZIP"], names["SAMPLE_PNG"],
            names["TRAIN_ZIP"], names["TEST_ZIP"], names["LOCAL_TRAIN_ZIP"], names["LOCAL_TEST_ZIP"],
            checkpoints.generator_file(ckpt, epoch), checkpoints.state_file(ckpt, epoch),
            os.path.join(ckpt, checkpoints.LOSS_LOG_FILE), os.path.join(ckpt, checkpoints.TENSORBOARD_FOLDER),
            os.path.join(results, f"epoch_{epoch}.png"), os.path.join(results, "loss_curve.png"),
            *[os.path.join(outputs, who, f"result_{size}.png") for who in ("woman", "man")
              for size in (64, 128, 256, "grid")],
            os.path.join(results, f"eval_epoch_{epoch}.json"), os.path.join(results, f"eval_epoch_{epoch}_grid.png"),
            os.path.join(results, f"course_eval_epoch_{epoch}.json"),
            os.path.join(results, f"course_eval_epoch_{epoch}_grid.png"),
            os.path.join(outputs, "submission_check", "course_generate_image", "result_256.png"),
            os.path.join(outputs, "submission_check", "prompts.png"),
            os.path.join(names["DRIVE_DIR"], f"submission_epoch_{epoch}.zip")]


def session(cells: dict, names: dict) -> dict:
    """What one run of the notebook left: its cells, the complete epochs on Drive, the epoch it submits (the one
    the graders' FID logged during training scores best, as the notebook picks it), the promised files missing."""
    epochs = checkpoints.complete_epochs(names["CKPT_DIR"], names["NUM_STAGE"])
    best = best_logged_epoch(names["CKPT_DIR"], epochs, "course_fid")
    epoch = epochs[-1] if best is None else best
    return {"cells": cells, "epochs": epochs, "best": best, "epoch": epoch,
            "missing": [path for path in promised_files(names, epoch) if not os.path.exists(path)]}


@pytest.fixture(scope="module")
def colab(tiny_clip_path, inception_path, course_inception_path, tmp_path_factory) -> dict:
    """The notebook run twice on one Drive: a first session (epoch 0), then a new machine (an empty /content)
    with NUM_EPOCHS 2 (the first session's quota ran out, or the user wants more epochs)."""
    root = str(tmp_path_factory.mktemp("colab"))
    my_drive, content, stub, origin = (os.path.join(root, name) for name in ("my_drive", "content", "stub", "origin"))
    world.write_raw_dataset(os.path.join(my_drive, "t2i"), num_images=36, num_train=20, num_test=12, size=256,
                                seed=0)
    write_google_colab_stub(stub)
    snapshot_repository(origin)
    settings = {**GPU_CHECK.small_settings(content, tiny_clip_path, inception_path, course_inception_path), **SMALL,
                "REPO_URL": origin, "BRANCH": "main", "NUM_EPOCHS": 1}
    # `python` and `pip` in the notebook's shell lines: this interpreter's. One thread a process: on a small shared
    # machine torch's threads otherwise spin against each other (an epoch here: 3 s with one, over 40 s with two).
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": stub, "T2I_TEST_DRIVE": my_drive, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "OMP_NUM_THREADS": "1"}
    names = GPU_CHECK.notebook_settings(settings)

    first = session(run_notebook(settings, env, root), names)
    stop_tensorboard(names["CKPT_DIR"])
    first["drive"] = {name: digest(os.path.join(names["CKPT_DIR"], name)) for name in os.listdir(names["CKPT_DIR"])
                      if name.startswith("epoch_0_")}
    first["zips"] = {path: os.path.getmtime(path) for path in (names["TRAIN_ZIP"], names["TEST_ZIP"])}

    shutil.rmtree(content)  # a reconnect: a new machine, the same Drive
    second = session(run_notebook({**settings, "NUM_EPOCHS": 2}, env, root), names)
    stop_tensorboard(names["CKPT_DIR"])
    return {"names": names, "first": first, "second": second}


@pytest.mark.parametrize("run", ["first", "second"])
def test_every_cell_runs_and_writes_what_it_promises(colab, run):
    cells, epoch = colab[run]["cells"], colab[run]["epoch"]
    assert colab[run]["best"] is not None  # every epoch was scored by the graders' protocol during training
    assert colab[run]["missing"] == []
    assert "Mounted at" in cell_output(cell_starting(cells, "import os"))
    assert "GPU:" in cell_output(cell_starting(cells, "if not os.path.isdir(WORK_DIR)"))
    assert images_shown(cell_starting(cells, "if not os.path.isfile(LOCAL_RAW_ZIP)")) == 1
    opened = cell_starting(cells, "%load_ext tensorboard")
    assert any("proxyPort" in output.get("data", {}).get("application/javascript", "") for output in opened.outputs)
    assert "ERROR" not in cell_output(opened)  # tensorboard.notebook's message when TensorBoard does not start
    assert "Done: 1 epoch(s)" in cell_output(cell_starting(cells, "import shutil"))
    curves = cell_starting(cells, "from t2i.checkpoints import complete_epochs")
    assert f"the graders' FID scores best: {colab[run]['best']}; using epoch {epoch}" in cell_output(curves)
    assert images_shown(curves) == 2
    assert images_shown(cell_starting(cells, "!python generate_image.py")) == 2
    evaluation = cell_starting(cells, "import json")
    assert "*   FID : " in cell_output(evaluation) and "*    IS : " in cell_output(evaluation)  # the graders'
    assert '"fid"' in cell_output(evaluation) and images_shown(evaluation) == 2
    assert images_shown(cell_starting(cells, "!pip install --quiet -r requirements-docs.txt")) == 2


def test_the_first_session_trains_from_scratch(colab):
    first = colab["first"]
    assert "starting from scratch" in cell_output(cell_starting(first["cells"], "import shutil"))
    assert first["epochs"] == [0]


def test_after_a_reconnect_finished_steps_are_skipped_and_training_resumes(colab):
    names, second = colab["names"], colab["second"]
    preprocessing = cell_output(cell_starting(second["cells"], "if os.path.isfile(TRAIN_ZIP)"))
    assert "skipping the train split" in preprocessing and "skipping the test split" in preprocessing
    assert {path: os.path.getmtime(path) for path in colab["first"]["zips"]} == colab["first"]["zips"]
    training = cell_output(cell_starting(second["cells"], "import shutil"))
    assert f"Resuming from epoch 0 in {names['CKPT_DIR']}: epoch 1, step 0" in training
    assert second["epochs"] == [0, 1]
    for name, before in colab["first"]["drive"].items():  # epoch 0 was not trained again
        assert digest(os.path.join(names["CKPT_DIR"], name)) == before, name
    # TensorBoard's curves go on from the first session's, on Drive.
    events = EventAccumulator(os.path.join(names["CKPT_DIR"], checkpoints.TENSORBOARD_FOLDER),
                              size_guidance={SCALARS: 0})
    events.Reload()
    assert [point.step for point in events.Scalars("epoch/g_loss")] == [5, 10]  # 20 images, batch 4
