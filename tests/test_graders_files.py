"""Our stand-in of the graders' six files (t2i/course_harness) against ../shared/CONTRACT.md, fact by fact.

Each test checks one fact the contract states about the graders' real main.py, generate_image.py, train_utils.py,
fix_seed.py, read_dataset.py or dataloader.py, on the stand-in itself, so that a kinder stand-in (a `str` where the
real file passes a `Path`, a loader that skips the PIL quirk) fails here instead of hiding a fault of ours.
tests/test_course_harness.py then runs our train.py and network.py under these files.
"""
import contextlib
import inspect
import io
import json
import os
import random
import shutil
import subprocess
import textwrap
import zipfile
from argparse import Namespace

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms as T

from t2i import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The woman is young and has blond hair, and arched eyebrows."


# ------------------------------------------------------------------------------------------------ main.py

RECORDING_TRAIN = textwrap.dedent("""\
    import json, os, random, sys, warnings
    import numpy as np
    import torch

    AT_IMPORT = {"click": "click" in sys.modules, "fix_seed": "fix_seed" in sys.modules,
                 "warnings_ignored": bool(warnings.filters) and warnings.filters[0][0] == "ignore",
                 "folders": os.path.isdir("model_exp1") or os.path.isdir("images_exp1")}

    def train(args):
        print("REPORT " + json.dumps({
            "attributes": {name: [type(value).__name__, os.fspath(value) if isinstance(value, os.PathLike) else value]
                           for name, value in vars(args).items()},
            "at_import": AT_IMPORT,
            "folders": [os.path.isdir(args.checkpoint_path), os.path.isdir(args.result_path)],
            "draws": [torch.rand(()).item(), float(np.random.rand()), random.random()],
            "cudnn": [torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark]}))
    """)


@pytest.fixture(scope="module")
def main_report(tmp_path_factory) -> dict:
    """What the stand-in main.py hands `train` when run with no flags, recorded by a stand-in train.py."""
    workdir = tmp_path_factory.mktemp("main")
    (workdir / "recording_train.py").write_text(RECORDING_TRAIN)
    harness.prepare_workdir(str(workdir), os.path.join(ROOT, "network.py"), str(workdir / "recording_train.py"))
    result = harness.run_course_script(str(workdir), "main.py", [], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


COURSE_DEFAULTS = {
    "train_data": ["PosixPath", "sample_train.zip"], "batch_size": ["int", 64], "num_epochs": ["int", 50],
    "learning_rate": ["float", 2e-4], "report_interval": ["int", 100], "noise_dim": ["int", 100],
    "projection_dim": ["int", 128], "clip_embedding_dim": ["int", 512],
    "checkpoint_path": ["PosixPath", "model_exp1"], "result_path": ["PosixPath", "images_exp1"],
    "use_uncond_loss": ["bool", False], "use_contrastive_loss": ["bool", False], "num_stage": ["int", 1],
    "resume_checkpoint_path": ["NoneType", None], "resume_epoch": ["int", -1]}


def test_main_passes_exactly_the_fifteen_course_attributes(main_report):
    assert sorted(main_report["attributes"]) == sorted(COURSE_DEFAULTS)


@pytest.mark.parametrize("name", sorted(COURSE_DEFAULTS))
def test_main_default_and_type_of_each_flag(main_report, name):
    # The three paths arrive as PosixPath objects, never str: argparse converts string defaults too.
    assert main_report["attributes"][name] == COURSE_DEFAULTS[name]


def test_main_filters_warnings_and_imports_click_seed_fix_and_train_before_parsing(main_report):
    assert main_report["at_import"] == {"click": True, "fix_seed": True, "warnings_ignored": True, "folders": False}


def test_main_makes_both_folders_and_seeds_zero_before_train(main_report):
    assert main_report["folders"] == [True, True]
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    assert main_report["draws"] == pytest.approx([torch.rand(()).item(), float(np.random.rand()), random.random()])
    assert main_report["cudnn"] == [True, False]


def test_main_resume_flags_are_a_plain_str_and_an_int(tmp_path):
    (tmp_path / "recording_train.py").write_text(RECORDING_TRAIN)
    harness.prepare_workdir(str(tmp_path), os.path.join(ROOT, "network.py"), str(tmp_path / "recording_train.py"))
    result = harness.run_course_script(str(tmp_path), "main.py", ["--resume_checkpoint_path", "ck", "--resume_epoch",
                                                                  "latest"], timeout=120)
    assert result.returncode == 2 and "invalid int value: 'latest'" in result.stderr
    result = harness.run_course_script(str(tmp_path), "main.py", ["--resume_checkpoint_path", "ck", "--resume_epoch",
                                                                  "3"], timeout=120)
    attributes = json.loads(result.stdout.split("REPORT ", 1)[1])["attributes"]
    assert attributes["resume_checkpoint_path"] == ["str", "ck"] and attributes["resume_epoch"] == ["int", 3]


# -------------------------------------------------------------------------------------------- fix_seed.py

def test_seed_fix_parameter_is_literally_named_int_and_seeds_everything():
    fix_seed = harness.load_course_module("fix_seed")
    assert list(inspect.signature(fix_seed.seed_fix).parameters) == ["int"]
    fix_seed.seed_fix(0)
    draws = [torch.rand(()).item(), float(np.random.rand()), random.random()]
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    assert draws == [torch.rand(()).item(), float(np.random.rand()), random.random()]
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


# ----------------------------------------------------------------------------------------- train_utils.py

@pytest.fixture(scope="module")
def utils():
    return harness.load_course_module("train_utils")


def test_error_prints_to_stdout_and_exits_1(utils):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as stop:
        utils.error("no such zip")
    assert stop.value.code == 1 and printed.getvalue() == "Error: no such zip\n"


def test_kl_normalize_denormalize_gather_all(utils):
    mu, log_sigma = torch.randn(4, 8), torch.randn(4, 8)
    expected = (-log_sigma - 0.5 + (torch.exp(2 * log_sigma) + mu ** 2) / 2).sum(dim=1).mean()
    assert torch.allclose(utils.KL_divergence(mu, log_sigma), expected)
    vector = torch.tensor([[3.0, 4.0]])
    assert torch.equal(utils.normalize(vector), torch.tensor([[0.6, 0.8]]))
    assert torch.equal(utils.normalize(torch.zeros(1, 2)).isnan(), torch.ones(1, 2, dtype=torch.bool))  # no epsilon
    assert utils.denormalize_image(torch.tensor(-1.0)) == 0 and utils.denormalize_image(torch.tensor(1.0)) == 1
    assert utils.gather_all({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}) == 3


def test_custom_reshape_reads_the_side_from_dim_minus_2_and_never_crops_the_full_side(utils, monkeypatch):
    bounds = []
    randint = torch.randint

    def recording(low, high, size):
        bounds.append((low, high))
        return randint(low, high, size)

    monkeypatch.setattr(torch, "randint", recording)
    assert utils.custom_reshape(torch.rand(2, 3, 256, 300)).shape == (2, 3, 224, 224)
    assert bounds[0] == (int(0.99 * 256), 256)  # the crop side: from shape[-2], in [ratio * n, n)
    bounds.clear()
    padded = utils.custom_reshape(torch.zeros(2, 3, 64, 64))
    assert padded.shape == (2, 3, 224, 224) and padded.sum() == 2 * 3 * (224 * 224 - 64 * 64)  # padded with 1.0


def test_clip_transform_and_clip_preprocess_are_composes(utils):
    transform = utils.clip_transform(224)
    assert isinstance(transform, T.Compose)
    assert [type(step) for step in transform.transforms] == [T.Resize, T.CenterCrop]
    assert transform.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    preprocess = utils.clip_preprocess()
    assert isinstance(preprocess, T.Compose) and isinstance(preprocess.transforms[0], T.Normalize)
    assert preprocess.transforms[0].mean == (0.48145466, 0.4578275, 0.40821073)
    assert preprocess.transforms[0].std == (0.26862954, 0.26130258, 0.27577711)


def test_save_hyp_writes_thirteen_keys_as_they_are_in_args(utils, tmp_path):
    args = Namespace(clip_embedding_dim=512, projection_dim=128, noise_dim=100, num_stage=3, use_uncond_loss=True,
                     use_contrastive_loss=False, batch_size=24, num_epochs=20, learning_rate=np.float32(2e-4),
                     checkpoint_path=tmp_path)
    utils.save_hyp(args, 1024, 3, 64, 1)
    with pytest.raises(Exception):  # a numpy scalar kept as it is: the graders' default weights_only refuses it
        torch.load(tmp_path / "hyperparameter.pt")
    hyp = torch.load(tmp_path / "hyperparameter.pt", weights_only=False)
    assert list(hyp) == ["clip_embedding_dim", "projection_dim", "noise_dim", "num_stage", "use_uncond_loss",
                         "use_contrastive_loss", "batch_size", "num_epochs", "learning_rate", "g_in_chans",
                         "g_out_chans", "d_in_chans", "d_out_chans"]
    assert type(hyp["learning_rate"]) is np.float32


def test_save_model_writes_the_generator_first_with_plain_torch_save(utils, tmp_path, monkeypatch):
    assert list(inspect.signature(utils.save_model).parameters) == ["args", "Generator", "Discriminators", "epoch",
                                                                    "num_stage"]
    written = []
    monkeypatch.setattr(torch, "save", lambda obj, path: written.append(os.path.basename(path)))
    model = torch.nn.Linear(1, 1)
    utils.save_model(Namespace(checkpoint_path=tmp_path), model, [model, model, model], 4, 3)
    assert written == ["epoch_4_Gen.pt", "epoch_4_Dis_0.pt", "epoch_4_Dis_1.pt", "epoch_4_Dis_2.pt"]


def saved_models(folder, epoch: int = 0, stages: int = 2):
    G, D_list = torch.nn.Linear(2, 2), [torch.nn.Linear(3, 1) for _ in range(stages)]
    torch.save(G.state_dict(), os.path.join(folder, f"epoch_{epoch}_Gen.pt"))
    for stage, D in enumerate(D_list):
        torch.save(D.state_dict(), os.path.join(folder, f"epoch_{epoch}_Dis_{stage}.pt"))
    return G, D_list


def test_load_checkpoint_loads_strictly_on_the_cpu_and_sets_eval(utils, tmp_path):
    G, D_list = saved_models(tmp_path)
    fresh_G, fresh_D = torch.nn.Linear(2, 2), [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]
    utils.load_checkpoint(fresh_G, fresh_D, tmp_path, 0)
    assert torch.equal(fresh_G.weight, G.weight) and all(torch.equal(a.weight, b.weight)
                                                         for a, b in zip(fresh_D, D_list))
    assert not fresh_G.training and not any(D.training for D in fresh_D)


@pytest.mark.parametrize("fault", ["missing discriminator file", "other shapes"])
def test_load_checkpoint_failure_prints_one_line_and_exits_0(utils, tmp_path, fault):
    saved_models(tmp_path)
    D_list = [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]
    if fault == "missing discriminator file":
        os.remove(tmp_path / "epoch_0_Dis_1.pt")
    else:
        D_list[1] = torch.nn.Linear(4, 1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as stop:
        utils.load_checkpoint(torch.nn.Linear(2, 2), D_list, tmp_path, 0)
    assert stop.value.code == 0 and len(printed.getvalue().strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- read_dataset.py

def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def odd_zip(tmp_path_factory) -> str:
    """Three RGB images in the preprocessed layout, stored out of name order."""
    path = str(tmp_path_factory.mktemp("odd") / "odd.zip")
    rng = np.random.default_rng(0)
    names = ["00000/img00000002.png", "00000/img00000000.png", "00000/img00000001.png"]
    meta = {"clip_img_features": [], "clip_txt_features": []}
    with zipfile.ZipFile(path, "w") as archive:
        for index, name in enumerate(names):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            archive.writestr(name, png_bytes(PIL.Image.fromarray(pixels)))
            meta["clip_img_features"].append([name, [float(index + 1), 0.0, 0.0, 0.0]])
            meta["clip_txt_features"].append([name, [[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 4.0]]])
        archive.writestr("dataset.json", json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def course_dataset(odd_zip):
    PIL.Image.init()
    return harness.load_course_module("read_dataset").ZipDataset(odd_zip, 3)


def test_read_dataset_indexes_by_name_order(course_dataset):
    assert course_dataset.names == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png"]


def test_read_dataset_keeps_the_image_mode_resizes_64_bilinear_then_the_stages_from_that(course_dataset, odd_zip):
    with zipfile.ZipFile(odd_zip) as archive, archive.open("00000/img00000001.png") as f:
        image = PIL.Image.open(f)
        expected_64 = T.ToTensor()(image.resize((64, 64), PIL.Image.BILINEAR)) * 2 - 1
    images, _, _ = course_dataset[1]
    assert torch.allclose(images[0], expected_64, atol=1e-6)
    assert [tuple(image.shape) for image in images] == [(3, 64, 64), (3, 128, 128), (3, 256, 256)]
    assert torch.allclose(images[2], T.Resize((256, 256))(images[0]))


def test_read_dataset_does_not_convert_to_rgb_so_our_zips_hold_rgb_only(tmp_path, preprocessed_zips):
    PIL.Image.init()
    grayscale = tmp_path / "gray.zip"
    with zipfile.ZipFile(grayscale, "w") as archive:
        archive.writestr("00000/img00000000.png", png_bytes(PIL.Image.new("L", (256, 256))))
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):  # Normalize of 3 channels
        harness.load_course_module("read_dataset").ZipDataset(str(grayscale), 1)
    with zipfile.ZipFile(preprocessed_zips["train"]) as archive:
        modes = {PIL.Image.open(archive.open(name)).mode for name in archive.namelist() if name.endswith(".png")}
    assert modes == {"RGB"}


def test_read_dataset_normalises_embeddings_and_picks_the_caption_with_python_random(course_dataset):
    _, img_embedding, _ = course_dataset[0]
    assert torch.equal(img_embedding, torch.tensor([1.0, 0, 0, 0]))
    picks = []
    for seed in (0, 1, 2, 3):
        random.seed(seed)
        torch.manual_seed(99)  # the same torch seed for every pick: only Python's random varies
        picks.append(int(course_dataset[0][2].argmax()))
    assert all(course_dataset[0][2].norm() == pytest.approx(1.0) for _ in range(3))
    random.seed(0)
    assert len(set(picks)) > 1 and picks[0] == int(course_dataset[0][2].argmax())


def test_read_dataset_reads_dataset_json_only_if_present(tmp_path, odd_zip):
    PIL.Image.init()
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(odd_zip) as src, zipfile.ZipFile(bare, "w") as dst:
        for name in src.namelist():
            if name != "dataset.json":
                dst.writestr(name, src.read(name))
    dataset = harness.load_course_module("read_dataset").ZipDataset(str(bare), 1)
    assert len(dataset) == 3
    with pytest.raises(KeyError):
        dataset[0]


def test_our_preprocessed_zip_lists_every_image_in_both_lists(preprocessed_zips):
    with zipfile.ZipFile(preprocessed_zips["train"]) as archive:
        meta = json.loads(archive.read("dataset.json"))
        images = {name for name in archive.namelist() if name.endswith(".png")}
    assert images == {name for name, _ in meta["clip_img_features"]} == {name for name, _ in meta["clip_txt_features"]}


def count_in_fresh_interpreter(tmp_path, zip_path: str, before: str) -> int:
    """len(ZipDataset) of the stand-in read_dataset in a new interpreter, in a harness folder as the graders'
    (their six files beside our network.py and train.py), after running `before` and nothing else."""
    workdir = harness.prepare_workdir(str(tmp_path), os.path.join(ROOT, "network.py"), os.path.join(ROOT, "train.py"))
    with open(os.path.join(workdir, "count.py"), "w") as f:
        f.write(f"{before}\nimport read_dataset\nprint(len(read_dataset.ZipDataset({zip_path!r}, 1)))\n")
    result = harness.run_course_script(workdir, "count.py", [], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1])


def test_read_dataset_finds_no_image_before_pil_registers_its_plugins(odd_zip, tmp_path):
    assert count_in_fresh_interpreter(tmp_path, odd_zip, "import PIL.Image") == 0


def test_importing_our_train_registers_pil_so_the_course_index_is_complete(odd_zip, tmp_path):
    # As the graders' main.py does: `from train import train` first, then ZipDataset inside train().
    assert count_in_fresh_interpreter(tmp_path, odd_zip, "import PIL.Image\nfrom train import train") == 3


# ------------------------------------------------------------------------------------------ dataloader.py

def test_dataloader_random_when_training_sequential_otherwise_and_keeps_a_last_batch_of_one():
    get_dataloader = harness.load_course_module("dataloader").get_dataloader
    dataset = list(range(5))
    train_loader = get_dataloader(Namespace(batch_size=2), dataset, is_train=True)
    assert isinstance(train_loader.sampler, torch.utils.data.RandomSampler)
    assert (train_loader.num_workers, train_loader.pin_memory, train_loader.drop_last) == (0, False, False)
    assert [len(batch) for batch in train_loader] == [2, 2, 1]
    torch.manual_seed(7)
    first = [batch.tolist() for batch in train_loader]
    torch.manual_seed(7)
    assert [batch.tolist() for batch in train_loader] == first  # drawn from the global torch RNG
    test_loader = get_dataloader(Namespace(batch_size=2), dataset, is_train=False)
    assert isinstance(test_loader.sampler, torch.utils.data.SequentialSampler)
    assert [batch.tolist() for batch in test_loader] == [[0, 1], [2, 3], [4]]


# ---------------------------------------------------------------------------------------- generate_image.py

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A 3-stage checkpoint of our network.py at tiny widths, written as training writes it."""
    from network import Discriminator, Generator, weight_init
    from train_utils import save_hyp, save_model

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    torch.manual_seed(0)
    G = Generator(512, 8, 8, 64, 3, 3, "cpu")
    D_list = [Discriminator(8, 3, 4, 1, 512, stage, "cpu") for stage in range(3)]
    for model in (G, *D_list):
        model.apply(weight_init)
    args = Namespace(clip_embedding_dim=512, projection_dim=8, noise_dim=8, num_stage=3, use_uncond_loss=True,
                     use_contrastive_loss=True, batch_size=4, num_epochs=1, learning_rate=2e-4,
                     checkpoint_path=str(folder))
    save_hyp(args, 64, 3, 4, 1)
    save_model(args, G, D_list, 0, 3)
    return str(folder)


def generate(workdir, checkpoint: str, clip_path: str, *extra: str) -> subprocess.CompletedProcess:
    return harness.run_course_script(str(workdir), "generate_image.py", ["--prompt", PROMPT, "--load_epoch", "0",
                                                                         "--checkpoint_path", checkpoint, *extra],
                                     clip_standin=clip_path, timeout=180)


def result_pixels(workdir) -> list[np.ndarray]:
    return [np.asarray(PIL.Image.open(os.path.join(workdir, f"result_{size}.png"))) for size in (64, 128, 256)]


def test_generate_writes_three_sizes_in_the_working_directory_unseeded(tiny_checkpoint, tiny_clip_path, tmp_path):
    workdir = harness.prepare_workdir(str(tmp_path), os.path.join(ROOT, "network.py"), os.path.join(ROOT, "train.py"))
    first = generate(workdir, tiny_checkpoint, tiny_clip_path)
    assert first.returncode == 0, first.stderr[-3000:]
    images = result_pixels(workdir)
    assert [image.shape[:2] for image in images] == [(64, 64), (128, 128), (256, 256)]
    assert generate(workdir, tiny_checkpoint, tiny_clip_path).returncode == 0
    assert not np.array_equal(result_pixels(workdir)[0], images[0]), "the graders' noise is not seeded"


def test_generate_loads_every_discriminator_and_a_failure_exits_0_without_images(tiny_checkpoint, tiny_clip_path,
                                                                                 tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    os.remove(broken / "epoch_0_Dis_2.pt")  # only a discriminator is missing: the generator alone would load
    workdir = harness.prepare_workdir(str(tmp_path / "work"), os.path.join(ROOT, "network.py"),
                                      os.path.join(ROOT, "train.py"))
    result = generate(workdir, str(broken), tiny_clip_path)
    assert result.returncode == 0 and "Cannot load checkpoint" in result.stdout
    assert not any(name.startswith("result_") for name in os.listdir(workdir))


def test_generate_reads_hyperparameters_with_weights_only_and_offers_three_clip_models(tiny_checkpoint,
                                                                                      tiny_clip_path, tmp_path):
    workdir = harness.prepare_workdir(str(tmp_path / "work"), os.path.join(ROOT, "network.py"),
                                      os.path.join(ROOT, "train.py"))
    refused = generate(workdir, tiny_checkpoint, tiny_clip_path, "--clip_model", "RN50")
    # click's BadParameter is no argparse error: the real file ends in a traceback, not a usage line
    assert refused.returncode == 1 and "BadParameter: 'RN50' is not one of 'B/32', 'L/14', 'B/16'" in refused.stderr
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_checkpoint, foreign)
    hyp = torch.load(foreign / "hyperparameter.pt")
    hyp["num_stage"] = np.int64(3)  # not a plain Python value
    torch.save(hyp, foreign / "hyperparameter.pt")
    result = generate(workdir, str(foreign), tiny_clip_path)
    assert result.returncode != 0 and "weights_only" in result.stderr
