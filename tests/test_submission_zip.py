"""check_submission.py --zip packs the guideline's whole list for a tiny run of each model, with a report of at most
3 pages, and the unpacked zip alone generates 64/128/256 px images through the course's generate_image.py."""
import importlib.util
import os
import shutil
import zipfile

import pypdf
import pytest
from PIL import Image

import check_submission
import main
import network
from docs import make as docs_make
from t2i import harness, submission_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny widths: one step of 4 images an epoch, 3 stages (the course's generate_image.py saves three sizes).
WIDTHS = {"stackgan": ["--g_in_chans", "64", "--d_in_chans", "4"], "galip": ["--g_in_chans", "16"]}


@pytest.fixture(scope="module")
def runs(small_train_zip, tiny_clip_path, tmp_path_factory) -> dict:
    """One epoch of each model on 4 images: {arch: checkpoint folder}."""
    folders = {}
    for arch, widths in WIDTHS.items():
        root = tmp_path_factory.mktemp(arch)
        main.main(["--train_data", small_train_zip, "--batch_size", "4", "--num_epochs", "1", "--report_interval", "1",
                   "--noise_dim", "8", "--projection_dim", "8", "--clip_embedding_dim", "512",
                   "--checkpoint_path", str(root / "checkpoints"), "--result_path", str(root / "results"),
                   "--num_stage", "3", "--resume_epoch", "-1", "--clip_model", tiny_clip_path, "--arch", arch,
                   "--device", "cpu", *widths])
        folders[arch] = str(root / "checkpoints")
    return folders


def check(folder: str, clip: str, tmp_path, *extra: str) -> int:
    return check_submission.main(["--checkpoint_path", folder, "--epoch", "0", "--clip_model", clip, "--out_dir",
                                  str(tmp_path / "check"), "--num_images", "1", "--device", "cpu", *extra])


def graders_generate(unpacked: str, clip: str) -> list[tuple[int, int]]:
    """The course's six plain files put beside the unpacked zip (replacing ours), its generate_image.py run on the
    zip's own files alone; the sizes of the three images it writes."""
    for name in harness.COURSE_FILES:
        shutil.copyfile(os.path.join(harness.HARNESS_DIR, name), os.path.join(unpacked, name))
    done = harness.run_course_script(unpacked, "generate_image.py",
                                     ["--prompt", "The woman has blond hair.", "--load_epoch", "0",
                                      "--checkpoint_path", unpacked], clip_standin=clip, code_root=unpacked)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = []
    for size in (64, 128, 256):
        with Image.open(os.path.join(unpacked, f"result_{size}.png")) as image:
            sizes.append(image.size)
    return sizes


@pytest.mark.parametrize("arch", ["stackgan", "galip"])
def test_zip_holds_every_item_and_runs_alone(arch, runs, tiny_clip_path, tmp_path, capsys):
    zip_path = str(tmp_path / "submission.zip")
    assert check(runs[arch], tiny_clip_path, tmp_path, "--zip", zip_path) == 0
    out = capsys.readouterr().out
    for number in range(1, 10):
        assert f"({number}) " in out  # the manifest names every item
    assert f"{zip_path} runs with the course's files" in out

    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unpacked")
    unpacked = str(tmp_path / "unpacked")
    weights = {"hyperparameter.pt", "epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_0_Dis_1.pt", "epoch_0_Dis_2.pt"}
    code = {"network.py", "train.py", *submission_files.PREPROCESSING, *submission_files.FID_IS_CODE, "main.py",
            "generate_image.py", "train_utils.py", "read_dataset.py", "dataloader.py", "fix_seed.py",
            "t2i/__init__.py", "t2i/training/step.py", "t2i/training/state.py", "requirements.txt"}
    assert weights | code | {"report.pdf", "MANIFEST.txt"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/", "t2i/course_harness/")) for name in names)
    model_file = {"stackgan": "network.py", "galip": "network_galip.py"}[arch]
    with open(os.path.join(ROOT, model_file), "rb") as f:
        assert open(os.path.join(unpacked, "network.py"), "rb").read() == f.read()
    if arch == "galip":
        assert {"network_stackgan.py", "network_galip.py", "train_galip.py", "galip_losses.py",
                "galip_description.pdf"} <= names
        with open(os.path.join(ROOT, "network.py"), "rb") as f:
            assert open(os.path.join(unpacked, "network_stackgan.py"), "rb").read() == f.read()
        assert len(pypdf.PdfReader(os.path.join(unpacked, "galip_description.pdf")).pages) >= 3
    report_pages = len(pypdf.PdfReader(os.path.join(unpacked, "report.pdf")).pages)
    assert 1 <= report_pages <= 3
    manifest = open(os.path.join(unpacked, "MANIFEST.txt")).read()
    assert "(4) report" in manifest and "report.pdf" in manifest

    assert graders_generate(unpacked, tiny_clip_path) == [(64, 64), (128, 128), (256, 256)]


def test_refuses_without_the_report_and_packs_nothing(runs, tiny_clip_path, tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "typst"
                        else find_spec(name, *rest))  # as on a machine without requirements-docs.txt
    zip_path = str(tmp_path / "submission.zip")
    assert check(runs["stackgan"], tiny_clip_path, tmp_path, "--zip", zip_path) == 1
    err = capsys.readouterr().err
    assert ("PROBLEM: (4) report: building docs/report.typ needs typst and pypdf (typst missing): "
            "pip install -r requirements-docs.txt") in err
    assert not os.path.exists(zip_path)


def test_a_report_past_its_page_limit_is_refused(monkeypatch):
    monkeypatch.setitem(docs_make.DOCUMENTS, "report", docs_make.Document("report.typ", ("stackgan",), 1))
    result = check_submission.CheckResult()
    report, _ = check_submission.build_documents("stackgan", result)
    pages = len(pypdf.PdfReader(report).pages)
    assert pages > 1
    assert result.problems == [f"(4) report: {report} has {pages} pages; the guideline allows at most 1: shorten "
                               f"docs/report.typ"]


def test_a_missing_essential_file_is_named(tmp_path):
    listed = submission_files.items("stackgan", network.__file__, [str(tmp_path / "epoch_0_Gen.pt")],
                                    str(tmp_path / "report.pdf"), None)
    problems = submission_files.check_items(listed)
    assert problems == [f"(3) weights: {tmp_path / 'epoch_0_Gen.pt'} is missing",
                        f"(4) report: {tmp_path / 'report.pdf'} is missing"]


def test_import_closure_follows_imports_inside_functions(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "inner.py").write_text("from . import leaf\n")
    (tmp_path / "pkg" / "leaf.py").write_text("import os\n")
    (tmp_path / "entry.py").write_text("def late():\n    from pkg.inner import thing\n")
    (tmp_path / "unused.py").write_text("")
    found = [os.path.relpath(path, tmp_path) for path in submission_files.import_closure(["entry.py"], str(tmp_path))]
    assert found == ["entry.py", os.path.join("pkg", "__init__.py"), os.path.join("pkg", "inner.py"),
                     os.path.join("pkg", "leaf.py")]
