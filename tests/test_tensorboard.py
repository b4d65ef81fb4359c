"""Issue 31, live curves: training's TensorBoard event files, read back with TensorBoard's own reader."""
import json
import os
import shutil
from argparse import Namespace

import pytest
from PIL import Image
from reliability_helpers import one_line_exit, train_argv, tree
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

import main
from t2i import checkpoints
from t2i.training import tensorboard as tensorboard_log
from t2i.training.resume import ResumePoint
from t2i.training.tensorboard import TensorBoardLog

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STEPS_PER_EPOCH = 6  # train_argv: 22 images, batch 4


def read_events(folder) -> EventAccumulator:
    """Every point of every event file in `folder`, as TensorBoard loads them (nothing sampled away)."""
    events = EventAccumulator(str(folder), size_guidance={SCALARS: 0, IMAGES: 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [point.step for point in events.Scalars(tag)]


@pytest.fixture(scope="module")
def resumed_run(preprocessed_zips, tiny_clip_path, inception_path, tmp_path_factory) -> dict:
    """Epoch 0, then a second command resuming it for epoch 1, with --eval_every 1: the run's folders."""
    root = tmp_path_factory.mktemp("tensorboard_run")
    ckpt, results = root / "ck", root / "res"
    evaluation = ["--eval_every", "1", "--eval_data", preprocessed_zips["train"], "--eval_samples", "10",
                  "--inception_weights", inception_path]
    main.main(train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 1, *evaluation))
    first = read_events(ckpt / "tensorboard")
    main.main(train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 2, *evaluation,
                         "--resume_checkpoint_path", str(ckpt), "--resume_epoch", "latest"))
    return {"ckpt": ckpt, "results": results, "first": first, "events": read_events(ckpt / "tensorboard")}


def test_every_loss_component_learning_rate_and_skip_count_per_report_step(resumed_run):
    events = resumed_run["events"]
    tags = set(events.Tags()["scalars"])
    header = (resumed_run["ckpt"] / "loss_log.csv").read_text().splitlines()[0].split(",")
    components = [name for name in header if "/" in name]  # D/d_loss_real_cond_0, G/kl, ...
    assert "G/kl" in components and "D/d_loss_real_cond_0" in components
    assert {"loss/d_loss", "loss/g_loss", "lr/G", "lr/D_0", "run/skipped_steps", *components} <= tags
    # Report every 2 iterations: steps 0, 2, 4 of each epoch, after updates 1, 3, 5 (the x axis: updates).
    assert steps(events, "loss/d_loss") == [1, 3, 5, 7, 9, 11]
    assert steps(events, "G/kl") == steps(events, "loss/d_loss")
    assert [point.value for point in events.Scalars("lr/G")] == pytest.approx([2e-4] * 6)
    assert [point.value for point in events.Scalars("lr/D_0")] == pytest.approx([2e-4] * 6)
    assert [point.value for point in events.Scalars("run/skipped_steps")] == [0] * 6
    rows = [line.split(",") for line in (resumed_run["ckpt"] / "loss_log.csv").read_text().splitlines()[1:]]
    logged = [float(row[header.index("d_loss")]) for row in rows if row[1] != "end"]
    assert [point.value for point in events.Scalars("loss/d_loss")] == pytest.approx(logged)


def test_each_epoch_has_its_means_sample_grid_and_evaluation(resumed_run):
    events = resumed_run["events"]
    epoch_ends = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for tag in ("epoch/d_loss", "epoch/g_loss", "epoch/seconds", "eval/fid", "eval/kid_mean", "eval/is_mean",
                "eval/clip_score"):
        assert steps(events, tag) == epoch_ends, tag
    for epoch, point in enumerate(events.Scalars("eval/fid")):
        with open(resumed_run["results"] / f"eval_epoch_{epoch}.json") as f:
            assert point.value == pytest.approx(json.load(f)["fid"])
    grids = events.Images("samples")
    assert [grid.step for grid in grids] == epoch_ends
    with Image.open(resumed_run["results"] / "epoch_1.png") as grid:
        assert (grids[-1].width, grids[-1].height) == grid.size
    assert grids[-1].encoded_image_string.startswith(b"\x89PNG")


def test_a_resume_continues_the_same_curves(resumed_run):
    first, events = resumed_run["first"], resumed_run["events"]
    assert steps(first, "loss/d_loss") == [1, 3, 5]
    assert len(os.listdir(resumed_run["ckpt"] / "tensorboard")) == 2  # one event file per command
    for tag in events.Tags()["scalars"]:
        found = steps(events, tag)
        assert found == sorted(set(found)), f"{tag}: steps {found} repeat or go back"
    assert [point.value for point in first.Scalars("loss/d_loss")] == [
        point.value for point in events.Scalars("loss/d_loss")][:3]


def test_a_resume_before_later_points_replaces_them(resumed_run, preprocessed_zips, tiny_clip_path, tmp_path):
    """Resuming epoch 0 of the 2-epoch run (--overwrite sets epoch 1 aside): epoch 1's points are written again,
    once each, and the old curves go whole into previous_run_<time>/."""
    ckpt, results = tmp_path / "ck", tmp_path / "res"
    shutil.copytree(resumed_run["ckpt"], ckpt)
    shutil.copytree(resumed_run["results"], results)
    old_curves = tree(ckpt / "tensorboard")
    main.main(train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 2, "--resume_checkpoint_path",
                         str(ckpt), "--resume_epoch", "0", "--overwrite"))
    (previous,) = [name for name in os.listdir(ckpt) if name.startswith(checkpoints.PREVIOUS_RUN_PREFIX)]
    assert tree(ckpt / previous / "tensorboard") == old_curves
    events = read_events(ckpt / "tensorboard")
    assert steps(events, "loss/d_loss") == [1, 3, 5, 7, 9, 11]
    assert steps(events, "epoch/d_loss") == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [grid.step for grid in events.Images("samples")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    # Without --eval_every this time: epoch 1's old evaluation point went with the purge.
    assert steps(events, "eval/fid") == [STEPS_PER_EPOCH]


def test_points_after_the_resume_point_are_dropped(tmp_path):
    """An interrupted run wrote updates 1-10; the resume state holds 6 updates: 7-10 come from the resumed run."""
    log = TensorBoardLog(str(tmp_path))
    log.open(None)
    for step in range(1, 11):
        log.scalars(step, {"loss/d_loss": 1.0})
    log.writer.close()
    resumed = TensorBoardLog(str(tmp_path))
    resumed.open(ResumePoint(1, 2, {"trainer": {"num_updates": 6}}, "a snapshot", snapshot=True))
    for step in range(7, 13):
        resumed.scalars(step, {"loss/d_loss": 2.0})
    resumed.writer.close()
    points = read_events(tmp_path).Scalars("loss/d_loss")
    assert [(point.step, point.value) for point in points] == [(step, 1.0) for step in range(1, 7)] + [
        (step, 2.0) for step in range(7, 13)]


def test_galip_logs_its_losses_and_both_learning_rates(small_train_zip, tiny_clip_path, tmp_path):
    from test_galip import galip_argv

    main.main(galip_argv(small_train_zip, tmp_path, tiny_clip_path, 1))
    events = read_events(tmp_path / "checkpoints" / "tensorboard")
    assert {"D/d_real_0", "D/d_ma_gp_0", "G/g_adv_0", "G/g_sim_0", "loss/d_loss", "epoch/g_loss"} <= set(
        events.Tags()["scalars"])
    assert events.Scalars("lr/G")[0].value == pytest.approx(1e-4)  # GALIP's own rates
    assert events.Scalars("lr/D_0")[0].value == pytest.approx(4e-4)
    assert [grid.step for grid in events.Images("samples")] == [1]


def test_off_with_no_tensorboard_in_processes_that_do_not_write_and_without_the_package(monkeypatch, capsys, tmp_path):
    args = Namespace(checkpoint_path=str(tmp_path), tensorboard=None)
    assert TensorBoardLog.for_run(args, writes=True).log_dir == str(tmp_path / "tensorboard")
    assert TensorBoardLog.for_run(args, writes=False).log_dir is None  # torchrun's other processes
    assert TensorBoardLog.for_run(Namespace(checkpoint_path=str(tmp_path), tensorboard=False), True).log_dir is None
    monkeypatch.setattr(tensorboard_log, "summary_writer_class", lambda: None)
    capsys.readouterr()
    assert TensorBoardLog.for_run(args, writes=True).log_dir is None
    assert capsys.readouterr().out == ("TensorBoard: not installed, so no live curves (pip install tensorboard to get "
                                       "them); loss_log.csv and loss_curve.png are written as always\n")


def test_an_explicit_tensorboard_without_the_package_is_refused_before_any_write(preprocessed_zips, tiny_clip_path,
                                                                                   tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_log, "summary_writer_class", lambda: None)
    argv = train_argv(preprocessed_zips["train"], tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1)
    message = one_line_exit(main.main, argv + ["--tensorboard"])
    assert message.startswith("--tensorboard: the tensorboard package is not installed")
    assert "--no-tensorboard" in message
    assert tree(tmp_path) == {}


def test_a_fresh_run_refuses_a_folder_holding_another_runs_curves_and_overwrite_moves_them(
        preprocessed_zips, tiny_clip_path, tmp_path):
    ckpt = tmp_path / "ck"
    old = TensorBoardLog(str(ckpt / "tensorboard"))
    old.open(None)
    old.scalars(1, {"loss/d_loss": 1.0})
    old.writer.close()
    old_curves, before = tree(ckpt / "tensorboard"), tree(tmp_path)
    argv = train_argv(preprocessed_zips["train"], ckpt, tmp_path / "res", tiny_clip_path, 1)
    message = one_line_exit(main.main, argv)
    assert "of another run" in message and "tensorboard" in message
    assert tree(tmp_path) == before
    main.main(argv + ["--overwrite"])
    (previous,) = [name for name in os.listdir(ckpt) if name.startswith(checkpoints.PREVIOUS_RUN_PREFIX)]
    assert tree(ckpt / previous / "tensorboard") == old_curves
    assert steps(read_events(ckpt / "tensorboard"), "loss/d_loss") == [1, 3, 5]
