"""demo.py --quick runs the whole pipeline end to end on the CPU and says plainly what it stood in for."""
import json
import os
import zipfile

import demo


def test_quick_demo_runs_end_to_end(demo_quick_run, capsys):
    assert demo_quick_run["status"] == 0
    out = demo_quick_run["out_dir"]
    expected = ["data/train_data.zip", "data/test_data.zip", "checkpoints/hyperparameter.pt",
                "checkpoints/epoch_0_Gen.pt", "checkpoints/loss_log.csv", "results/epoch_0.png",
                "results/loss_curve.png", "eval/report.json", "eval/report_grid.png", "submission_check/prompts.png",
                "submission.zip"]
    expected += [f"generated/prompt_{i + 1}/{name}" for i in range(len(demo.DEMO_PROMPTS))
                 for name in ("result_64.png", "result_128.png", "result_256.png", "result_grid.png")]
    missing = [path for path in expected if not os.path.isfile(os.path.join(out, path))]
    assert not missing, f"the demo did not write {missing}"
    with open(os.path.join(out, "eval", "report.json")) as f:
        report = json.load(f)
    for key in ("fid", "kid_mean", "is_mean", "clip_score"):
        assert isinstance(report[key], float), key
    with zipfile.ZipFile(os.path.join(out, "submission.zip")) as archive:
        assert sorted(archive.namelist()) == sorted(
            ["hyperparameter.pt", "epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_0_Dis_1.pt", "epoch_0_Dis_2.pt"])


def test_stand_ins_are_announced():
    notes = " ".join(demo.stand_in_notes("offline", "offline"))
    assert "random-weight CLIP" in notes and "OFFLINE" in notes and "pipeline runs" in notes
    assert "random-weight stand-in" in notes and "not comparable" in notes
    assert "OFFLINE" not in " ".join(demo.stand_in_notes(None, None))


def test_quick_demo_is_quick(demo_quick_run):
    # The quick mode is for the test suite and must stay small. CPU time, not wall time: a busy machine slows
    # the wall clock but not the work.
    assert demo_quick_run["cpu_seconds"] < 150, f"demo --quick used {demo_quick_run['cpu_seconds']:.0f} CPU s"
