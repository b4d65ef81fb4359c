"""Issue 19, never silently wrong: non-finite steps, mismatched CLIPs, degenerate metric figures, damaged
download caches and whole pickled models. Each test reproduces one reported case (its number in the test name)."""
import copy
import json
import os

import pytest
import torch
from conftest import preprocess as run_preprocessing
from reliability_helpers import (copy_folder, make_checkpoint, one_line_exit, poison, train_argv, tree,
                                 write_mid_epoch_snapshot, write_run_record)

import check_submission
import evaluate
import generate_image
import main
import train
from t2i import clip_utils
from t2i.errors import T2IError
from t2i.evaluation import evaluator as evaluation
from t2i.evaluation import metrics
from t2i.training import options

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ------------------------------------------------------------------ 1: a non-finite step changes nothing

def step_setup(*flags: str):
    """One-batch train_step calls with the models, optimizers and run train() builds (EMA on, 1 stage, no CLIP)."""
    args = options.complete(options.parse(["--num_stage", "1", "--projection_dim", "8", "--noise_dim", "8",
                                           "--g_in_chans", "32", "--d_in_chans", "4", "--use_uncond_loss",
                                           "--use_contrastive_loss", "--lam", "0", "--device", "cpu", "--ema",
                                           *flags], "test"))
    G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(torch.device("cpu"))
    run = train.run_helpers(args, torch.device("cpu"), G, D_lst, optim_g, optim_d_lst)

    def step(images, img_feature, txt_feature):
        return train.train_step([(images, img_feature, txt_feature)], 8, torch.device("cpu"), G, D_lst, optim_g,
                                optim_d_lst, torch.nn.BCEWithLogitsLoss(), 1, True, True, 10 ** 9, None, args.gamma,
                                args.lam, **run._asdict())

    def state() -> dict:
        """Everything a step can change: weights, BatchNorm statistics, Adam moments and steps, the EMA, the
        gradient scalers, the update count."""
        return copy.deepcopy({"G": G.state_dict(), "D": [D.state_dict() for D in D_lst],
                              "optim_g": optim_g.state_dict(), "optim_d": [o.state_dict() for o in optim_d_lst],
                              "ema": run.ema.model.state_dict(), "precision": run.step.precision.state_dict(),
                              "num_updates": run.step.num_updates})
    return step, state, run


def a_batch(seed: int = 0, nan_caption: bool = False):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1]
    text = torch.nn.functional.normalize(torch.randn(4, 512, generator=generator), dim=-1)
    if nan_caption:
        text = text.clone()
        text[2] = float("nan")  # one caption embedding of the batch is NaN
    return images, text, text


def assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), f"{where} changed"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys changed"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length changed"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, f"{where}: {a} != {b}"


@pytest.mark.parametrize("first_step", [False, True])
def test_1_a_nan_caption_step_changes_no_state_at_all(first_step, capsys):
    step, state, run = step_setup()
    torch.manual_seed(0)
    if not first_step:
        step(*a_batch(0))  # Adam moments, BatchNorm statistics and the EMA exist and have moved
    before = state()
    step(*a_batch(1, nan_caption=True))
    captured = capsys.readouterr()
    assert run.step.skipped == 1 and "the step was skipped and changed nothing" in captured.out + captured.err
    assert_same(before, state())
    d_loss, g_loss, _ = step(*a_batch(2))  # and training goes on
    assert torch.isfinite(torch.tensor([d_loss, g_loss])).all()


def test_1_a_step_whose_generator_loss_alone_is_not_finite_undoes_the_discriminator_update(monkeypatch):
    """The discriminators step before the generator's loss is known: their weights, Adam moments and BatchNorm
    statistics must go back too."""
    step, state, run = step_setup()
    torch.manual_seed(0)
    step(*a_batch(0))
    before = state()
    real_kl = train.KL_divergence
    monkeypatch.setattr(train, "KL_divergence", lambda mu, log_sigma: real_kl(mu, log_sigma) * float("nan"))
    step(*a_batch(1))
    assert run.step.skipped == 1
    assert_same(before, state())


def test_1_nothing_non_finite_is_ever_written(tmp_path):
    step, state, run = step_setup()
    torch.manual_seed(0)
    step(*a_batch(0))
    with torch.no_grad():
        next(run.state.D_list[0].parameters()).view(-1)[0] = float("inf")
    for with_weights in (True, False):  # a mid-epoch snapshot, and an epoch's state (optimizer moments)
        path = tmp_path / f"state_{with_weights}.pt"
        if not with_weights:
            with torch.no_grad():
                next(run.state.D_list[0].parameters()).view(-1)[0] = 0.0
            next(iter(run.state.optim_d_list[0].state.values()))["exp_avg"].view(-1)[0] = float("nan")
        with pytest.raises(T2IError, match=f"{path}: not written, 1 tensors hold NaN or Inf .*training stopped"):
            run.state.save(str(path), 0, 1, with_weights=with_weights)
        assert os.listdir(tmp_path) == []
    with torch.no_grad():
        next(run.ema.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(T2IError, match="epoch 0: the generator holds NaN or Inf .* so the epoch was not saved"):
        run.state.save_epoch(0)


@pytest.fixture(scope="module")
def two_epochs(preprocessed_zips, tiny_clip_path, tmp_path_factory) -> dict:
    """A finished 2-epoch run made with the tiny CLIP (A): {'ckpt', 'results'}."""
    base = tmp_path_factory.mktemp("two_epochs")
    main.main(train_argv(preprocessed_zips["train"], base / "ck", base / "res", tiny_clip_path, 2))
    return {"ckpt": str(base / "ck"), "results": str(base / "res")}


@pytest.mark.parametrize("bad_file", ["epoch_1_Gen.pt", "epoch_1_Dis_0.pt", "epoch_1_state.pt", "mid_epoch_state.pt"])
def test_1_resume_refuses_non_finite_files_naming_the_last_clean_epoch(two_epochs, preprocessed_zips,
                                                                      tiny_clip_path, tmp_path, capsys, bad_file):
    ckpt = copy_folder(two_epochs["ckpt"], tmp_path / "ck")
    if bad_file == "mid_epoch_state.pt":
        write_mid_epoch_snapshot(ckpt, 1, 2, 2)
    poison(os.path.join(ckpt, bad_file))
    before = tree(ckpt)
    argv = train_argv(preprocessed_zips["train"], ckpt, tmp_path / "res", tiny_clip_path, 4,
                      "--resume_checkpoint_path", ckpt, "--resume_epoch", "latest")
    with pytest.raises(SystemExit) as exit_:
        main.main(argv)
    # The course's load_checkpoint prints its error itself (train_utils.error): the line is on stderr then.
    line = str(exit_.value.code) if exit_.value.code != 1 else capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {os.path.join(ckpt, bad_file)}: ") and "hold NaN or Inf" in line, line
    clean = 1 if bad_file == "mid_epoch_state.pt" else 0  # the snapshot came after epoch 1, which is clean
    assert f"the newest clean epoch is {clean} in {ckpt}" in line
    assert tree(ckpt) == before


def poisoned_checkpoint(tmp_path, num_stage: int = 1) -> str:
    """Epochs 0 and 1 of tiny models, epoch 1's generator holding a NaN."""
    folder = make_checkpoint(tmp_path / "ck", num_stage, epochs=(0, 1))
    poison(os.path.join(folder, "epoch_1_Gen.pt"))
    return folder


def test_1_generation_and_evaluation_refuse_non_finite_weights_naming_the_last_clean_epoch(tmp_path,
                                                                                         tiny_clip_path):
    folder = poisoned_checkpoint(tmp_path)
    expected = f"{folder}/epoch_1_Gen.pt: 1 tensors hold NaN or Inf"
    clean = f"the newest clean epoch is 0 in {folder}"
    message = one_line_exit(generate_image.main, ["--prompt", "a face", "--load_epoch", "1", "--checkpoint_path",
                                                  folder, "--clip_model", tiny_clip_path, "--out_dir",
                                                  str(tmp_path / "out")])
    assert message.startswith(expected) and clean in message
    assert not (tmp_path / "out").exists()
    message = one_line_exit(evaluate.main, ["--checkpoint_path", folder, "--load_epoch", "1", "--test_data",
                                            "test.zip", "--device", "cpu", "--quiet"])
    assert message.startswith(expected) and clean in message


def test_1_check_submission_refuses_non_finite_weights_naming_the_last_clean_epoch(tmp_path, tiny_clip_path, capsys):
    folder = poisoned_checkpoint(tmp_path, num_stage=3)
    status = check_submission.main(["--checkpoint_path", folder, "--epoch", "1", "--clip_model", tiny_clip_path,
                                    "--out_dir", str(tmp_path / "images"), "--device", "cpu"])
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("PROBLEM")]
    assert status == 1 and len(problems) == 1
    assert "epoch_1_Gen.pt: 1 tensors hold NaN or Inf" in problems[0]
    assert f"the newest clean epoch is 0 in {folder}: submit that one" in problems[0]


def test_1_the_stop_after_bad_steps_names_an_epoch_whose_files_are_all_clean(two_epochs, preprocessed_zips,
                                                                            tiny_clip_path, tmp_path, monkeypatch):
    """Resumed from folder A into B: B has no epoch yet; in A, epoch 1's optimizer state holds NaN (its weights are
    clean), so the last good checkpoint is epoch 0 of A."""
    source = copy_folder(two_epochs["ckpt"], tmp_path / "A")
    poison(os.path.join(source, "epoch_1_state.pt"), "trainer")
    monkeypatch.setattr(train, "KL_divergence", lambda mu, log_sigma: torch.tensor(float("inf")))
    message = one_line_exit(main.main, train_argv(preprocessed_zips["train"], tmp_path / "B", tmp_path / "res",
                                                  tiny_clip_path, 3, "--resume_checkpoint_path", source,
                                                  "--resume_epoch", "0", "--max_bad_steps", "2"))
    assert "2 non-finite losses in a row at epoch 1" in message
    assert f"Last clean checkpoint: epoch 0 in {source}." in message
    assert "--no-amp" not in message  # fp32 on the CPU: no advice that does not apply
    assert "lower --learning_rate than 0.0002" in message


# ------------------------------------------------------------------ 2: every artefact checks its CLIP

@pytest.fixture(scope="module")
def clip_b(tmp_path_factory) -> str:
    """A second random CLIP of the same width as the tiny one (A): same shapes, other weights."""
    return clip_utils.make_random_clip(str(tmp_path_factory.mktemp("clip_b") / "clip_b.pt"), "tiny", 512, seed=1)


@pytest.fixture(scope="module")
def zip_b(synthetic_raw, clip_b, tmp_path_factory) -> str:
    """The synthetic test split preprocessed with CLIP B (6 images)."""
    path = str(tmp_path_factory.mktemp("zip_b") / "test_b.zip")
    run_preprocessing(["--source", synthetic_raw["paths"]["source"], "--dest", path, "--clip_model", clip_b,
                       "--device", "cpu", "--num_workers", "1"], "test")
    return path


def identity(clip_path: str) -> dict:
    return clip_utils.clip_identity_of(clip_utils.load_clip(clip_path))


def test_2_every_artefact_records_its_clip(preprocessed_zips, zip_b, clip_b, tiny_clip_path, two_epochs):
    from t2i.data.zip_dataset import ZipDataset

    a, b = identity(tiny_clip_path), identity(clip_b)
    assert a["fingerprint"] != b["fingerprint"] and a["embedding_dim"] == b["embedding_dim"] == 512
    assert ZipDataset(preprocessed_zips["train"], 1, progress=False).settings["clip"] == a
    assert ZipDataset(zip_b, 1, progress=False).settings["clip"] == b
    with open(os.path.join(two_epochs["ckpt"], "run_options.json")) as f:
        assert json.load(f)["clip"] == a


@pytest.mark.parametrize("case", ["clip_model", "eval_data", "resume"])
def test_2_training_refuses_a_clip_other_than_the_datas(preprocessed_zips, zip_b, clip_b, tiny_clip_path, two_epochs,
                                                       tmp_path, case):
    ckpt, results = tmp_path / "ck", tmp_path / "res"
    if case == "clip_model":  # the train zip (A) against --clip_model B
        argv = train_argv(preprocessed_zips["train"], ckpt, results, clip_b, 1)
        expected = f"--train_data {preprocessed_zips['train']} was made with CLIP tiny_clip.pt"
    elif case == "eval_data":  # the test zip (B) against the train zip (A), CLIP not even loaded
        argv = [flag for flag in train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 1,
                                            "--eval_every", "1", "--eval_data", zip_b)
                if flag != "--use_contrastive_loss"]
        expected = f"--eval_data {zip_b} was made with CLIP clip_b.pt"
    else:  # checkpoints trained on A's embeddings, resumed on a zip of B's
        ckpt = copy_folder(two_epochs["ckpt"], ckpt)
        argv = train_argv(zip_b, ckpt, results, clip_b, 4, "--resume_checkpoint_path", ckpt, "--resume_epoch",
                          "latest")
        expected = f"the checkpoint folder {ckpt} was made with CLIP tiny_clip.pt"
    before = tree(tmp_path)
    message = one_line_exit(main.main, argv)
    assert message.startswith(expected) and "--allow_clip_mismatch" in message
    assert tree(tmp_path) == before


def test_2_generation_checks_the_checkpoints_clip_unless_allowed(tmp_path, tiny_clip_path, clip_b):
    folder = make_checkpoint(tmp_path / "ck", 1)
    write_run_record(folder, identity(tiny_clip_path))
    argv = ["--prompt", "a face", "--load_epoch", "0", "--checkpoint_path", folder, "--clip_model", clip_b,
            "--out_dir", str(tmp_path / "out")]
    message = one_line_exit(generate_image.main, argv)
    assert message.startswith(f"the checkpoint in {folder} was made with CLIP tiny_clip.pt") and "clip_b.pt" in message
    generate_image.main(argv + ["--allow_clip_mismatch"])
    assert os.listdir(tmp_path / "out") == ["result_64.png"]


@pytest.mark.parametrize("case", ["test_zip", "clip_model"])
def test_2_evaluation_checks_the_test_zip_and_clip_against_the_checkpoint(tmp_path, tiny_clip_path, clip_b, zip_b,
                                                                         preprocessed_zips, case):
    folder = make_checkpoint(tmp_path / "ck", 1)
    write_run_record(folder, identity(tiny_clip_path))
    argv = ["--checkpoint_path", folder, "--load_epoch", "0", "--device", "cpu", "--quiet"]
    if case == "test_zip":
        argv += ["--test_data", zip_b, "--clip_model", clip_b]
        expected = f"the checkpoint in {folder} was made with CLIP tiny_clip.pt"
    else:
        argv += ["--test_data", preprocessed_zips["test"], "--clip_model", clip_b]
        expected = f"--test_data {preprocessed_zips['test']} was made with CLIP tiny_clip.pt"
    message = one_line_exit(evaluate.main, argv)
    assert message.startswith(expected) and "clip_b.pt" in message and "--allow_clip_mismatch" in message


def test_2_check_submission_checks_the_checkpoints_clip_unless_allowed(tmp_path, tiny_clip_path, clip_b, capsys):
    folder = make_checkpoint(tmp_path / "ck", 3)
    write_run_record(folder, identity(tiny_clip_path))
    argv = ["--checkpoint_path", folder, "--epoch", "0", "--clip_model", clip_b, "--out_dir", str(tmp_path / "img"),
            "--num_images", "1", "--device", "cpu"]
    assert check_submission.main(argv) == 1
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and f"the checkpoint in {folder} was made with CLIP tiny_clip.pt" in problems[0]
    assert check_submission.main(argv + ["--allow_clip_mismatch"]) == 0


# ------------------------------------------------------------ 3: figures with their sample size and caveats

def random_features(count: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {metrics.FID_LAYER: torch.randn(count, 2048, generator=generator),
            metrics.IS_LAYER: torch.randn(count, 1008, generator=generator)}


def test_3_kid_spread_of_identical_subsets_is_not_reported_as_a_measurement():
    figures = metrics.fidelity_metrics(random_features(10, 0), random_features(10, 1))
    assert figures["kid_std"] is None and figures["kid_subset_size"] == 10
    mean, spread, _ = metrics.kernel_distance(random_features(10, 0), random_features(10, 1))
    assert spread < 1e-6 * max(1.0, abs(mean))  # 0 by construction, up to rounding in the subsets' order
    assert any("KID's spread is not measured" in caveat for caveat in figures["caveats"])
    assert any("FID from 10 generated and 10 real images (under 2048" in caveat for caveat in figures["caveats"])
    line = evaluation.summary_line({**figures, "clip_score": None, "num_samples": 10})
    assert "KID" in line and "± n/a" in line and "spread not measured" in line
    assert "FID" in line and "10 vs 10 images; biased below 2048" in line
    assert "IS" in line and "10 images, 10 splits" in line
    # One larger set: its subsets differ, so the spread is measured.
    assert metrics.fidelity_metrics(random_features(10, 0), random_features(14, 1))["kid_std"] > 0


def test_3_the_report_holds_every_figure_with_its_size_caveats_and_clips(tmp_path, tiny_clip_path, preprocessed_zips,
                                                                        inception_path, capsys):
    folder = make_checkpoint(tmp_path / "ck", 1)
    write_run_record(folder, identity(tiny_clip_path))
    out = tmp_path / "report.json"
    evaluate.main(["--checkpoint_path", folder, "--load_epoch", "0", "--test_data", preprocessed_zips["train"],
                   "--clip_model", tiny_clip_path, "--inception_weights", inception_path, "--device", "cpu",
                   "--quiet", "--out", str(out), "--num_samples", "10"])
    report = json.loads(out.read_text())
    assert report["kid_std"] is None and report["fid_num_generated"] == 10 and report["fid_num_real"] == 10
    assert report["is_splits"] == 10 and report["is_split_size"] == 1 and len(report["caveats"]) == 2
    assert report["clip"] == identity(tiny_clip_path) == report["test_data_clip"] == report["checkpoint_clip"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line for line in lines if line.startswith("note: ")] == [f"note: {c}" for c in report["caveats"]]


def test_3_too_few_test_images_says_what_to_do(tmp_path, preprocessed_zips, tiny_clip_path):
    from test_evaluate import smooth_images, write_test_zip

    dataset = evaluation.load_test_dataset(write_test_zip(tmp_path / "five.zip", smooth_images(5, 0, 64), 512),
                                           512, progress=False)
    with pytest.raises(T2IError, match="needs at least 10; preprocess at least 10 test images"):
        evaluation.Evaluator(dataset, progress=False)
    test_set = evaluation.load_test_dataset(preprocessed_zips["train"], 512, progress=False)  # 22 images
    with pytest.raises(T2IError, match=r"--eval_samples 5: IS uses 10 splits, .* pass --eval_samples 10 or more"):
        evaluation.Evaluator(test_set, num_samples=5, progress=False, samples_flag="--eval_samples")


# ---------------------------------------------------------------- 4: damaged download caches are named

@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_4_a_damaged_inception_cache_names_the_file_and_the_fix(tmp_path, monkeypatch, inception_path, damage):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = metrics.cached_inception_path()
    assert cached.startswith(str(tmp_path / "torch"))
    os.makedirs(os.path.dirname(cached))
    if damage == "empty":
        open(cached, "wb").close()
    else:
        data = open(inception_path, "rb").read()
        open(cached, "wb").write(data[:len(data) // 3])
    with pytest.raises(T2IError) as error:
        metrics.load_inception(None, "cpu")
    message = str(error.value)
    assert message.startswith(f"{cached}: torch.hub's cached copy of the Inception weights is {damage}")
    assert "delete the file and run again: it is downloaded again" in message and "\n" not in message


def test_4_a_damaged_inception_cache_stops_eval_every_before_anything_is_written(preprocessed_zips, tiny_clip_path,
                                                                                tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = metrics.cached_inception_path()
    os.makedirs(os.path.dirname(cached))
    open(cached, "wb").close()
    message = one_line_exit(main.main, train_argv(preprocessed_zips["train"], tmp_path / "ck", tmp_path / "res",
                                                  tiny_clip_path, 1, "--eval_every", "1", "--eval_data",
                                                  preprocessed_zips["train"], "--eval_samples", "10"))
    assert message.startswith(f"{cached}: torch.hub's cached copy of the Inception weights is empty")
    assert not (tmp_path / "ck").exists() and not (tmp_path / "res").exists()


def test_4_a_damaged_clip_download_names_the_cached_file(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda *args, **kwargs: (_ for _ in ()).throw(urllib.error.URLError("no network")))
    cached = clip_utils.clip_cache_path("ViT-B/32")
    assert cached.startswith(str(tmp_path))
    os.makedirs(os.path.dirname(cached))
    open(cached, "wb").write(b"the first megabyte of an interrupted download")
    with pytest.raises(T2IError) as error:
        clip_utils.load_clip("ViT-B/32")
    message = str(error.value)
    assert message.startswith(f"{cached}: the cached CLIP ViT-B/32 is damaged") and "delete it" in message
    assert "\n" not in message


# ----------------------------------------------------------------- 5: an intact whole-model file is named

def test_5_a_generator_saved_whole_is_named_not_called_damaged(tmp_path, tiny_clip_path, capsys):
    from network import Generator

    folder = make_checkpoint(tmp_path / "ck", 3)
    torch.save(Generator(512, 8, 8, 64, 3, 3, "cpu"), os.path.join(folder, "epoch_0_Gen.pt"))
    message = one_line_exit(generate_image.main, ["--prompt", "a face", "--load_epoch", "0", "--checkpoint_path",
                                                  folder, "--clip_model", tiny_clip_path, "--out_dir",
                                                  str(tmp_path / "out")])
    assert "epoch_0_Gen.pt: holds a whole pickled object" in message and "state_dict()" in message
    assert "damaged" not in message and "truncated" not in message
    status = check_submission.main(["--checkpoint_path", folder, "--epoch", "0", "--clip_model", tiny_clip_path,
                                    "--out_dir", str(tmp_path / "images"), "--device", "cpu"])
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("PROBLEM")]
    assert status == 1 and len(problems) == 1 and "holds a whole pickled object" in problems[0]
