"""What a submission zip holds: the guideline's items (1) to (9), each with its files and their names in the zip.

The guideline's list (CONTRACT.md, "Grading and what a team submits"), for the run's model (`--arch`):

    (1) network.py       the models' module; for GALIP network_galip.py as network.py (what the weights load
                         into), with the course model's network.py beside it as network_stackgan.py
    (2) train.py
    (3) weights          epoch_N_Gen.pt, epoch_N_Dis_0/1/2.pt, hyperparameter.pt
    (4) report           report.pdf, at most 3 pages (docs/report.typ, built by `python -m docs.make`)
    (5), (6)             the two preprocessing commands
    (7) FID/IS code      FID_IS_CODE
    (8) own model        GALIP only: OWN_MODEL_CODE, its weights (the files of (3)) and galip_description.pdf
    (9) every other file our files import, found by reading their imports (so the unpacked zip runs by
                         itself, beside the graders' six files or with ours), our versions of the course's six
                         files, and requirements.txt

(1)-(4) are essential: a missing one refuses the zip. Source files keep their repository paths in the zip
(t2i/...), so their imports resolve in the unpacked folder as they do in the repository.
"""
from __future__ import annotations

import ast
import os
import textwrap
from dataclasses import dataclass

from t2i.errors import T2IError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPROCESSING = ("preproc_datasets_celeba_zip_train.py", "preproc_datasets_celeba_zip_test.py")
FID_IS_CODE = ("evaluate.py", "t2i/evaluation/course.py", "t2i/evaluation/metrics.py", "t2i/evaluation/evaluator.py")
OWN_MODEL_CODE = {"galip": ("network_galip.py", "train_galip.py", "galip_losses.py")}
# Our supersets of the course's files that nothing imports (the other four are reached through imports).
COURSE_SUPERSETS = ("main.py", "generate_image.py")
OTHER_FILES = ("requirements.txt",)
REPORT_NAME = "report.pdf"
DESCRIPTION_NAME = "{arch}_description.pdf"
MANIFEST_NAME = "MANIFEST.txt"


@dataclass
class Item:
    label: str                     # "(4) report"
    essential: bool
    files: list[tuple[str, str]]   # (path on this machine, name in the zip)
    note: str = ""                 # shown in the manifest, e.g. "the files of (3)"


def module_file(name: str, root: str) -> str | None:
    """The repository file of module `name` ('t2i.training.options' -> t2i/training/options.py), or None for one
    outside it."""
    base = os.path.join(root, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def imported_files(path: str, root: str) -> set[str]:
    """The repository files that `path` imports, anywhere in it (imports inside functions count: they run when
    those functions do), with the `__init__.py` of every package on the way."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = os.path.relpath(os.path.dirname(path), root).replace(os.sep, ".").strip(".")
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, `level - 1` packages up
                parts = package.split(".") if package else []
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            file = module_file(".".join(parts[:depth]), root)
            if file is not None:
                found.add(file)
    return found


def import_closure(entry_points: list[str], root: str = REPO_ROOT) -> list[str]:
    """Every repository file the entry points import, directly or through each other, sorted (entry points too)."""
    seen: set[str] = set()
    todo = [os.path.join(root, path) for path in entry_points]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += sorted(imported_files(path, root) - seen)
    return sorted(seen)


def repo_file(path: str) -> tuple[str, str]:
    return os.path.join(REPO_ROOT, path), path


def items(arch: str, network_py: str, weights: list[str], report_pdf: str, description_pdf: str | None
          ) -> list[Item]:
    """The guideline's items for a run of `arch`: `network_py` its models' module (models.NETWORKS), `weights` the
    checkpoint files of (3), `report_pdf` the built report, `description_pdf` the built description of the own
    model (None for the course model)."""
    network = os.path.basename(network_py)
    first = [(network_py, "network.py")]
    if arch != "stackgan":  # the course model's network.py, which the report explains, beside the graded one
        first.append((os.path.join(REPO_ROOT, "network.py"), "network_stackgan.py"))
    listed = [
        Item("(1) network.py", True, first, "" if arch == "stackgan" else f"network.py is {network}"),
        Item("(2) train.py", True, [repo_file("train.py")]),
        Item("(3) weights", True, [(path, os.path.basename(path)) for path in weights]),
        Item("(4) report", True, [(report_pdf, REPORT_NAME)], "at most 3 pages"),
        Item("(5) preprocessing, train", False, [repo_file(PREPROCESSING[0])]),
        Item("(6) preprocessing, test", False, [repo_file(PREPROCESSING[1])]),
        Item("(7) FID/IS code", False, [repo_file(path) for path in FID_IS_CODE]),
    ]
    if arch in OWN_MODEL_CODE:
        own = [repo_file(path) for path in OWN_MODEL_CODE[arch]]
        if description_pdf is not None:
            own.append((description_pdf, DESCRIPTION_NAME.format(arch=arch)))
        listed.append(Item(f"(8) own model: {arch}", False, own, "its weights are the files of (3)"))
    else:
        listed.append(Item("(8) own model", False, [], f"not this run: a run of --arch {sorted(OWN_MODEL_CODE)[0]}"))
    packed = {name for item in listed for _, name in item.files}
    entry_points = [os.path.relpath(path, REPO_ROOT) for item in listed for path, name in item.files
                    if name.endswith(".py")]
    closure = [os.path.relpath(path, REPO_ROOT).replace(os.sep, "/")
               for path in import_closure(entry_points + list(COURSE_SUPERSETS))]
    # Packed already under their names; `import network` finds the zip's network.py, the file of (1).
    rest = [path for path in closure if path not in packed]
    listed.append(Item("(9) other files", False, [repo_file(path) for path in rest + list(OTHER_FILES)],
                       "what the files above import, so the zip runs by itself"))
    return listed


def check_items(listed: list[Item]) -> list[str]:
    """One problem line for each missing file (an essential item without files counts as missing)."""
    problems = []
    for item in listed:
        if item.essential and not item.files:
            problems.append(f"{item.label}: nothing to pack")
        problems += [f"{item.label}: {path} is missing" for path, _ in item.files if not os.path.isfile(path)]
    return problems


def manifest(listed: list[Item]) -> str:
    """item -> files, one item a line (the zip's MANIFEST.txt and what check_submission prints)."""
    lines = []
    for item in listed:
        names = ", ".join(name for _, name in item.files) or "-"
        note = f"  ({item.note})" if item.note else ""
        lines += textwrap.wrap(f"{item.label:<26} {names}{note}", 110, subsequent_indent=" " * 27,
                               break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines) + "\n"


def zip_names(listed: list[Item]) -> list[tuple[str, str]]:
    """Every (path, name in the zip) once, in item order; a name listed twice must be the same file."""
    names: dict[str, str] = {}
    for item in listed:
        for path, name in item.files:
            if names.setdefault(name, path) != path:
                raise T2IError(f"{item.label}: {name} would be packed from both {names[name]} and {path}")
    return [(path, name) for name, path in names.items()]
