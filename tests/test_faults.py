"""Issue 13, nothing lost and nothing silently wrong: the faults and bad inputs a new user hits.

Each test reproduces one reported case (its number in the issue is in the test's name or docstring): runs that
mix with another run's files, kills during saves (a real SIGKILL of a subprocess at a chosen point), a full disk
(a file-size limit, or a stub raising ENOSPC) and read-only folders, bad flags, and damaged inputs. Every
failure must be one line naming the file or flag, the cause and the remedy, and must leave every file as it was.
"""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import preprocess as run_preprocessing
from reliability_helpers import (copy_folder, dead_pid, fail_writes_under, make_checkpoint, one_line_exit,
                                 preprocess_error, python, train_argv, tree, wait_for_marker, write_mid_epoch_snapshot)

import check_submission
import generate_image
import main
from models import NETWORKS
from t2i import checkpoints, clip_utils, plots
from t2i.data import preprocessing
from t2i.errors import T2IError
from t2i.files import atomic_save, atomic_write_text
from t2i.submission_files import Item
from t2i.training import options
from t2i.training.log import LossLog

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def three_epochs(preprocessed_zips, tiny_clip_path, tmp_path_factory) -> dict:
    """A finished 3-epoch run (epochs 0-2), to copy: {'ckpt', 'results'}."""
    base = tmp_path_factory.mktemp("three_epochs")
    main.main(train_argv(preprocessed_zips["train"], base / "ck", base / "res", tiny_clip_path, 3))
    return {"ckpt": str(base / "ck"), "results": str(base / "res")}


@pytest.fixture
def copied(three_epochs, tmp_path) -> dict:
    return {"ckpt": copy_folder(three_epochs["ckpt"], tmp_path / "ck"),
            "results": copy_folder(three_epochs["results"], tmp_path / "res")}


@pytest.fixture
def argv(preprocessed_zips, tiny_clip_path, copied):
    """argv(epochs, *flags): the tiny run's command line into the copied folders."""
    return lambda epochs, *extra: train_argv(preprocessed_zips["train"], copied["ckpt"], copied["results"],
                                             tiny_clip_path, epochs, *extra)


def previous_runs(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(checkpoints.PREVIOUS_RUN_PREFIX))


# -------------------------------------------------------------------------- 1, 7: runs never mix, nothing lost

def test_1_overwrite_moves_the_previous_run_aside_and_resume_continues_the_new_run(copied, argv, capsys):
    ckpt, results = copied["ckpt"], copied["results"]
    write_mid_epoch_snapshot(ckpt, 2, 3, 2)  # the old run was also cut in the middle of epoch 3
    with open(os.path.join(ckpt, "my_notes.txt"), "w") as f:
        f.write("mine")
    old_ckpt, old_results = tree(ckpt), tree(results)

    main.main(argv(1, "--overwrite", "--g_in_chans", "128"))  # a fresh run with other hyperparameters
    (previous,) = previous_runs(ckpt)
    assert set(os.listdir(ckpt)) == {"epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_0_state.pt", "hyperparameter.pt",
                                     "loss_log.csv", "run_options.json", "tensorboard", "my_notes.txt", previous}
    assert sorted(os.listdir(results)) == ["epoch_0.png", "loss_curve.png", previous]
    # Nothing lost: every file of the old run is in previous_run_<time>/, byte for byte; other files stay.
    assert tree(os.path.join(ckpt, previous)) == {name: value for name, value in old_ckpt.items()
                                                  if name != "my_notes.txt"}
    assert tree(os.path.join(results, previous)) == old_results
    assert f"--overwrite: moved 14 file(s) of the previous run from {ckpt} into" in capsys.readouterr().out

    main.main(argv(2, "--g_in_chans", "128", "--resume_checkpoint_path", ckpt, "--resume_epoch", "latest"))
    assert "Resuming from epoch 0 in" in capsys.readouterr().out  # the new run, not the old epoch 2 or snapshot
    assert checkpoints.complete_epochs(ckpt, 1) == [0, 1]


@pytest.mark.parametrize("leftover", ["epochs", "mid_epoch_snapshot", "sample_grid"])
def test_1_a_fresh_run_refuses_folders_holding_another_runs_files(copied, argv, leftover):
    ckpt = copied["ckpt"]
    if leftover != "epochs":
        for name in os.listdir(ckpt):
            if leftover == "sample_grid" and name == checkpoints.TENSORBOARD_FOLDER:
                shutil.rmtree(os.path.join(ckpt, name))
            elif leftover == "sample_grid" or name.startswith("epoch_"):
                os.remove(os.path.join(ckpt, name))
        if leftover == "mid_epoch_snapshot":
            torch.save({"trainer": {}, "epoch": 3, "step": 2}, os.path.join(ckpt, "mid_epoch_state.pt"))
    before = tree(os.path.dirname(ckpt))
    message = one_line_exit(main.main, argv(1))
    assert "of another run" in message and "--overwrite" in message and "previous_run_" in message
    assert tree(os.path.dirname(ckpt)) == before


def test_7_resuming_an_earlier_epoch_refuses_to_replace_the_later_ones(copied, argv):
    ckpt = copied["ckpt"]
    before = tree(os.path.dirname(ckpt))
    message = one_line_exit(main.main, argv(5, "--resume_checkpoint_path", ckpt, "--resume_epoch", "0"))
    assert "holds later epochs [1, 2]" in message and "--overwrite" in message
    write_mid_epoch_snapshot(ckpt, 2, 3, 4)
    before = tree(os.path.dirname(ckpt))
    message = one_line_exit(main.main, argv(5, "--resume_checkpoint_path", ckpt, "--resume_epoch", "2"))
    assert "a later mid-epoch snapshot" in message
    assert tree(os.path.dirname(ckpt)) == before


@pytest.mark.parametrize("resume_epoch, num_epochs", [("1", 2), ("0", 1), ("latest", 3), ("latest", 2)])
def test_7_a_resume_with_nothing_left_to_train_changes_nothing(copied, argv, resume_epoch, num_epochs):
    """The reported case: --resume_epoch 1 --num_epochs 2 with epochs 0-2 deleted the log rows of epoch 2,
    rewrote num_epochs in hyperparameter.pt, and exited 0."""
    ckpt = copied["ckpt"]
    before = tree(os.path.dirname(ckpt))
    message = one_line_exit(main.main, argv(num_epochs, "--resume_checkpoint_path", ckpt, "--resume_epoch",
                                            resume_epoch))
    assert f"--num_epochs {num_epochs}:" in message and "nothing to train" in message
    assert "raise --num_epochs" in message
    assert tree(os.path.dirname(ckpt)) == before


def test_7_resuming_an_earlier_epoch_with_overwrite_moves_the_later_ones_aside(copied, argv, capsys):
    ckpt, results = copied["ckpt"], copied["results"]
    old_log = open(os.path.join(ckpt, "loss_log.csv")).read()
    old_epoch_2 = tree(ckpt)["epoch_2_Gen.pt"]
    main.main(argv(2, "--resume_checkpoint_path", ckpt, "--resume_epoch", "0", "--overwrite"))
    (previous,) = previous_runs(ckpt)
    assert checkpoints.complete_epochs(ckpt, 1) == [0, 1]
    aside = os.path.join(ckpt, previous)
    assert checkpoints.complete_epochs(aside, 1) == [1, 2] and tree(aside)["epoch_2_Gen.pt"] == old_epoch_2
    assert open(os.path.join(aside, "loss_log.csv")).read() == old_log  # the old log, whole, goes with them
    assert sorted(os.listdir(os.path.join(results, previous))) == ["epoch_1.png", "epoch_2.png", "loss_curve.png"]
    epochs_logged = {line.split(",")[0] for line in open(os.path.join(ckpt, "loss_log.csv")).read().splitlines()[1:]}
    assert epochs_logged == {"0", "1"}


# ------------------------------------------------------------------------------- 2, 8, 9, 10: bad flags

@pytest.mark.parametrize("flags, expected", [
    (["--batch_size", "1"], "--batch_size 1: must be an integer of at least 2"),   # 2: it trained nothing
    (["--batch_size", "0"], "--batch_size 0"),
    (["--report_interval", "0"], "--report_interval 0"),
    (["--num_workers", "-1"], "--num_workers -1"),
    (["--g_in_chans", "0"], "--g_in_chans 0"),
    (["--g_in_chans", "-64"], "--g_in_chans -64"),
    (["--d_in_chans", "0"], "--d_in_chans 0"),
    (["--noise_dim", "0"], "--noise_dim 0"),
    (["--projection_dim", "0"], "--projection_dim 0"),
    (["--device", "gpu"], "--device gpu: not a device name"),
    (["--learning_rate", "-0.0002"], "--learning_rate -0.0002: must be positive"),   # 10: names the flag
    (["--tau", "0"], "--tau 0.0: must be positive"),
    (["--resume_epoch", "0"], "--resume_epoch 0 needs --resume_checkpoint_path"),    # 8: no silent fresh run
    (["--checkpoint_path", "A_FILE"], "is a file; give a folder"),
    (["--train_data", "/nonexistent/train.zip"], "/nonexistent/train.zip: no such file"),
])
def test_9_bad_training_flags_are_one_line_and_write_nothing(tmp_path, tiny_clip_path, flags, expected):
    """Also 10: main.py makes no folder before its input is checked."""
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    flags = [str(a_file) if flag == "A_FILE" else flag for flag in flags]
    argv = train_argv("train.zip", tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1, *flags)
    assert expected in one_line_exit(main.main, argv)
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and a_file.read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_9_training_on_cuda_without_one_is_one_line(tmp_path, tiny_clip_path):
    argv = train_argv("train.zip", tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1, "--device", "cuda")
    assert "--device cuda: no CUDA GPU is available here; use --device cpu" in one_line_exit(main.main, argv)
    assert os.listdir(tmp_path) == []


def offline(monkeypatch, home):
    """No network, and an empty home (so CLIP's download cache, ~/.cache/clip, is empty)."""
    import urllib.error
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("case", ["cuda", "default_clip_offline", "out_dir_is_a_file", "num_images"])
def test_9_bad_generation_input_is_one_line_and_writes_nothing(tmp_path, tiny_clip_path, monkeypatch, case):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    checkpoint_path = make_checkpoint(tmp_path / "ck", 1)
    out_dir = tmp_path / "out"
    argv = ["--prompt", "a face", "--load_epoch", "0", "--checkpoint_path", checkpoint_path, "--clip_model",
            tiny_clip_path, "--out_dir", str(out_dir)]
    if case == "cuda":
        argv += ["--device", "cuda"]
        expected = "--device cuda: no CUDA GPU is available here"
    elif case == "default_clip_offline":
        offline(monkeypatch, tmp_path / "home")
        argv.remove("--clip_model"), argv.remove(tiny_clip_path)
        expected = "--clip_model ViT-B/32: not in the cache"
    elif case == "out_dir_is_a_file":
        out_dir.write_text("mine")
        expected = f"--out_dir {out_dir}: is a file"
    else:
        argv += ["--num_images", "0"]
        expected = "--num_images 0: must be at least 1"
    monkeypatch.chdir(tmp_path)
    message = one_line_exit(generate_image.main, argv)
    assert expected in message
    written = [name for _, _, names in os.walk(tmp_path) for name in names if name.startswith("result_")]
    assert written == []


# --------------------------------------------------------------------- 3, 11: preprocessing keeps its input

@pytest.mark.parametrize("how", ["same_path", "relative_path", "symlink", "hard_link", "train_pickle",
                                 "other_split_pickle"])
def test_3_preprocessing_never_replaces_its_input(raw_copy, tiny_clip_path, tmp_path, monkeypatch, how):
    source = raw_copy["source"]
    dest = {"same_path": source, "train_pickle": raw_copy["train"], "other_split_pickle": raw_copy["test"]}.get(how)
    if how == "relative_path":
        monkeypatch.chdir(tmp_path)
        dest = os.path.join("raw", "..", "raw", os.path.basename(source))
    elif how == "symlink":
        dest = str(tmp_path / "link.zip")
        os.symlink(source, dest)
    elif how == "hard_link":
        dest = str(tmp_path / "hard.zip")
        os.link(source, dest)
    before = tree(os.path.dirname(source))
    message = preprocess_error(["--source", source, "--dest", dest, "--clip_model", tiny_clip_path, "--device", "cpu",
                                "--overwrite"])
    assert f"--dest {dest}: is an input of this run" in message
    assert tree(os.path.dirname(source)) == before


def test_11_a_malicious_split_pickle_runs_no_code(raw_copy, tiny_clip_path, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(raw_copy["train"], "wb") as f:
        pickle.dump(["1", "2", Exploit()], f)
    with pytest.raises(T2IError, match="not a plain pickled list of ids \\(it names .*open"):
        preprocessing.read_split_ids(raw_copy["train"])
    message = preprocess_error(["--source", raw_copy["source"], "--dest", str(tmp_path / "o.zip"), "--clip_model",
                                tiny_clip_path, "--device", "cpu"])
    assert "celeba_filenames_train.pickle: not a plain pickled list of ids" in message
    assert not marker.exists() and not (tmp_path / "o.zip").exists()


def test_11_torchscript_clip_files_are_documented_as_code():
    assert "TorchScript" in options.BY_NAME["clip_model"].help and "code" in options.BY_NAME["clip_model"].help
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "troubleshooting.md")) as f:
        assert "TorchScript" in f.read()


def test_11_a_state_dict_clip_file_is_never_read_as_torchscript(tiny_clip_path, monkeypatch):
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: pytest.fail("torch.jit.load was called"))
    assert clip_utils.load_clip(tiny_clip_path) is not None


# ------------------------------------------------------------------------------ 4: kills during writes

KILL_DURING = """
import json, os, sys, time
real_fsync = os.fsync

def fsync(fd):  # the kill lands while this file is being saved: its temporary file is on disk, the target not
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(os.environ["KILL_AT"] + ".tmp-"):
        open(os.environ["MARKER"], "w").close()
        time.sleep(600)
    real_fsync(fd)

os.fsync = fsync
"""


def kill_when_marked(process: subprocess.Popen, marker, timeout: float = 400) -> None:
    """SIGKILL `process` once it has written `marker` (it then sleeps inside a save)."""
    wait_for_marker(process, marker, timeout)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()  # reaped: its pid is no longer a live process
    assert process.returncode == -signal.SIGKILL


def test_4_a_run_killed_during_a_save_loses_nothing_and_the_next_run_cleans_only_its_temporary_files(
        preprocessed_zips, tiny_clip_path, tmp_path, capsys):
    ckpt, results = tmp_path / "ck", tmp_path / "res"
    argv = train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 2)
    process = python(KILL_DURING + "import main; main.main(json.loads(os.environ['ARGV']))",
                     {"KILL_AT": "epoch_1_Gen.pt", "MARKER": str(tmp_path / "marker"), "ARGV": json.dumps(argv)})
    kill_when_marked(process, tmp_path / "marker")
    stale = f"epoch_1_Gen.pt.tmp-{process.pid}"
    names = set(os.listdir(ckpt))
    assert stale in names and "epoch_1_Gen.pt" not in names and checkpoints.complete_epochs(str(ckpt), 1) == [0]
    checkpoints.load_generator(str(ckpt), 0, networks=NETWORKS)  # the last complete epoch is whole
    # Files that are not ours, or are being written by a live process, must survive the cleanup.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        others = ["my_notes.txt.tmp-1", f"notes.tmp-{process.pid}", f"epoch_9_Gen.pt.tmp-{sleeper.pid}",
                  "epoch_1_Gen.pt.bak"]
        for name in others:
            (ckpt / name).write_text("not yours")
        (results / f"epoch_1.png.tmp-{process.pid}").write_text("stale grid")
        capsys.readouterr()
        main.main(train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 2,
                             "--resume_checkpoint_path", str(ckpt), "--resume_epoch", "latest"))
        out = capsys.readouterr().out
        assert f"Removed {ckpt / stale}, left by an interrupted save" in out
        assert "Resuming from epoch 0" in out
        names = set(os.listdir(ckpt))
        assert stale not in names and set(others) <= names
        assert not any(".tmp-" in name for name in os.listdir(results))
        assert checkpoints.complete_epochs(str(ckpt), 1) == [0, 1]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_4_keep_last_removes_stale_temporary_files_of_our_names_only(three_epochs, tmp_path):
    ckpt = copy_folder(three_epochs["ckpt"], tmp_path / "ck")
    pid = dead_pid()
    stale = [f"epoch_2_Gen.pt.tmp-{pid}", f"loss_log.csv.tmp-{pid}", f"run_options.json.tmp-{pid}"]
    kept = [f"my_file.tmp-{pid}", "epoch_0_Gen.pt.bak", f"epoch_2_Gen.pt.tmp-{os.getppid()}"]
    for name in stale + kept:
        with open(os.path.join(ckpt, name), "w") as f:
            f.write("x")
    checkpoints.prune_epochs(ckpt, keep_last=1, num_stage=1)
    names = set(os.listdir(ckpt))
    assert not names & set(stale) and set(kept) <= names
    assert checkpoints.complete_epochs(ckpt, 1) == [2]


def test_4_preprocessing_killed_midway_leaves_no_zip_and_the_next_run_cleans_its_temporary_file(
        raw_copy, tiny_clip_path, tmp_path):
    dest = tmp_path / "out" / "train.zip"
    argv = ["--source", raw_copy["source"], "--dest", str(dest), "--clip_model", tiny_clip_path, "--device", "cpu",
            "--batch_size", "4", "--num_workers", "1"]
    code = """
import json, os, time
from t2i.data import preprocessing
real_add = preprocessing.PreprocessedZipWriter.add
calls = []
def add(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # the kill lands in the middle of the zip
        open(os.environ["MARKER"], "w").close()
        time.sleep(600)
    return real_add(self, *args, **kwargs)
preprocessing.PreprocessedZipWriter.add = add
import preproc_datasets_celeba_zip_train as command
command.convert_dataset.main(json.loads(os.environ["ARGV"]), standalone_mode=False)
"""
    process = python(code, {"MARKER": str(tmp_path / "marker"), "ARGV": json.dumps(argv)})
    kill_when_marked(process, tmp_path / "marker")
    assert sorted(os.listdir(dest.parent)) == [f"train.zip.tmp-{process.pid}"]  # no truncated train.zip
    (dest.parent / f"other.zip.tmp-{process.pid}").write_text("not this run's")
    run_preprocessing(argv, "train")
    assert sorted(os.listdir(dest.parent)) == [f"other.zip.tmp-{process.pid}", "train.zip"]
    assert zipfile.ZipFile(dest).testzip() is None


# ----------------------------------------------------------------- 5: resume with other hyperparameters

@pytest.mark.parametrize("with_run_options", [True, False])
def test_5_a_snapshot_resumed_with_other_hyperparameters_is_one_line_and_changes_nothing(copied, argv,
                                                                                        with_run_options):
    ckpt = copied["ckpt"]
    write_mid_epoch_snapshot(ckpt, 2, 3, 2)
    if not with_run_options:
        os.remove(os.path.join(ckpt, "run_options.json"))  # a folder from an older version
    before = tree(os.path.dirname(ckpt))
    message = one_line_exit(main.main, argv(5, "--g_in_chans", "256", "--resume_checkpoint_path", ckpt,
                                            "--resume_epoch", "latest"))
    if with_run_options:
        assert message.startswith("--g_in_chans 256: the checkpoints to resume were made with --g_in_chans 64")
    else:
        assert "mid_epoch_state.pt: made with other hyperparameters than this run" in message
    assert tree(os.path.dirname(ckpt)) == before


# ----------------------------------------------------------------------- 6: full disk, read-only folder

def enospc_on_fsync(monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.parametrize("writer", ["checkpoint", "hyperparameter", "loss_log", "run_options", "sample_grid",
                                    "loss_curve", "submission_zip"])
def test_6_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, writer):
    import argparse

    from train_utils import save_hyp

    names = {"checkpoint": "epoch_0_Gen.pt", "hyperparameter": "hyperparameter.pt", "loss_log": "loss_log.csv",
             "run_options": "run_options.json", "sample_grid": "epoch_0.png", "loss_curve": "loss_curve.png",
             "submission_zip": "submission.zip"}
    path = tmp_path / names[writer]
    log = tmp_path / "log.csv"
    log.write_text("epoch,step,seconds,d_loss,g_loss\n0,end,1.0,1.0,1.0\n")
    path.write_bytes(b"the previous file")
    write = {
        "checkpoint": lambda: atomic_save({"w": torch.ones(2)}, str(path)),
        "hyperparameter": lambda: save_hyp(argparse.Namespace(clip_embedding_dim=512, projection_dim=8, noise_dim=8,
                                                              num_stage=1, use_uncond_loss=True,
                                                              use_contrastive_loss=True, batch_size=4, num_epochs=1,
                                                              learning_rate=2e-4, checkpoint_path=str(tmp_path)),
                                           64, 3, 4, 1),
        "loss_log": lambda: LossLog(str(path)),
        "run_options": lambda: atomic_write_text(str(path), "{}"),
        "sample_grid": lambda: plots.save_image_grid(torch.zeros(4, 3, 8, 8), str(path), ncol=2, captions=["a"] * 4),
        "loss_curve": lambda: plots.plot_loss_curve(str(log), str(path)),
        "submission_zip": lambda: check_submission.pack([Item("(3) weights", True, [(str(log), "log.csv")])],
                                                        str(path)),
    }[writer]
    enospc_on_fsync(monkeypatch)
    with pytest.raises(T2IError) as error:
        write()
    message = str(error.value)
    assert message.startswith(f"{path}: could not be written (the disk is full)") and "\n" not in message
    assert "free some space" in message
    assert ("--keep_last" in message) == (writer == "checkpoint")  # advice only where it applies
    assert path.read_bytes() == b"the previous file"
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_6_a_full_disk_during_training_is_one_line_naming_the_file(preprocessed_zips, tiny_clip_path, tmp_path):
    """A real file-size limit (RLIMIT_FSIZE): the first save over it fails, named with the system's cause (the disk
    is not full: issue 28 found every failure of torch's writer called a full disk)."""
    argv = train_argv(preprocessed_zips["train"], tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1)
    code = """
import json, os, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit then fails with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
import main
main.main(json.loads(os.environ["ARGV"]))
"""
    process = python(code, {"ARGV": json.dumps(argv)})
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err
    assert "Traceback" not in err and err.count("error: ") == 1  # stderr otherwise holds the progress bars
    assert err.strip().splitlines()[-1] == (f"error: {tmp_path / 'ck' / 'epoch_0_state.pt'}: could not be written "
                                            f"(the file is larger than this system allows); the previous file, if "
                                            f"any, is unchanged; free some space or choose another disk")
    assert not [name for name in os.listdir(tmp_path / "ck") if ".tmp-" in name]


@pytest.mark.parametrize("folder_exists", [False, True])
def test_6_a_read_only_checkpoint_folder_is_one_line(preprocessed_zips, tiny_clip_path, tmp_path, monkeypatch,
                                                     folder_exists):
    ckpt = tmp_path / "drive" / "ck"
    if folder_exists:
        ckpt.mkdir(parents=True)
    fail_writes_under(monkeypatch, tmp_path / "drive", errno.EROFS)
    message = one_line_exit(main.main, train_argv(preprocessed_zips["train"], ckpt, tmp_path / "res", tiny_clip_path,
                                                  1))
    if folder_exists:
        assert message.startswith(f"{ckpt / 'hyperparameter.pt'}: could not be written (the folder is on a "
                                  f"read-only file system)")
    else:
        assert message.startswith(f"--checkpoint_path {ckpt}: the folder could not be made (the folder is on a "
                                  f"read-only file system); choose a writable folder")


def test_6_preprocessing_on_a_full_disk_or_a_read_only_folder_is_one_line(raw_copy, tiny_clip_path, tmp_path,
                                                                         monkeypatch):
    dest = tmp_path / "out" / "train.zip"
    argv = ["--source", raw_copy["source"], "--dest", str(dest), "--clip_model", tiny_clip_path, "--device", "cpu",
            "--max-images", "3", "--num_workers", "1"]
    real_writestr = zipfile.ZipFile.writestr
    with monkeypatch.context() as patch:
        def full(self, name, *args, **kwargs):
            if name.endswith(".png"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_writestr(self, name, *args, **kwargs)
        patch.setattr(zipfile.ZipFile, "writestr", full)
        assert preprocess_error(argv).startswith(f"{dest}: could not be written (the disk is full)")
    assert os.listdir(dest.parent) == []
    fail_writes_under(monkeypatch, dest.parent, errno.EACCES)
    assert preprocess_error(argv).startswith(f"{dest}: could not be written (permission denied)")


def test_6_generation_into_a_read_only_folder_is_one_line(tmp_path, tiny_clip_path, monkeypatch):
    checkpoint_path = make_checkpoint(tmp_path / "ck", 1)
    fail_writes_under(monkeypatch, tmp_path / "out", errno.EROFS)
    message = one_line_exit(generate_image.main, ["--prompt", "a face", "--load_epoch", "0", "--checkpoint_path",
                                                  checkpoint_path, "--clip_model", tiny_clip_path, "--out_dir",
                                                  str(tmp_path / "out")])
    assert message.startswith(f"--out_dir {tmp_path / 'out'}: the folder could not be made (the folder is on a "
                              f"read-only file system)")


# --------------------------------------------------------------------------------------- 10: smaller ones

@pytest.mark.parametrize("content", [b"\x00garbage" * 100, b"not a model, just text\n", "zip", "truncated"])
def test_10_a_garbage_clip_file_is_one_line_without_torch_advice(tmp_path, tiny_clip_path, content):
    path = tmp_path / "clip.pt"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif content == "truncated":
        data = open(tiny_clip_path, "rb").read()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(T2IError) as error:
        clip_utils.load_clip(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "weights_only" not in message
    assert "give a CLIP state dict" in message or "truncated" in message


def test_10_the_preprocessing_summary_names_every_failed_image(raw_copy, tiny_clip_path, tmp_path, capsys,
                                                              synthetic_raw):
    broken_ids = synthetic_raw["splits"]["test"][:4]
    raw = tmp_path / "broken.zip"
    with zipfile.ZipFile(raw_copy["source"]) as src, zipfile.ZipFile(raw, "w") as dst:
        for name in src.namelist():
            broken = name in {f"image/{i}.jpg" for i in broken_ids}
            dst.writestr(name, b"not a jpeg" if broken else src.read(name))
    shutil.copy(raw_copy["test"], tmp_path)
    dest = tmp_path / "test.zip"
    run_preprocessing(["--source", str(raw), "--dest", str(dest), "--clip_model", tiny_clip_path, "--device", "cpu"],
                      "test")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "failed 4 unreadable" in line and "and 1 more" in line
    assert all(f"image/{i}.jpg" in line for i in broken_ids[:3])
    assert f"full list in {dest}.problems.txt" in line
    listed = open(f"{dest}.problems.txt").read().splitlines()
    assert [entry.split("\t")[1].split(":")[0] for entry in listed] == [f"image/{i}.jpg" for i in broken_ids]
    # A later clean run into the same --dest removes the list, which would otherwise describe another zip.
    run_preprocessing(["--source", raw_copy["source"], "--dest", str(dest), "--clip_model", tiny_clip_path,
                       "--device", "cpu", "--overwrite", "--split_dir", str(tmp_path)], "test")
    assert not os.path.exists(f"{dest}.problems.txt")


def test_10_generation_removes_another_runs_result_images_and_nothing_else(tmp_path, tiny_clip_path):
    out = tmp_path / "out"
    common = ["--prompt", "a face", "--load_epoch", "0", "--clip_model", tiny_clip_path, "--out_dir", str(out)]
    generate_image.main(common + ["--checkpoint_path", make_checkpoint(tmp_path / "three", 3), "--num_images", "4"])
    assert sorted(os.listdir(out)) == ["result_128.png", "result_256.png", "result_64.png", "result_grid.png"]
    for name in ("result_64_old.png", "my_result_256.png", "result_512.png"):
        (out / name).write_text("mine")
    generate_image.main(common + ["--checkpoint_path", make_checkpoint(tmp_path / "one", 1)])
    assert sorted(os.listdir(out)) == ["my_result_256.png", "result_512.png", "result_64.png", "result_64_old.png"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_10_check_submission_names_the_damage_not_state_dict_advice(tmp_path, tiny_clip_path, capsys, damage):
    folder = make_checkpoint(tmp_path / "ck", 3)
    path = os.path.join(folder, "epoch_0_Gen.pt")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncated": data[:len(data) // 2], "garbage": b"\x13" * 1000, "empty": b""}[damage])
    status = check_submission.main(["--checkpoint_path", folder, "--epoch", "0", "--clip_model", tiny_clip_path,
                                    "--out_dir", str(tmp_path / "images"), "--num_images", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    (problem,) = [line for line in err.splitlines() if line.startswith("PROBLEM") and "epoch_0_Gen.pt" in line]
    assert {"truncated": "the file is truncated", "garbage": "not a PyTorch", "empty": "the file is empty"}[damage] \
        in problem
    assert "state_dict" not in problem


def test_6_synthetic_data_into_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    import synthetic_data

    fail_writes_under(monkeypatch, tmp_path / "out", errno.EROFS)
    message = one_line_exit(synthetic_data.main, ["--out", str(tmp_path / "out"), "--num_images", "4"])
    assert message.startswith(f"{tmp_path / 'out'}: the folder is on a read-only file system; choose a writable")
