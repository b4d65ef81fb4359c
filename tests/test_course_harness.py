"""Our network.py and train.py under the course's plain files (t2i/course_harness), as the graders run them.

The course's main.py can only pass the course's flags, so the models are the full-size Ng 1024 / Nd 64 ones:
one training step of them takes 15-20 s on 2 CPU cores, so training runs on a 2-image copy of the synthetic
train zip (one step of batch 2).
"""
import importlib.util
import json
import os
import shutil
import textwrap
import time
import zipfile

import pytest
import torch

from t2i import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The woman is young and has blond hair, and arched eyebrows."


def course_argv(train_data, checkpoint_path, result_path):
    """The notebook's command, except a batch of 2 and one epoch."""
    return ["--train_data", train_data, "--batch_size", "2", "--num_epochs", "1", "--learning_rate", "2e-4",
            "--report_interval", "50", "--noise_dim", "100", "--projection_dim", "128", "--clip_embedding_dim",
            "512", "--checkpoint_path", checkpoint_path, "--result_path", result_path, "--num_stage", "3",
            "--resume_epoch", "-1", "--use_contrastive_loss"]


def subset_zip(source, dest, count):
    """The first `count` images of a preprocessed zip, with their dataset.json entries, as a new zip."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as dst:
        meta = json.loads(src.read("dataset.json"))
        img_features = meta["clip_img_features"][:count]
        names = {name for name, _ in img_features}
        for name in sorted(names):
            dst.writestr(name, src.read(name))
        dst.writestr("dataset.json", json.dumps({
            "clip_img_features": img_features,
            "clip_txt_features": [entry for entry in meta["clip_txt_features"] if entry[0] in names]}))
    return dest


def load_plain_module(name):
    """A plain course file imported under a private name, so it cannot clash with the package's module."""
    spec = importlib.util.spec_from_file_location(f"course_plain_{name}",
                                                  os.path.join(harness.HARNESS_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ok(workdir, script, argv, clip_standin, timeout=300):
    started = time.time()
    result = harness.run_course_script(str(workdir), script, argv, clip_standin=clip_standin, timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result, time.time() - started


@pytest.fixture(scope="module")
def course_training(preprocessed_zips, tiny_clip_path, tmp_path_factory):
    """The course's main.py trains our train.py/network.py for one epoch; the workdir and its timing."""
    workdir = harness.prepare_workdir(str(tmp_path_factory.mktemp("course_run")), os.path.join(ROOT, "network.py"),
                                      os.path.join(ROOT, "train.py"))
    train_data = subset_zip(preprocessed_zips["train"], os.path.join(workdir, "train_2.zip"), 2)
    _, seconds = run_ok(workdir, "main.py", course_argv(train_data, "checkpoints", "results"), tiny_clip_path)
    yield {"workdir": workdir, "seconds": seconds}
    shutil.rmtree(os.path.join(workdir, "checkpoints"))  # about 1.6 GB with the resume state


def test_course_main_trains_our_train_py(course_training):
    checkpoint_path = os.path.join(course_training["workdir"], "checkpoints")
    files = set(os.listdir(checkpoint_path))
    assert {"hyperparameter.pt", "epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_0_Dis_1.pt", "epoch_0_Dis_2.pt"} <= files
    hyp = torch.load(os.path.join(checkpoint_path, "hyperparameter.pt"))
    assert (hyp["g_in_chans"], hyp["g_out_chans"], hyp["d_in_chans"], hyp["d_out_chans"]) == (1024, 3, 64, 1)
    assert os.path.isfile(os.path.join(course_training["workdir"], "results", "epoch_0.png"))
    print(f"course main.py, one step: {course_training['seconds']:.1f} s")


def test_course_load_checkpoint_takes_the_models_as_graders_build_them(course_training):
    from network import Discriminator, Generator

    load_checkpoint = load_plain_module("train_utils").load_checkpoint
    checkpoint_path = os.path.join(course_training["workdir"], "checkpoints")
    h = torch.load(os.path.join(checkpoint_path, "hyperparameter.pt"))
    G = Generator(h['clip_embedding_dim'], h['projection_dim'], h['noise_dim'], h['g_in_chans'], h['g_out_chans'],
                  h['num_stage'], "cpu")
    D_list = [Discriminator(h['projection_dim'], h['g_out_chans'], h['d_in_chans'], h['d_out_chans'],
                            h['clip_embedding_dim'], stage, "cpu") for stage in range(h['num_stage'])]
    load_checkpoint(G, D_list, checkpoint_path, 0)  # strict load_state_dict: raises on any mismatch


def test_course_generate_image_writes_three_sizes(course_training, tiny_clip_path):
    import PIL.Image

    workdir = course_training["workdir"]
    _, seconds = run_ok(workdir, "generate_image.py", ["--prompt", PROMPT, "--load_epoch", "0",
                                                       "--checkpoint_path", "checkpoints", "--show_hyp"],
                        tiny_clip_path)
    for size in (64, 128, 256):
        with PIL.Image.open(os.path.join(workdir, f"result_{size}.png")) as image:
            assert image.size == (size, size)
    print(f"course generate_image.py: {seconds:.1f} s")


def test_course_read_dataset_reads_our_zip(preprocessed_zips):
    read_dataset = load_plain_module("read_dataset")
    dataset = read_dataset.ZipDataset(preprocessed_zips["train"], 3)
    with zipfile.ZipFile(preprocessed_zips["train"]) as archive:
        meta = json.loads(archive.read("dataset.json"))
    assert len(dataset) == len(meta["clip_img_features"]) == 22
    images, img_embedding, txt_embedding = dataset[0]
    assert [tuple(image.shape) for image in images] == [(3, 64, 64), (3, 128, 128), (3, 256, 256)]
    assert all(image.dtype == torch.float32 and -1 <= image.min() and image.max() <= 1 for image in images)
    assert img_embedding.shape == txt_embedding.shape == (512,)
    assert torch.allclose(img_embedding.norm(), torch.tensor(1.0)) and torch.allclose(txt_embedding.norm(),
                                                                                       torch.tensor(1.0))
    captions = torch.tensor(dict(meta["clip_txt_features"])[meta["clip_img_features"][0][0]])
    captions = captions / captions.norm(dim=-1, keepdim=True)
    assert torch.isclose(captions @ txt_embedding, torch.tensor(1.0)).any()


def test_course_train_utils_helpers():
    train_utils = load_plain_module("train_utils")
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    assert train_utils.custom_reshape(images).shape == (2, 3, 224, 224)
    padded = train_utils.custom_reshape(torch.zeros(2, 3, 64, 64))
    assert padded.shape == (2, 3, 224, 224) and padded.sum() == 2 * 3 * (224 * 224 - 64 * 64)
    assert train_utils.clip_transform(224)(images).shape == (2, 3, 224, 224)
    assert train_utils.KL_divergence(torch.zeros(4, 8), torch.zeros(4, 8)) == 0
    assert train_utils.gather_all({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}) == 3


def run_in_harness(tmp_path, tiny_clip_path, device):
    """In a fresh harness workdir: which files the course's module names resolve to, and what the shim's
    `clip.load` gives (dtypes, encoder outputs)."""
    workdir = harness.prepare_workdir(str(tmp_path), os.path.join(ROOT, "network.py"), os.path.join(ROOT, "train.py"))
    (tmp_path / "check.py").write_text(textwrap.dedent(f"""\
        import json
        import os
        import sys

        import clip
        import torch

        import dataloader, fix_seed, network, read_dataset, train, train_utils

        modules = (dataloader, fix_seed, network, read_dataset, train, train_utils)
        model, preprocess = clip.load("ViT-L/14", "{device}")
        with torch.no_grad():
            text = model.encode_text(clip.tokenize(["a face"]).to("{device}"))
            image = model.encode_image(torch.zeros(1, 3, 224, 224, device="{device}", dtype=model.dtype))
        print(json.dumps({{
            "folders": sorted({{os.path.dirname(m.__file__) for m in modules}}),
            "stand_in_left": "pkg_resources" in sys.modules and not hasattr(sys.modules["pkg_resources"],
                                                                            "resource_filename"),
            "dtypes": [str(t.dtype) for t in (model.visual.conv1.weight, model.ln_final.weight,
                                              model.text_projection, text)],
            "shapes": [list(text.shape), list(image.shape)],
            "training": model.training,
        }}))
        """))
    result = harness.run_course_script(workdir, "check.py", [], clip_standin=tiny_clip_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["folders"] == [workdir], "the plain course files must shadow the package's"
    assert not report["stand_in_left"] and not report["training"]
    assert report["shapes"] == [[1, 512], [1, 512]]
    return report["dtypes"]


def test_harness_runs_plain_files_and_fp32_standin_clip_on_cpu(tmp_path, tiny_clip_path):
    assert run_in_harness(tmp_path, tiny_clip_path, "cpu") == ["torch.float32"] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_shim_standin_clip_has_openai_half_layout_on_cuda(tmp_path, tiny_clip_path):
    # conv1, ln_final, text_projection, encode_text output: openai-clip's convert_weights layout
    assert run_in_harness(tmp_path, tiny_clip_path, "cuda") == ["torch.float16", "torch.float32", "torch.float16",
                                                                "torch.float16"]
