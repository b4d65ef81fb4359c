"""Issue 28, nothing lost (round 3): the cases a careless Colab user still hit. Each test reproduces one numbered
case of the issue (its number leads the test's name): a resume with more stages, two trainings in one folder
(real processes, one killed), NaN embeddings in a zip, stops (real SIGINTs) during a save and mid-epoch, a full
disk at each point of preprocessing, and inputs that mean nothing.
"""
import errno
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from reliability_helpers import (copy_folder, dead_pid, make_checkpoint, one_line_exit, preprocess_error, python,
                                 train_argv, tree, wait_for_marker)

import evaluate
import generate_image
import main
from models import NETWORKS
from t2i import checkpoints
from t2i.data import preprocessing
from t2i.errors import T2IError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LOCK_FILE = "training.lock"


# ----------------------------------------------------------------------- 1: resuming with more stages

@pytest.fixture(scope="module")
def one_stage_run(preprocessed_zips, tiny_clip_path, tmp_path_factory) -> dict:
    """A finished 1-stage run of 2 epochs: {'ckpt', 'results'}."""
    base = tmp_path_factory.mktemp("one_stage")
    main.main(train_argv(preprocessed_zips["train"], base / "ck", base / "res", tiny_clip_path, 2))
    return {"ckpt": str(base / "ck"), "results": str(base / "res")}


@pytest.mark.parametrize("resume_epoch, record", [("latest", True), ("latest", False), ("1", True)])
def test_1_resuming_with_more_stages_refuses_the_other_runs_epochs(one_stage_run, preprocessed_zips,
                                                                   tiny_clip_path, tmp_path, resume_epoch, record):
    """The reported case: `--num_stage 2 --resume_epoch latest` on a 1-stage run's folder started afresh over it,
    exit 0. `record` False: a folder without run_options.json (the stage count then comes from hyperparameter.pt)."""
    ckpt = copy_folder(one_stage_run["ckpt"], tmp_path / "ck")
    results = copy_folder(one_stage_run["results"], tmp_path / "res")
    if not record:
        os.remove(os.path.join(ckpt, "run_options.json"))
    before = tree(tmp_path)
    argv = train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 3, "--resume_checkpoint_path", ckpt,
                      "--resume_epoch", resume_epoch, stages=2)
    message = one_line_exit(main.main, argv)
    source = "run_options.json" if record else "hyperparameter.pt"
    assert message.startswith(f"--num_stage 2: {ckpt} holds epochs [0, 1] of a run with num_stage 1 (its {source})")
    assert "resume with --num_stage 1" in message and "--overwrite" in message
    assert tree(tmp_path) == before


def test_1_with_overwrite_the_other_runs_epochs_are_moved_aside_and_the_run_starts_afresh(
        one_stage_run, preprocessed_zips, tiny_clip_path, tmp_path, capsys):
    ckpt = copy_folder(one_stage_run["ckpt"], tmp_path / "ck")
    results = copy_folder(one_stage_run["results"], tmp_path / "res")
    old = tree(ckpt)
    main.main(train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 1, "--resume_checkpoint_path",
                         ckpt, "--resume_epoch", "latest", "--overwrite", "--batch_size", "11", stages=2))
    assert "they are moved aside and this run starts afresh" in capsys.readouterr().out
    (previous,) = [name for name in os.listdir(ckpt) if name.startswith(checkpoints.PREVIOUS_RUN_PREFIX)]
    assert tree(os.path.join(ckpt, previous)) == old  # the 1-stage run, whole
    assert checkpoints.complete_epochs(ckpt, 2) == [0]
    assert checkpoints.read_hyperparameters(ckpt)["num_stage"] == 2


# ---------------------------------------------------------------------- 2: two trainings in one folder

PAUSED_AFTER_THE_LOCK = """
import json, os, time
import train
real_find_resume_point = train.find_resume_point

def paused(args):  # the first read of the checkpoint folder: the run waits here until GO exists
    open(os.environ["MARKER"], "w").close()
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.1)
    return real_find_resume_point(args)

train.find_resume_point = paused
import main
main.main(json.loads(os.environ["ARGV"]))
"""


def start_paused_run(argv, tmp_path) -> subprocess.Popen:
    process = python(PAUSED_AFTER_THE_LOCK, {"MARKER": str(tmp_path / "marker"), "GO": str(tmp_path / "go"),
                                             "ARGV": json.dumps(argv)})
    wait_for_marker(process, tmp_path / "marker")
    return process


def test_2_a_second_training_into_a_folder_in_use_is_refused_naming_the_first(preprocessed_zips, tiny_clip_path,
                                                                              tmp_path):
    """The reported case: two runs started at once into one folder, with other widths, both exited 0 and mixed
    their files. The second is refused, naming the first, even with --overwrite; the first is unharmed."""
    ckpt, results = tmp_path / "ck", tmp_path / "res"
    first = start_paused_run(train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 1, "--batch_size",
                                        "11"), tmp_path)
    try:
        message = one_line_exit(main.main, train_argv(preprocessed_zips["train"], ckpt, tmp_path / "res2",
                                                      tiny_clip_path, 1, "--g_in_chans", "128", "--overwrite"))
        assert message.startswith(f"--checkpoint_path {ckpt}: another training is running there (host "
                                  f"{socket.gethostname()}, pid {first.pid}, started ")
        assert "--overwrite never breaks a live run's lock" in message
        assert os.listdir(ckpt) == [LOCK_FILE] and not os.path.exists(tmp_path / "res2")
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=400)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert checkpoints.read_hyperparameters(str(ckpt))["g_in_chans"] == 64
    checkpoints.load_generator(str(ckpt), 0, networks=NETWORKS)  # the first run's files, all of a piece
    assert LOCK_FILE not in os.listdir(ckpt)


def test_2_the_lock_of_a_killed_run_is_taken_over_with_one_line(preprocessed_zips, tiny_clip_path, tmp_path, capsys):
    ckpt, results = tmp_path / "ck", tmp_path / "res"
    argv = train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 1, "--batch_size", "11")
    first = start_paused_run(argv, tmp_path)
    first.kill()  # SIGKILL: a crash or a Colab disconnect, no cleanup
    first.wait()
    assert LOCK_FILE in os.listdir(ckpt)
    main.main(argv)
    taken = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Took over")]
    assert len(taken) == 1
    assert taken[0].startswith(f"Took over {ckpt / LOCK_FILE}: its run (host {socket.gethostname()}, pid {first.pid}, "
                               f"started ")
    assert taken[0].endswith(f") is gone: no process {first.pid} runs on this machine")
    assert checkpoints.complete_epochs(str(ckpt), 1) == [0] and LOCK_FILE not in os.listdir(ckpt)


def write_lock(folder, **fields) -> str:
    from t2i.training import lock as run_lock

    holder = {**run_lock.identity(), **fields}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    with open(path, "w") as f:
        json.dump(holder, f)
    return path


def test_2_a_lock_from_another_machine_is_live_until_its_heartbeat_is_stale(tmp_path, capsys):
    """Two Colab VMs sharing a Drive folder: the pid of the other cannot be checked, its heartbeat can."""
    from t2i.training import lock as run_lock

    folder = str(tmp_path / "ck")
    recent = time.time() - 120
    write_lock(folder, host="colab-vm-2", pid=os.getpid(), heartbeat=recent)
    with pytest.raises(T2IError) as error:
        with run_lock.held(folder):
            pass
    message = str(error.value)
    assert re.search(r"another training is running there \(host colab-vm-2, pid \d+, started .*, last heartbeat "
                     r"12\d s ago", message)
    assert "taken over once its heartbeat is 10 minutes old" in message
    write_lock(folder, host="colab-vm-2", pid=os.getpid(), heartbeat=time.time() - run_lock.STALE_SECONDS - 1)
    with run_lock.held(folder) as lock:
        assert run_lock.read_lock(lock.path)["token"] == lock.holder["token"]
    assert "Took over" in capsys.readouterr().out and os.listdir(folder) == []


def test_2_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    from t2i.training import lock as run_lock

    folder = str(tmp_path / "ck")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        write_lock(folder, pid=sleeper.pid, process_start=run_lock.process_start(sleeper.pid))
        with pytest.raises(T2IError, match=f"pid {sleeper.pid}, started .* it is taken over as soon as process"):
            run_lock.held(folder).__enter__()
        write_lock(folder, pid=sleeper.pid, process_start="1")  # the pid was reused by the sleeper
        with run_lock.held(folder):
            pass
        write_lock(folder, pid=dead_pid())
        with run_lock.held(folder):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_2_the_heartbeat_renews_the_lock_and_a_run_that_lost_it_stops_before_saving(tmp_path, monkeypatch):
    from t2i.training import lock as run_lock

    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
    folder = str(tmp_path / "ck")
    with run_lock.held(folder) as lock:
        first = run_lock.read_lock(lock.path)["heartbeat"]
        time.sleep(0.5)
        assert run_lock.read_lock(lock.path)["heartbeat"] > first
        run_lock.check_held(folder)
        write_lock(folder, host="colab-vm-2", pid=4242)  # another VM's run, seen late through Drive
        time.sleep(0.5)
        with pytest.raises(T2IError, match="another training took this folder over \\(host colab-vm-2, pid 4242"):
            run_lock.check_held(folder)
    assert run_lock.read_lock(os.path.join(folder, LOCK_FILE))["host"] == "colab-vm-2"  # not ours to remove


# ------------------------------------------------------------------------------ 3: NaN embeddings

def with_nonfinite_embeddings(source: str, dest, images=(), captions=()) -> str:
    """A copy of a preprocessed zip whose embeddings.npz holds NaN for the image embeddings of `images` and the
    caption embeddings (rows) `captions`; "all" poisons every image embedding."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "embeddings.npz":
                with np.load(io.BytesIO(data)) as npz:
                    arrays = {key: npz[key] for key in npz.files}
                rows = range(len(arrays["img_emb"])) if images == "all" else list(images)
                arrays["img_emb"][rows] = np.nan
                arrays["txt_emb"][list(captions)] = np.nan
                buffer = io.BytesIO()
                np.savez(buffer, **arrays)
                data = buffer.getvalue()
            dst.writestr(info, data)
    return str(dest)


def test_3_a_nan_caption_leaves_its_image_out_and_a_default_run_trains(preprocessed_zips, tiny_clip_path, tmp_path,
                                                                       capsys):
    """The reported case: one NaN caption reached the EMA generator's BatchNorm statistics and stopped a default
    run (EMA on) at epoch 0 with nothing saved."""
    data = with_nonfinite_embeddings(preprocessed_zips["train"], tmp_path / "nan.zip", captions=[13])  # image 3's
    main.main(train_argv(data, tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1))
    out = capsys.readouterr().out
    assert out.count("NaN or Inf CLIP embeddings") == 1
    assert f"Warning: {data}: 1 of 22 images have NaN or Inf CLIP embeddings and are left out: 00000/img00000003.png" \
        in out
    assert checkpoints.complete_epochs(str(tmp_path / "ck"), 1) == [0]
    checkpoints.load_generator(str(tmp_path / "ck"), 0, networks=NETWORKS)  # finite


def test_3_a_zip_of_nan_embeddings_is_refused_when_loaded_naming_it(preprocessed_zips, tiny_clip_path, tmp_path):
    data = with_nonfinite_embeddings(preprocessed_zips["train"], tmp_path / "all_nan.zip", images="all")
    message = one_line_exit(main.main, train_argv(data, tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1))
    assert message.startswith(f"{data}: every one of its 22 images has NaN or Inf CLIP embeddings")
    assert sorted(os.listdir(tmp_path)) == ["all_nan.zip"]  # no epoch wasted, nothing written


def test_3_the_ema_statistics_never_see_a_nan_caption_of_the_courses_loader(preprocessed_zips):
    """The graders' read_dataset cannot leave a NaN caption out: the BatchNorm re-estimation skips it itself."""
    from network import Generator
    from t2i.training.ema import GeneratorEMA

    text = torch.nn.functional.normalize(torch.randn(6, 512), dim=-1)
    text[2] = float("nan")
    ema = GeneratorEMA(Generator(512, 8, 8, 64, 3, 1, "cpu"), 0.999, [(None, None, row) for row in text],
                       batch_size=4, noise_dim=8)
    batches = ema.batchnorm_batches(torch.device("cpu"))
    assert batches and all(bool(torch.isfinite(batch_text).all()) for batch_text, _ in batches)


def test_3_evaluation_leaves_out_images_with_nan_captions_and_writes_no_nan(preprocessed_zips, tiny_clip_path,
                                                                           inception_path, tmp_path, capsys):
    """The reported case: a NaN caption in the test zip printed `CLIP nan` and wrote NaN into the report."""
    # Every caption of the first 11 images: the 11 others are scored (fewer images, a faster test).
    data = with_nonfinite_embeddings(preprocessed_zips["train"], tmp_path / "test.zip", captions=range(44))
    out = tmp_path / "report.json"
    evaluate.main(["--checkpoint_path", make_checkpoint(tmp_path / "ck", 1), "--load_epoch", "0", "--test_data",
                   data, "--clip_model", tiny_clip_path, "--inception_weights", inception_path, "--device", "cpu",
                   "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "11 of 22 images have NaN or Inf CLIP embeddings and are left out: 00000/img00000000.png" in printed
    assert "and 8 more" in printed
    report = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the report"))
    assert report["num_samples"] == 11 and report["clip_score"] is not None


# ------------------------------------------------------------------------------- 4: stops (SIGINT)

STOP_INSIDE_TORCH_SAVE = """
import json, os, time
import t2i.files

class SlowFile:  # torch's writer calls write(): the stop lands inside it, as a stop during a long save does
    def __init__(self, f):
        self.f = f
    def write(self, data):
        written = self.f.write(data)
        if not os.path.exists(os.environ["MARKER"]):
            open(os.environ["MARKER"], "w").close()
            time.sleep(600)
        return written
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

def slow_open(path, mode="r", *args, **kwargs):
    f = open(path, mode, *args, **kwargs)
    return SlowFile(f) if os.path.basename(path).startswith(os.environ["STOP_AT"] + ".tmp-") else f

t2i.files.open = slow_open
import main
main.main(json.loads(os.environ["ARGV"]))
"""

STOP_MID_EPOCH = """
import json, os, time
from t2i.training.log import TrainingLog
real_report = TrainingLog.report

def report(self, step, *args):
    if self.epoch == 1 and step == 2:
        open(os.environ["MARKER"], "w").close()
        time.sleep(600)
    return real_report(self, step, *args)

TrainingLog.report = report
import main
main.main(json.loads(os.environ["ARGV"]))
"""


def stopped_run(code: str, argv: list[str], tmp_path, **env) -> str:
    """Run `code` (a training that waits at a marked point), SIGINT it there as Colab's stop button does; its
    last line of standard error, checked to be the only line of the stop."""
    process = python(code, {"MARKER": str(tmp_path / "marker"), "ARGV": json.dumps(argv), **env})
    wait_for_marker(process, tmp_path / "marker")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and err.count("stopped: ") == 1, err
    return err.strip().splitlines()[-1]


def test_4_a_stop_during_a_save_keeps_the_last_good_files_and_says_how_to_resume(preprocessed_zips, tiny_clip_path,
                                                                                tmp_path, capsys):
    """The reported case: the stop button during an epoch save said the disk was full and to free space."""
    ckpt, results = tmp_path / "ck", tmp_path / "res"
    argv = train_argv(preprocessed_zips["train"], ckpt, results, tiny_clip_path, 2)
    line = stopped_run(STOP_INSIDE_TORCH_SAVE, argv, tmp_path, STOP_AT="epoch_1_Gen.pt")
    assert line == (f"stopped: {ckpt / 'epoch_1_Gen.pt'}: stopped while being written; the previous file, if any, is "
                    f"unchanged and the partial one removed; the newest complete epoch in {ckpt} is 0; continue with "
                    f"the same command and --resume_checkpoint_path {ckpt} --resume_epoch latest")
    assert not [name for name in os.listdir(ckpt) if ".tmp-" in name] and LOCK_FILE not in os.listdir(ckpt)
    assert checkpoints.complete_epochs(str(ckpt), 1) == [0]
    main.main(argv + ["--resume_checkpoint_path", str(ckpt), "--resume_epoch", "latest"])  # the command it gave
    assert "Resuming from epoch 0" in capsys.readouterr().out
    assert checkpoints.complete_epochs(str(ckpt), 1) == [0, 1]


def test_4_a_stop_mid_epoch_is_one_line_with_the_resume_command(preprocessed_zips, tiny_clip_path, tmp_path):
    """The reported case: a 52-line KeyboardInterrupt traceback and no resume hint."""
    ckpt = tmp_path / "ck"
    line = stopped_run(STOP_MID_EPOCH, train_argv(preprocessed_zips["train"], ckpt, tmp_path / "res",
                                                  tiny_clip_path, 2), tmp_path)
    assert line == (f"stopped: training was stopped (Ctrl-C or the stop button); the newest complete epoch in {ckpt} "
                    f"is 0; continue with the same command and --resume_checkpoint_path {ckpt} --resume_epoch latest")


def test_4_a_write_error_is_called_a_full_disk_only_when_it_is_one(tmp_path, monkeypatch):
    """torch's writer hides the error of its write in a RuntimeError ("unexpected pos"): the error behind it, or
    the disk's real free space, decides what the message says."""
    import shutil

    from t2i.files import write_error

    path = str(tmp_path / "epoch_0_Gen.pt")

    def torch_failure(cause: BaseException | None) -> RuntimeError:
        try:
            try:
                if cause is not None:
                    raise cause
            finally:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 46 vs 0")
        except RuntimeError as err:
            return err

    assert "(the disk is full)" in str(write_error(path, torch_failure(OSError(errno.ENOSPC, "No space left"))))
    assert "(the file is larger than this system allows)" in str(write_error(path, torch_failure(OSError(errno.EFBIG,
                                                                                                       "too large"))))
    honest = str(write_error(path, torch_failure(None)))  # nothing behind it, and the disk has room
    assert "disk is full" not in honest and "free some space" not in honest and "unexpected pos" in honest
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage._replace(free=4096))
    assert "(the disk is full)" in str(write_error(path, torch_failure(None)))


# -------------------------------------------------------------------------- 5: full disk, preprocessing

class FullDisk:
    """Writes into the zip on disk fail with ENOSPC from the first write of `trigger` on, as on a disk that filled
    up there: the rest of the zip, its central directory included, cannot be written either. (Zips in memory,
    such as numpy's .npz, are written as usual.)"""

    def __init__(self, monkeypatch, trigger: str):
        self.trigger, self.full = trigger, False
        real_write, real_end = zipfile._ZipWriteFile.write, zipfile.ZipFile._write_end_record
        disk = self

        def write(self, data):
            if disk.on_disk(self._zipfile):
                disk.full = disk.full or self._zinfo.filename.endswith(disk.trigger)
                disk.refuse()
            return real_write(self, data)

        def end_record(self):
            if disk.on_disk(self):
                disk.full = disk.full or disk.trigger == "central_directory"
                disk.refuse()
            return real_end(self)

        monkeypatch.setattr(zipfile._ZipWriteFile, "write", write)
        monkeypatch.setattr(zipfile.ZipFile, "_write_end_record", end_record)

    @staticmethod
    def on_disk(archive: zipfile.ZipFile) -> bool:
        return isinstance(archive.filename, str) and ".tmp-" in archive.filename

    def refuse(self):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("trigger", [".png", "dataset.json", "embeddings.npz", "central_directory"])
def test_5_a_full_disk_anywhere_in_preprocessing_names_the_zip_and_leaves_no_temporary_file(
        raw_copy, tiny_clip_path, tmp_path, monkeypatch, trigger):
    """The reported case: `error: a file operation: the disk is full`, and train.zip.tmp-PID left on the disk."""
    dest = tmp_path / "out" / "train.zip"
    FullDisk(monkeypatch, trigger)
    message = preprocess_error(["--source", raw_copy["source"], "--dest", str(dest), "--clip_model", tiny_clip_path,
                                "--device", "cpu", "--max-images", "3", "--num_workers", "1"])
    assert message.startswith(f"{dest}: could not be written (the disk is full)")
    assert os.listdir(dest.parent) == []


def test_5_a_source_that_fails_to_read_is_named(raw_copy, tiny_clip_path, tmp_path, monkeypatch):
    """A lost drive under the raw zip: zipfile's read errors name no file."""
    real_read = preprocessing.RawSource.read

    def lost(self, member):
        if "caption" in member:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_read(self, member)

    monkeypatch.setattr(preprocessing.RawSource, "read", lost)
    dest = tmp_path / "out" / "train.zip"
    message = preprocess_error(["--source", raw_copy["source"], "--dest", str(dest), "--clip_model", tiny_clip_path,
                                "--device", "cpu", "--max-images", "2", "--num_workers", "1"])
    assert message.startswith(f"--source {raw_copy['source']}: none of the 2 selected images could be read (first: "
                              f"celeba-caption/")
    assert "Input/output error" in message and os.listdir(dest.parent) == []


# -------------------------------------------------------------------------- 6: inputs that mean nothing

@pytest.mark.parametrize("prompt", ["", "   "])
def test_6_a_blank_prompt_is_refused_before_any_work(tmp_path, tiny_clip_path, monkeypatch, prompt):
    monkeypatch.setattr(generate_image, "load_generator", lambda *args: pytest.fail("the checkpoint was loaded"))
    message = one_line_exit(generate_image.main, ["--prompt", prompt, "--load_epoch", "0", "--checkpoint_path",
                                                  str(tmp_path / "ck"), "--clip_model", tiny_clip_path, "--out_dir",
                                                  str(tmp_path / "out")])
    assert message.startswith(f"--prompt {prompt!r}: is blank") and os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, expected", [
    (["--learning_rate", "inf"], "--learning_rate inf: must be a finite number"),  # the reported case
    (["--learning_rate", "nan"], "--learning_rate nan: must be a finite number"),
    (["--learning_rate", "50"], "--learning_rate 50.0: an Adam step moves every weight by up to the learning rate"),
    (["--g_lr", "inf"], "--g_lr inf: must be a finite number"),
    (["--gamma", "inf"], "--gamma inf: must be a finite number"),
    (["--tau=-inf"], "--tau -inf: must be a finite number"),
    (["--ema_decay", "nan"], "--ema_decay nan: must be a finite number"),
    (["--ca_init_std", "-1"], "--ca_init_std -1.0: must be positive"),
])
def test_6_non_finite_or_absurd_numbers_are_refused_before_any_work(tmp_path, tiny_clip_path, flags, expected):
    argv = train_argv("train.zip", tmp_path / "ck", tmp_path / "res", tiny_clip_path, 1, *flags)
    assert one_line_exit(main.main, argv).startswith(expected)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, expected", [
    (["--width", "256", "--height", "128"],
     "--width 256 --height 128: must be equal (CLIP's crop and every stage are square)"),  # the reported case
    (["--width", "32", "--height", "32"], "--width 32: must be 64 (the first stage's size) to 1024"),
    (["--width", "4096", "--height", "4096"], "--width 4096: must be 64 (the first stage's size) to 1024"),
    (["--emb_dim", "0"], "--emb_dim 0: must be at least 1"),
])
def test_6_impossible_preprocessing_sizes_are_refused_before_any_work(raw_copy, tiny_clip_path, tmp_path,
                                                                      monkeypatch, flags, expected):
    from t2i import clip_utils

    monkeypatch.setattr(clip_utils, "load_clip", lambda *args, **kwargs: pytest.fail("CLIP was loaded"))
    dest = tmp_path / "out.zip"
    message = preprocess_error(["--source", raw_copy["source"], "--dest", str(dest), "--clip_model", tiny_clip_path,
                                "--device", "cpu", *flags])
    assert message.startswith(expected) and not dest.exists()
