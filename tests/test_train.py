"""Training end to end on a tiny synthetic zip: the contract's files, exact resume, safe saves, guards."""
import argparse
import math
import os

import pytest
import torch

import main
import network
import train
from models import NETWORKS
from t2i import checkpoints, clip_utils
from t2i.files import atomic_save
from t2i.training import options
from t2i.training.nonfinite import StepGuard


def train_argv(data, checkpoint_path, result_path, clip_path, epochs, *extra, stages=1):
    return ["--train_data", data, "--batch_size", "4", "--num_epochs", str(epochs), "--learning_rate", "2e-4",
            "--report_interval", "2", "--noise_dim", "8", "--projection_dim", "8", "--clip_embedding_dim", "512",
            "--checkpoint_path", str(checkpoint_path), "--result_path", str(result_path), "--num_stage", str(stages),
            "--resume_epoch", "-1", "--use_uncond_loss", "--use_contrastive_loss", "--clip_model", clip_path,
            "--g_in_chans", "64", "--d_in_chans", "4", "--device", "cpu", *extra]


@pytest.fixture
def run(preprocessed_zips, tiny_clip_path, tmp_path):
    """run(name, epochs, *extra_flags) trains into tmp_path/name and returns its checkpoint folder."""
    def _run(name, epochs, *extra, stages=1):
        checkpoint_path = tmp_path / name / "checkpoints"
        main.main(train_argv(preprocessed_zips["train"], checkpoint_path, tmp_path / name / "results",
                             tiny_clip_path, epochs, *extra, stages=stages))
        return checkpoint_path
    return _run


def tensors(path):
    return torch.load(path, weights_only=True)


def assert_same_files(folder_a, folder_b, names):
    for name in names:
        a, b = tensors(folder_a / name), tensors(folder_b / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs"


def epoch_files(epoch, stages=1):
    return [f"epoch_{epoch}_Gen.pt"] + [f"epoch_{epoch}_Dis_{s}.pt" for s in range(stages)]


def test_one_epoch_writes_exactly_the_contract_files(run, tmp_path):
    checkpoint_path = run("one", 1, stages=3)
    written = set(os.listdir(checkpoint_path))
    assert set(epoch_files(0, 3)) | {"hyperparameter.pt"} <= written
    assert written - set(epoch_files(0, 3)) - {"hyperparameter.pt"} == {"epoch_0_state.pt", "loss_log.csv",
                                                                           "run_options.json", "tensorboard"}
    hyp = tensors(checkpoint_path / "hyperparameter.pt")
    assert hyp == {"clip_embedding_dim": 512, "projection_dim": 8, "noise_dim": 8, "num_stage": 3,
                   "use_uncond_loss": True, "use_contrastive_loss": True, "batch_size": 4, "num_epochs": 1,
                   "learning_rate": 2e-4, "g_in_chans": 64, "g_out_chans": 3, "d_in_chans": 4, "d_out_chans": 1}
    assert sorted(os.listdir(tmp_path / "one" / "results")) == ["epoch_0.png", "loss_curve.png"]
    G = checkpoints.build_generator(hyp, "cpu", network)
    G.load_state_dict(tensors(checkpoint_path / "epoch_0_Gen.pt"))
    for stage in range(3):
        checkpoints.build_discriminator(hyp, stage, "cpu", network).load_state_dict(
            tensors(checkpoint_path / f"epoch_0_Dis_{stage}.pt"))
    log = (checkpoint_path / "loss_log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert header[:9] == ["epoch", "step", "seconds", "d_loss", "g_loss", "fid", "kid_mean", "is_mean", "clip_score"]
    for stage in range(3):  # every component, by name and stage, with the skeleton's keys
        assert {f"D/d_loss_real_cond_{stage}", f"D/d_loss_fake_cond_contrastive_{stage}",
                f"G/g_loss_cond_{stage}", f"G/d_loss_cond_contrastive_{stage}"} <= set(header)
    assert "G/g_loss_cond_contrastive_2" in header and "G/g_loss_cond_contrastive_0" not in header  # 256 px only
    assert "G/kl" in header
    assert log[-1].startswith("0,end,")


def test_the_same_command_gives_the_same_checkpoints(run):
    first, second = run("a", 1, stages=2), run("b", 1, stages=2)
    assert_same_files(first, second, epoch_files(0, stages=2))


def test_resume_continues_at_the_next_epoch_and_equals_an_uninterrupted_run(run, preprocessed_zips, tiny_clip_path,
                                                                           tmp_path, capsys):
    # With --ema, so that the resume state also carries the raw generator beside the saved average.
    straight = run("straight", 2, "--ema", stages=2)
    interrupted = run("interrupted", 1, "--ema", stages=2)
    capsys.readouterr()
    argv = train_argv(preprocessed_zips["train"], interrupted, tmp_path / "interrupted" / "results", tiny_clip_path, 2,
                      "--ema", stages=2)
    argv[argv.index("--resume_epoch") + 1] = "0"
    main.main(argv + ["--resume_checkpoint_path", str(interrupted)])
    output = capsys.readouterr()
    assert "Resuming from epoch 0" in output.out and "epoch 1, step 0" in output.out
    assert not (interrupted / "epoch_2_Gen.pt").exists()
    assert_same_files(straight, interrupted, epoch_files(1, stages=2))
    a = tensors(straight / "epoch_1_state.pt")["trainer"]["raw_generator"]
    b = tensors(interrupted / "epoch_1_state.pt")["trainer"]["raw_generator"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_mid_epoch_snapshot_resumes_at_the_right_step(run, preprocessed_zips, tiny_clip_path, tmp_path, monkeypatch,
                                                     capsys):
    straight = run("straight", 2)
    original_save = StepGuard.save
    calls = {"n": 0}

    def dying_save(self):  # Colab disconnects during epoch 1, step 3 (of 6)
        calls["n"] += 1
        if calls["n"] == 6 + 4:
            raise KeyboardInterrupt
        return original_save(self)

    monkeypatch.setattr(StepGuard, "save", dying_save)
    with pytest.raises(SystemExit) as stopped:  # one line and exit status 130, as for Ctrl-C
        run("cut", 2, "--save_every_steps", "2")
    assert stopped.value.code == 130
    monkeypatch.setattr(StepGuard, "save", original_save)
    cut = tmp_path / "cut" / "checkpoints"
    snapshot = checkpoints.read_training_state(str(cut / checkpoints.MID_EPOCH_FILE))
    assert (snapshot["epoch"], snapshot["step"]) == (1, 2)
    capsys.readouterr()
    argv = train_argv(preprocessed_zips["train"], cut, tmp_path / "cut" / "results", tiny_clip_path, 2)
    argv[argv.index("--resume_epoch") + 1] = "latest"
    main.main(argv + ["--resume_checkpoint_path", str(cut), "--save_every_steps", "2"])
    assert "epoch 1, step 2" in capsys.readouterr().out
    assert_same_files(straight, cut, epoch_files(1))
    assert not (cut / checkpoints.MID_EPOCH_FILE).exists()  # superseded by the complete epoch


def test_resume_latest_without_a_checkpoint_folder_starts_afresh(run, tmp_path, capsys):
    """The notebook's first session: --resume_epoch latest names a folder that does not exist yet."""
    folder = run("first", 1, "--resume_checkpoint_path", str(tmp_path / "first" / "checkpoints"),
                 "--resume_epoch", "latest")
    assert "starting from scratch" in capsys.readouterr().out
    assert (folder / "epoch_0_Gen.pt").is_file()


def test_weights_only_checkpoints_still_resume_with_a_warning(run, preprocessed_zips, tiny_clip_path, tmp_path,
                                                             capsys):
    folder = run("course", 1)
    os.remove(folder / "epoch_0_state.pt")  # what the course's own code leaves behind
    argv = train_argv(preprocessed_zips["train"], folder, tmp_path / "course" / "results", tiny_clip_path, 2)
    argv[argv.index("--resume_epoch") + 1] = "latest"
    capsys.readouterr()
    main.main(argv + ["--resume_checkpoint_path", str(folder)])
    assert "no optimizer state" in capsys.readouterr().out
    assert (folder / "epoch_1_Gen.pt").exists()


def test_an_interrupted_save_leaves_the_previous_file_loadable(tmp_path, monkeypatch):
    path = str(tmp_path / "epoch_0_Gen.pt")
    atomic_save({"w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the session is cut in the middle of the write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["epoch_0_Gen.pt"]


def test_keep_last_keeps_the_newest_epochs_and_nothing_else_is_touched(run, tmp_path):
    folder = tmp_path / "keep" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "my_notes.txt").write_text("mine")
    run("keep", 3, "--keep_last", "1")
    assert sorted(os.listdir(folder)) == sorted(epoch_files(2, 1) + ["epoch_2_state.pt", "hyperparameter.pt",
                                                                      "loss_log.csv", "run_options.json",
                                                                      "tensorboard", "my_notes.txt"])


def test_a_non_finite_loss_is_skipped_and_reported(run, monkeypatch, capsys):
    real_kl = train.KL_divergence
    calls = {"n": 0}

    def sometimes_nan(mu, log_sigma):
        calls["n"] += 1
        return real_kl(mu, log_sigma) * (float("nan") if calls["n"] == 2 else 1)

    monkeypatch.setattr(train, "KL_divergence", sometimes_nan)
    folder = run("nan", 1)
    output = capsys.readouterr()
    assert "non-finite generator loss (nan) at epoch 0 step 1" in output.err + output.out
    assert "1 skipped step(s)" in output.out
    G = tensors(folder / "epoch_0_Gen.pt")
    assert all(torch.isfinite(value).all() for value in G.values() if value.is_floating_point())


def test_repeated_non_finite_losses_stop_training_naming_the_last_good_checkpoint(run, monkeypatch):
    folder = run("diverge", 1)
    monkeypatch.setattr(train, "KL_divergence", lambda mu, log_sigma: torch.tensor(float("inf")))
    with pytest.raises(SystemExit, match=f"Last clean checkpoint: epoch 0 in {folder}"):
        run("diverge", 2, "--resume_checkpoint_path", str(folder), "--resume_epoch", "0")


@pytest.mark.parametrize("flags", [["--ema", "--diffaugment", "color,translation,cutout", "--mismatch",
                                    "--g_lr", "1e-4", "--d_lr", "4e-4"], ["--no-ema", "--language_free"],
                                   ["--recipe", "fast", "--clip_loss_any_size"]])
def test_every_option_trains_and_keeps_the_contract(run, flags):
    folder = run("options", 1, *flags, stages=2)
    hyp = checkpoints.read_hyperparameters(str(folder))
    checkpoints.load_generator(str(folder), 0, networks=NETWORKS)
    for stage in range(2):
        checkpoints.build_discriminator(hyp, stage, "cpu", network).load_state_dict(
            tensors(folder / f"epoch_{0}_Dis_{stage}.pt"))


@pytest.mark.parametrize("flags, drawn_std", [([], []), (["--recipe", "fast"], [3.0]),
                                               (["--ca_init_std", "0.5"], [0.5])])
def test_training_draws_the_mu_weights_from_ca_init_std(run, monkeypatch, flags, drawn_std):
    # The guideline keeps weight_init's N(0, 0.02); the fast recipe (or --ca_init_std) re-draws them.
    drawn = []
    original = train.init_conditioning_mu
    monkeypatch.setattr(train, "init_conditioning_mu", lambda G, value: drawn.append(value) or original(G, value))
    run("ca", 1, *flags)
    assert drawn == drawn_std


def step_setup(*flags: str, stages: int = 1):
    """A one-batch train_step with the models, optimizers and run train() would build from these flags."""
    args = options.complete(options.parse(["--num_stage", str(stages), "--projection_dim", "8", "--noise_dim", "8",
                                           "--g_in_chans", "32", "--d_in_chans", "4", "--use_uncond_loss",
                                           "--use_contrastive_loss", "--lam", "0", "--device", "cpu", *flags], "test"))
    G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(torch.device("cpu"))
    run = train.run_helpers(args, torch.device("cpu"), G, D_lst, optim_g, optim_d_lst)

    def step(images, img_feature, txt_feature):
        return train.train_step([(images, img_feature, txt_feature)], 8, torch.device("cpu"), G, D_lst, optim_g,
                                optim_d_lst, torch.nn.BCEWithLogitsLoss(), stages, True, True, 10 ** 9, None,
                                args.gamma, args.lam, tau=args.tau, beta=args.beta, language_free=args.language_free,
                                xi=args.xi, **run._asdict())
    return step, G, D_lst, run


def a_batch(size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(size, 3, 64, 64, generator=generator) * 2 - 1]
    text = torch.nn.functional.normalize(torch.randn(size, 512, generator=generator), dim=-1)
    return images, text, text


@pytest.mark.parametrize("flags, g_step_condition_has_grad", [([], True), (["--detach_condition"], False)])
def test_detach_condition_keeps_g_from_moving_the_condition_d_judges(flags, g_step_condition_has_grad, monkeypatch):
    step, *_ = step_setup("--mismatch", *flags)
    seen = []  # (is this the G step, does the condition carry G's graph) for every heads call
    original = train.Discriminator.heads

    def recording_heads(self, features, condition=None, **kwargs):
        seen.append((not self.global_layer[0].weight.requires_grad, condition.requires_grad))
        return original(self, features, condition, **kwargs)

    monkeypatch.setattr(train.Discriminator, "heads", recording_heads)
    torch.manual_seed(0)
    step(*a_batch())
    assert {grad for g_step, grad in seen if not g_step} == {False}  # D's step always sees a detached mu
    assert {grad for g_step, grad in seen if g_step} == {g_step_condition_has_grad}


def test_language_free_training_feeds_g_lafite_pseudo_text_features(monkeypatch):
    step, G, *_ = step_setup("--language_free", "--xi", "0.1")
    seen = []
    original = train.Generator.forward
    monkeypatch.setattr(train.Generator, "forward",
                        lambda self, text, *rest: seen.append(text.clone()) or original(self, text, *rest))
    images, img_feature, _ = a_batch()
    caption = torch.nn.functional.normalize(torch.randn(4, 512), dim=-1)
    torch.manual_seed(1)
    step(images, img_feature, caption)
    torch.manual_seed(1)  # Problem 4-(f) draws eps first in the iteration
    eps = torch.randn(4, 512)
    expected = torch.nn.functional.normalize(img_feature + 0.1 * eps / eps.norm(dim=-1, keepdim=True), dim=-1)
    torch.testing.assert_close(seen[0], expected)
    cosine = (seen[0] * img_feature).sum(-1)
    torch.testing.assert_close(cosine, torch.full((4,), 1 / math.sqrt(1 + 0.01)), atol=0.02, rtol=0)


def test_train_step_without_a_run_trains_as_the_course_does():
    _, G, D_lst, _ = step_setup(stages=1)
    optim_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optim_d_lst = [torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999)) for D in D_lst]
    before = {key: value.clone() for key, value in G.state_dict().items()}
    d_loss, g_loss, first_text = train.train_step([a_batch(), a_batch(seed=1)], 8, "cpu", G, D_lst, optim_g,
                                                  optim_d_lst, torch.nn.BCEWithLogitsLoss(), 1, True, False, 1, None,
                                                  5.0, 10.0)
    assert math.isfinite(d_loss) and math.isfinite(g_loss)
    torch.testing.assert_close(first_text, a_batch()[2])
    assert any(not torch.equal(before[key], value) for key, value in G.state_dict().items())


def test_train_runs_from_the_course_main_namespace(preprocessed_zips, tmp_path):
    """The course's main.py passes only its own flags; everything else takes its default."""
    args = argparse.Namespace(train_data=preprocessed_zips["train"], batch_size=11, num_epochs=1,
                              learning_rate=2e-4, report_interval=50, noise_dim=100, projection_dim=128,
                              clip_embedding_dim=512, checkpoint_path=str(tmp_path / "ck"),
                              result_path=str(tmp_path / "res"), num_stage=1, resume_epoch=-1,
                              use_uncond_loss=True, use_contrastive_loss=False, resume_checkpoint_path=None)
    train.train(args)
    hyp = checkpoints.read_hyperparameters(str(tmp_path / "ck"))
    assert (hyp["g_in_chans"], hyp["d_in_chans"]) == (1024, 64)
    checkpoints.load_generator(str(tmp_path / "ck"), 0, networks=NETWORKS)


@pytest.mark.parametrize("change, message", [
    (("--train_data", "/nonexistent/train.zip"), "/nonexistent/train.zip: no such file"),
    (("--clip_embedding_dim", "256"), "tiny_clip.pt gives 512-d embeddings but --clip_embedding_dim needs 256-d"),
    (("--clip_embedding_dim", "256", "--clip_model", "CLIP_256"), "holds 512-d CLIP embeddings but "
                                                                  "--clip_embedding_dim is 256"),
    (("--num_stage", "4"), "--num_stage 4: must be 1, 2 or 3"),
    (("--resume_checkpoint_path", "/nonexistent/ck", "--resume_epoch", "3"), "/nonexistent/ck: no such folder"),
])
def test_bad_input_gives_one_line_and_writes_nothing(run, tmp_path, change, message):
    if "CLIP_256" in change:  # a CLIP that agrees with --clip_embedding_dim 256, and a zip that does not
        clip_256 = clip_utils.make_random_clip(str(tmp_path / "clip_256.pt"), "tiny", 256)
        change = tuple(clip_256 if word == "CLIP_256" else word for word in change)
    with pytest.raises(SystemExit, match=message):
        run("bad", 1, *change)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_missing_resume_epoch_or_other_hyperparameters_are_refused(run, tmp_path, capsys):
    folder = run("src", 1)
    before = {name: os.path.getmtime(folder / name) for name in os.listdir(folder)}
    with pytest.raises(SystemExit, match=r"--resume_epoch 5: .* has no complete epoch 5 \(complete epochs: \[0\]\)"):
        run("src", 7, "--resume_checkpoint_path", str(folder), "--resume_epoch", "5")
    with pytest.raises(SystemExit, match="--g_in_chans 128: the checkpoints to resume were made with --g_in_chans 64"):
        run("src", 2, "--resume_checkpoint_path", str(folder), "--resume_epoch", "0", "--g_in_chans", "128")
    os.remove(folder / "run_options.json")  # a folder of the course's code: the weights themselves disagree
    with pytest.raises(SystemExit):
        run("src", 2, "--resume_checkpoint_path", str(folder), "--resume_epoch", "0", "--g_in_chans", "128")
    assert "made with other hyperparameters" in capsys.readouterr().err
    before.pop("run_options.json")
    assert {name: os.path.getmtime(folder / name) for name in os.listdir(folder)} == before


def test_a_fresh_run_refuses_a_folder_holding_another_runs_epochs(run):
    run("taken", 1)
    with pytest.raises(SystemExit, match=r"already hold epochs \[0\] of another run"):
        run("taken", 1)
    run("taken", 1, "--overwrite")


def test_eval_every_logs_the_figures_with_the_losses(run, preprocessed_zips, inception_path, tmp_path):
    import csv

    folder = run("eval", 1, "--eval_every", "1", "--eval_data", preprocessed_zips["train"], "--eval_samples", "10",
                 "--inception_weights", inception_path)
    with open(folder / "loss_log.csv", newline="") as f:
        end = [row for row in csv.DictReader(f) if row["step"] == "end"][0]
    # IS is at least 1 up to rounding (exactly 1 when every image gets the same class distribution)
    assert float(end["fid"]) > 0 and float(end["is_mean"]) >= 1 - 1e-9 and end["clip_score"] != ""
    assert (tmp_path / "eval" / "results" / "eval_epoch_0.json").exists()
    assert (tmp_path / "eval" / "results" / "eval_epoch_0.png").exists()
