"""Our network.py and train.py under the course's plain files (t2i/course_harness), as the graders run them.

The course's main.py can only pass the course's flags, so the models are the full-size Ng 1024 / Nd 64 ones:
one training step of them takes 15-20 s on 2 CPU cores, so training runs on a 2-image copy of the synthetic
train zip (one step of batch 2).
"""
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


def course_argv(train_data, checkpoint_path, result_path, epochs=1):
    """The notebook's command, except a batch of 2 and `epochs` epochs."""
    return ["--train_data", train_data, "--batch_size", "2", "--num_epochs", str(epochs), "--learning_rate", "2e-4",
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


def run_ok(workdir, script, argv, clip_standin, timeout=300):
    started = time.time()
    result = harness.run_course_script(str(workdir), script, argv, clip_standin=clip_standin, timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result, time.time() - started


@pytest.fixture(scope="module")
def course_training(preprocessed_zips, tiny_clip_path, tmp_path_factory):
    """The course's main.py trains our train.py/network.py for one epoch, then resumes it for a second one; the
    workdir, the two runs' output and the first run's timing."""
    workdir = harness.prepare_workdir(str(tmp_path_factory.mktemp("course_run")), os.path.join(ROOT, "network.py"),
                                      os.path.join(ROOT, "train.py"))
    train_data = subset_zip(preprocessed_zips["train"], os.path.join(workdir, "train_2.zip"), 2)
    first, seconds = run_ok(workdir, "main.py", course_argv(train_data, "checkpoints", "results"), tiny_clip_path)
    resumed, _ = run_ok(workdir, "main.py", course_argv(train_data, "checkpoints", "results", epochs=2)
                        + ["--resume_checkpoint_path", "checkpoints", "--resume_epoch", "0"], tiny_clip_path)
    yield {"workdir": workdir, "seconds": seconds, "first": first.stdout, "resumed": resumed.stdout}
    shutil.rmtree(os.path.join(workdir, "checkpoints"))  # about 1.6 GB with the resume state


@pytest.fixture(scope="module")
def course_defaults_training(preprocessed_zips, tiny_clip_path, tmp_path_factory):
    """The course's main.py at its own defaults (1 stage, no optional loss) for one epoch, then resumed."""
    workdir = harness.prepare_workdir(str(tmp_path_factory.mktemp("course_defaults")),
                                      os.path.join(ROOT, "network.py"), os.path.join(ROOT, "train.py"))
    subset_zip(preprocessed_zips["train"], os.path.join(workdir, "sample_train.zip"), 2)  # the default --train_data
    first, _ = run_ok(workdir, "main.py", ["--num_epochs", "1"], tiny_clip_path)
    resumed, _ = run_ok(workdir, "main.py", ["--num_epochs", "2", "--resume_checkpoint_path", "model_exp1",
                                             "--resume_epoch", "0"], tiny_clip_path)
    return {"workdir": workdir, "first": first.stdout, "resumed": resumed.stdout}


def test_course_main_trains_our_train_py(course_training):
    checkpoint_path = os.path.join(course_training["workdir"], "checkpoints")
    files = set(os.listdir(checkpoint_path))
    assert {"hyperparameter.pt", "epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_0_Dis_1.pt", "epoch_0_Dis_2.pt"} <= files
    hyp = torch.load(os.path.join(checkpoint_path, "hyperparameter.pt"))
    assert (hyp["g_in_chans"], hyp["g_out_chans"], hyp["d_in_chans"], hyp["d_out_chans"]) == (1024, 3, 64, 1)
    assert os.path.isfile(os.path.join(course_training["workdir"], "results", "epoch_0.png"))
    print(f"course main.py, one step: {course_training['seconds']:.1f} s")


def test_course_main_resumes_our_train_py_after_the_given_epoch(course_training):
    checkpoint_path = os.path.join(course_training["workdir"], "checkpoints")
    assert {"epoch_1_Gen.pt", "epoch_1_Dis_0.pt", "epoch_1_Dis_1.pt", "epoch_1_Dis_2.pt"} <= set(os.listdir(
        checkpoint_path))
    assert "Epoch: 1 start" in course_training["resumed"] and "Epoch: 0 start" not in course_training["resumed"]
    # The course's main.py passes PosixPath objects: a resume compares them with run_options.json's strings.
    assert "Changed since the resumed run" not in course_training["resumed"]


def test_course_main_at_its_own_defaults_trains_the_guideline_and_records_every_option(course_defaults_training):
    from t2i.training import options

    workdir = course_defaults_training["workdir"]
    files = set(os.listdir(os.path.join(workdir, "model_exp1")))
    assert {"hyperparameter.pt", "epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_1_Gen.pt", "epoch_1_Dis_0.pt"} <= files
    assert not any(name.startswith("epoch_0_Dis_1") for name in files)
    assert os.path.isfile(os.path.join(workdir, "images_exp1", "epoch_1.png"))
    hyp = torch.load(os.path.join(workdir, "model_exp1", "hyperparameter.pt"))
    assert (hyp["num_stage"], hyp["batch_size"], hyp["use_uncond_loss"], hyp["use_contrastive_loss"]) == (
        1, 64, False, False)
    with open(os.path.join(workdir, "model_exp1", "run_options.json")) as f:
        recorded = json.load(f)["options"]
    assert set(recorded) == {option.name for option in options.OPTIONS}
    guideline = {"recipe": "guideline", "ema": False, "mismatch": False, "ca_init_std": None, "lam": 10.0,
                 "beta": 1.0, "gamma": 5.0, "tau": 0.5, "detach_condition": False, "diffaugment": "",
                 "language_free": False, "clip_loss_any_size": False, "g_lr": None, "d_lr": None, "arch": "stackgan",
                 "train_data": "sample_train.zip", "checkpoint_path": "model_exp1", "result_path": "images_exp1"}
    assert {name: recorded[name] for name in guideline} == guideline
    assert "Changed since the resumed run" not in course_defaults_training["resumed"]


def test_course_load_checkpoint_takes_the_models_as_graders_build_them(course_training):
    from network import Discriminator, Generator

    load_checkpoint = harness.load_course_module("train_utils").load_checkpoint
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
    import PIL.Image

    PIL.Image.init()  # the course's index needs PIL's plugins registered (tests/test_graders_files.py)
    read_dataset = harness.load_course_module("read_dataset")
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
