"""Shared fixtures: small stand-ins that the tests build themselves (nothing is downloaded)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from t2i import clip_utils  # noqa: E402


def preprocess(argv: list[str], split: str) -> None:
    """Run a preprocessing command (`preproc_datasets_celeba_zip_<split>.py`) as its command line would."""
    import preproc_datasets_celeba_zip_test
    import preproc_datasets_celeba_zip_train

    command = {"train": preproc_datasets_celeba_zip_train, "test": preproc_datasets_celeba_zip_test}[split]
    command.convert_dataset.main(argv, standalone_mode=False)


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> str:
    """A random-weight CLIP with the real tokenizer and 224 px input, 512-d embeddings, a few MB."""
    return clip_utils.make_random_clip(str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt"), "tiny", 512)


@pytest.fixture(scope="session")
def inception_path(tmp_path_factory) -> str:
    """An Inception v3 (FID/IS) with random weights, 92 MB: written once for every test that needs one."""
    from t2i.evaluation import metrics

    return metrics.make_random_inception(str(tmp_path_factory.mktemp("inception") / "inception.pt"))


@pytest.fixture(scope="session")
def course_inception_path(tmp_path_factory) -> str:
    """torchvision's Inception v3 with random weights, for the graders' protocol (t2i/evaluation/course.py)."""
    from t2i.evaluation import course

    return course.make_random_course_inception(str(tmp_path_factory.mktemp("tv_inception") / course.INCEPTION_FILE))


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> dict:
    """A raw synthetic dataset: 30 ids (22 train, 6 test, 2 in neither), a fifth of the captions over 77 tokens."""
    from t2i.synthetic import world

    return world.write_raw_dataset(str(tmp_path_factory.mktemp("raw")), num_images=30, num_train=22,
                                   num_test=6, size=256, seed=0, long_captions=0.2)


@pytest.fixture
def raw_copy(synthetic_raw, tmp_path) -> dict:
    """The raw zip and both split pickles, copied into tmp_path/raw (never risk the session's files)."""
    import shutil

    folder = tmp_path / "raw"
    folder.mkdir()
    return {key: shutil.copy(synthetic_raw["paths"][key], folder) for key in ("source", "train", "test")}


@pytest.fixture(scope="session")
def preprocessed_zips(synthetic_raw, tiny_clip_path, tmp_path_factory) -> dict:
    """The synthetic raw dataset preprocessed with the tiny CLIP: {'train': path, 'test': path}."""
    out = tmp_path_factory.mktemp("preprocessed")
    paths = {}
    for split in ("train", "test"):
        paths[split] = str(out / f"{split}.zip")
        preprocess(["--source", synthetic_raw["paths"]["source"], "--dest", paths[split], "--clip_model",
                         tiny_clip_path, "--batch_size", "8", "--num_workers", "2", "--device", "cpu"], split)
    return paths


@pytest.fixture(scope="session")
def small_train_zip(synthetic_raw, tiny_clip_path, tmp_path_factory) -> str:
    """4 training images: one batch of 4 an epoch, for the tests that need the full 3-stage path but few steps."""
    path = str(tmp_path_factory.mktemp("small") / "train_4.zip")
    preprocess(["--source", synthetic_raw["paths"]["source"], "--dest", path, "--clip_model", tiny_clip_path,
                "--max-images", "4", "--num_workers", "1", "--device", "cpu"], "train")
    return path


@pytest.fixture(scope="session")
def demo_quick_run(tmp_path_factory) -> dict:
    """`demo.py --quick` run once on the CPU: its exit status, output folder, printed lines, graded epoch and CLIP
    file (shared by the demo and submission-check tests, since the run is the slowest part of
    both)."""
    import contextlib
    import io

    import demo

    out_dir = str(tmp_path_factory.mktemp("demo") / "out")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = demo.main(["--quick", "--out_dir", out_dir, "--device", "cpu"])
    return {"status": status, "out_dir": out_dir, "stdout": printed.getvalue(),
            "last_epoch": demo.graded_epoch(demo.QUICK), "clip_model": demo.small_clip_path(out_dir)}
