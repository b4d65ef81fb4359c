"""check_submission.py passes on a real run's output and fails, naming the file, on broken folders."""
import os
import shutil
import zipfile

import pytest
import torch

import check_submission


@pytest.fixture(scope="module")
def run(demo_quick_run) -> dict:
    """The quick demo's checkpoint folder (a real training run, 3 stages), its graded epoch and its CLIP."""
    assert demo_quick_run["status"] == 0
    out = demo_quick_run["out_dir"]
    return {"checkpoints": os.path.join(out, "checkpoints"), "clip": demo_quick_run["clip_model"],
            "epoch": demo_quick_run["last_epoch"]}


def epoch_file(run: dict, suffix: str) -> str:
    """`epoch_N_<suffix>` of the run's graded epoch N."""
    return f"epoch_{run['epoch']}_{suffix}"


def copy_run(run: dict, tmp_path) -> str:
    folder = str(tmp_path / "ckpt")
    shutil.copytree(run["checkpoints"], folder)
    return folder


def check(folder: str, run: dict, tmp_path, capsys, *extra: str) -> tuple[int, str, str]:
    status = check_submission.main(["--checkpoint_path", folder, "--epoch", str(run["epoch"]), "--clip_model",
                                    run["clip"], "--out_dir", str(tmp_path / "images"), "--num_images", "1",
                                    "--device", "cpu", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_passes_and_packs_a_real_run(run, tmp_path, capsys):
    zip_path = str(tmp_path / "submission.zip")
    status, out, err = check(run["checkpoints"], run, tmp_path, capsys, "--zip", zip_path)
    assert status == 0, err
    assert "OK" in out and "parameters" in out
    for index in (1, 2):
        for size in (64, 128, 256):
            assert os.path.isfile(tmp_path / "images" / f"prompt_{index}" / f"result_{size}.png")
    with zipfile.ZipFile(zip_path) as archive:  # the whole list: tests/test_submission_zip.py
        assert {"hyperparameter.pt", *(epoch_file(run, name) for name in ("Gen.pt", "Dis_0.pt", "Dis_1.pt", "Dis_2.pt")),
                "network.py", "train.py", "report.pdf"} <= set(archive.namelist())


def test_fails_on_a_missing_file_and_packs_nothing(run, tmp_path, capsys):
    folder = copy_run(run, tmp_path)
    os.remove(os.path.join(folder, epoch_file(run, "Dis_1.pt")))
    zip_path = str(tmp_path / "submission.zip")
    status, _, err = check(folder, run, tmp_path, capsys, "--zip", zip_path)
    assert status == 1
    assert f"PROBLEM: {os.path.join(folder, epoch_file(run, 'Dis_1.pt'))}: missing" in err
    assert not os.path.exists(zip_path)


def test_fails_on_a_discriminator_of_another_stage(run, tmp_path, capsys):
    folder = copy_run(run, tmp_path)
    # Stage 1's weights in stage 2's file: what a Dis file from a run with another stage count looks like.
    shutil.copy(os.path.join(folder, epoch_file(run, "Dis_1.pt")), os.path.join(folder, epoch_file(run, "Dis_2.pt")))
    status, _, err = check(folder, run, tmp_path, capsys)
    assert status == 1
    problems = [line for line in err.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1
    assert f"{epoch_file(run, 'Dis_2.pt')}: does not fit the Discriminator of stage 2" in problems[0]


def test_fails_on_hyperparameters_of_another_run(run, tmp_path, capsys):
    folder = copy_run(run, tmp_path)
    path = os.path.join(folder, "hyperparameter.pt")
    hyp = torch.load(path, weights_only=True)
    torch.save({**hyp, "g_in_chans": hyp["g_in_chans"] * 2}, path)
    status, _, err = check(folder, run, tmp_path, capsys)
    assert status == 1
    assert f"{epoch_file(run, 'Gen.pt')}: does not fit the Generator built from hyperparameter.pt" in err


def test_fails_on_two_stages_and_on_missing_keys(run, tmp_path, capsys):
    folder = copy_run(run, tmp_path)
    path = os.path.join(folder, "hyperparameter.pt")
    hyp = torch.load(path, weights_only=True)
    torch.save({**hyp, "num_stage": 2}, path)
    status, _, err = check(folder, run, tmp_path, capsys)
    assert status == 1 and "hyperparameter.pt: num_stage is 2" in err
    del hyp["d_out_chans"]
    torch.save(hyp, path)
    status, _, err = check(folder, run, tmp_path, capsys)
    assert status == 1 and "hyperparameter.pt: lacks the keys ['d_out_chans']" in err


def test_fails_on_a_missing_folder(run, tmp_path, capsys):
    status, _, err = check(str(tmp_path / "nowhere"), run, tmp_path, capsys)
    assert status == 1 and "no such folder" in err
