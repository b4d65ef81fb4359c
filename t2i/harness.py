"""Runs our network.py and train.py under the course's plain files (our re-creation in t2i/course_harness).

The graders load checkpoints with their own plain copies of main.py, generate_image.py, dataloader.py,
read_dataset.py, train_utils.py and fix_seed.py. `prepare_workdir` puts those six plain files beside a given
network.py and train.py; `run_course_script` runs one of the course scripts there in a fresh interpreter.
Python puts the script's folder first on sys.path, so the plain files shadow the package's supersets of them,
while the repository root (after them on PYTHONPATH) still serves the other modules our train.py imports.
The shim folder comes first on PYTHONPATH: its sitecustomize makes `import clip` work and, with
`clip_standin`, makes `clip.load` return that local CLIP instead of downloading one.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from types import ModuleType

HARNESS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "course_harness")
SHIM_DIR = os.path.join(HARNESS_DIR, "shim")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COURSE_FILES = ("main.py", "generate_image.py", "dataloader.py", "read_dataset.py", "train_utils.py", "fix_seed.py")


def prepare_workdir(workdir: str, network_py: str, train_py: str) -> str:
    """Copy the six plain course files and the given network.py and train.py into `workdir`; return it."""
    for path in (network_py, train_py):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file to run under the course's plain files")
    os.makedirs(workdir, exist_ok=True)
    for name in COURSE_FILES:
        shutil.copyfile(os.path.join(HARNESS_DIR, name), os.path.join(workdir, name))
    shutil.copyfile(network_py, os.path.join(workdir, "network.py"))
    shutil.copyfile(train_py, os.path.join(workdir, "train.py"))
    return workdir


def run_course_script(workdir: str, script: str, argv: list[str], clip_standin: str | None = None,
                      timeout: float | None = None, extra_env: dict[str, str] | None = None
                      ) -> subprocess.CompletedProcess:
    """Run `python script *argv` in `workdir` with the shim and the repository root on PYTHONPATH.

    `clip_standin` (a local CLIP state-dict file) replaces every `clip.load` model; `extra_env` adds variables
    (PYTHONPATH is always the harness's). Output is captured as text.
    """
    env = {key: value for key, value in os.environ.items() if key != "T2I_CLIP_STANDIN"}
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join([SHIM_DIR, REPO_ROOT])
    if clip_standin is not None:
        env["T2I_CLIP_STANDIN"] = os.path.abspath(clip_standin)
    return subprocess.run([sys.executable, script, *argv], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load_course_module(name: str) -> ModuleType:
    """One of the six plain course files imported in this process under a private name (`course_<name>`), so that
    it cannot replace the package's module of the same name. Its own imports of the other course files
    (read_dataset's `from train_utils import normalize`) resolve to the plain files too, while it loads."""
    spec = importlib.util.spec_from_file_location(f"course_{name}", os.path.join(HARNESS_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    shadowed = {other: sys.modules.pop(other) for other in (n.removesuffix(".py") for n in COURSE_FILES)
                if other in sys.modules}
    sys.path.insert(0, HARNESS_DIR)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(HARNESS_DIR)
        for other in (n.removesuffix(".py") for n in COURSE_FILES):
            sys.modules.pop(other, None)
        sys.modules.update(shadowed)
    return module
