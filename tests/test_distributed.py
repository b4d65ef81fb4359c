"""Training on several processes (t2i/training/distributed.py), on the CPU with Gloo and two processes.

Two processes at batch B must train as one process at batch 2B: the same losses and weights to float rounding
(synchronised BatchNorm, gathered negatives, summed gradients, the global batch's noise). End to end under
torchrun: process 0's files are the contract's and load in the course's generate_image.py, a run killed mid-epoch
resumes to the uninterrupted run's weights, and a failing process stops the run with one line naming it.
"""
import glob
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import main
import network
import train
from models import NETWORKS
from t2i import checkpoints, harness
from t2i.data import batching
from t2i.training import distributed, options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The woman is young and has blond hair, and arched eyebrows."
IMAGES, BATCH, SEED = 21, 4, 7  # 21 images in global batches of 8: 8, 8 and 5 (split 3 + 2)


def test_each_process_takes_its_rows_of_every_global_batch():
    one = batching.EpochBatchSampler(IMAGES, 2 * BATCH)
    shards = [batching.EpochBatchSampler(IMAGES, BATCH, rank=rank, world_size=2) for rank in range(2)]
    for sampler in (one, *shards):
        sampler.set_position(epoch=3)
    for step, whole in enumerate(one.batches()):
        assert shards[0].batches()[step] + shards[1].batches()[step] != whole  # strided, not halves
        assert sorted(shards[0].batches()[step] + shards[1].batches()[step]) == sorted(whole)
        assert shards[0].batches()[step] == whole[0::2] and shards[1].batches()[step] == whole[1::2]
        assert shards[1].global_batch_size(step) == len(whole)
    assert [len(batch) for batch in shards[0].batches()] == [4, 4, 3]


def test_one_process_uses_no_collective(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a collective in a one-process run")

    for name in ("all_reduce", "all_gather", "broadcast", "barrier", "all_gather_object"):
        monkeypatch.setattr(torch.distributed, name, refuse)
    args = step_args(BATCH)
    G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(torch.device("cpu"))
    run = train.run_helpers(args, torch.device("cpu"), G, D_lst, optim_g, optim_d_lst)
    assert run.step.processes is None and distributed.active() is None
    loader = batching.training_loader(toy_dataset(), BATCH, 0, False)
    d_loss, g_loss = run_epoch(args, loader, G, D_lst, optim_g, optim_d_lst, run)
    assert torch.isfinite(torch.tensor([d_loss, g_loss])).all()


# ----------------------------------------------------------------------------------------------------------
# Two processes at batch B against one at batch 2B
# ----------------------------------------------------------------------------------------------------------

def step_args(batch_size: int, *flags: str):
    """1 stage, tiny widths, the EMA generator on; mismatched captions off (they pair within a process's rows)."""
    return options.complete(options.parse([
        "--batch_size", str(batch_size), "--num_stage", "1", "--projection_dim", "8", "--noise_dim", "8",
        "--g_in_chans", "32", "--d_in_chans", "4", "--use_uncond_loss", "--use_contrastive_loss", "--no-mismatch",
        "--ema", "--device", "cpu", *flags], "test"))


def toy_dataset() -> list:
    """(stage images, image embedding, text embedding) items, as the course's loader gives them."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(IMAGES, 3, 64, 64, generator=generator) * 2 - 1
    text = torch.nn.functional.normalize(torch.randn(IMAGES, 512, generator=generator), dim=-1)
    return [([images[i]], text[i], text[i]) for i in range(IMAGES)]


def run_epoch(args, loader, G, D_lst, optim_g, optim_d_lst, run) -> tuple[float, float]:
    d_loss, g_loss, _ = train.train_step(loader, args.noise_dim, torch.device("cpu"), G, D_lst, optim_g, optim_d_lst,
                                         torch.nn.BCEWithLogitsLoss(), 1, True, True, 1, None, args.gamma, args.lam,
                                         **run._asdict())
    return d_loss, g_loss


def weights(G, D_lst, run) -> dict:
    """Copies of the weights now (state dicts hold the live tensors)."""
    return {name: {key: value.clone() for key, value in model.state_dict().items()}
            for name, model in (("G", G), ("D", D_lst[0]), ("EMA", run.ema.model))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_worker(rank: int, port: int, out: str) -> None:
    """One of two processes: the epoch at batch BATCH, and a synchronised BatchNorm on uneven shares."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.launched() as processes:
        processes.device("cpu")
        args = step_args(BATCH)
        torch.manual_seed(0)
        G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(torch.device("cpu"))
        run = train.run_helpers(args, torch.device("cpu"), G, D_lst, optim_g, optim_d_lst)
        loader = batching.training_loader(toy_dataset(), BATCH, 0, False, rank, 2)
        processes.noise_generator.manual_seed(SEED)
        losses = run_epoch(args, loader, G, D_lst, optim_g, optim_d_lst, run)
        result = {"losses": losses, "weights": weights(G, D_lst, run), "batchnorm": synced_batchnorm(rank)}
        # Another epoch in which process 1's KL term is NaN once: both processes must skip that step.
        kl, calls = train.KL_divergence, {"n": 0}

        def sometimes_nan(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return kl(mu, log_sigma) * (float("nan") if rank == 1 and calls["n"] == 2 else 1.0)

        train.KL_divergence = sometimes_nan
        loader.batch_sampler.set_position(epoch=1)
        run_epoch(args, loader, G, D_lst, optim_g, optim_d_lst, run)
        result["after_nan"] = {"skipped": run.step.skipped, "updates": run.step.num_updates, "G": G.state_dict()}
        torch.save(result, os.path.join(out, f"rank_{rank}.pt"))


def batchnorm_input() -> torch.Tensor:
    return torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3 + 2


def synced_batchnorm(rank: int | None) -> dict:
    """A BatchNorm2d of 5 images split 3 + 2 (rank None: all five in one process): output, input and weight
    gradients, running statistics."""
    layer = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    if rank is not None:
        layer = torch.nn.Sequential(layer)
        distributed.convert_batchnorm(layer)
        distributed.active().start_batch(5)
    x, loss_weights = batchnorm_input(), torch.arange(5 * 3 * 4 * 4).reshape(5, 3, 4, 4).float()
    if rank is not None:
        x, loss_weights = x[rank::2], loss_weights[rank::2]
    x.requires_grad_(True)
    out = layer(x)
    (out * loss_weights).sum().backward()  # summed over the processes: the loss of the whole batch
    module = layer if rank is None else layer[0]
    return {"out": out.detach(), "grad": x.grad, "weight_grad": module.weight.grad, "bias_grad": module.bias.grad,
            "running_mean": module.running_mean, "running_var": module.running_var}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two_processes"))
    mp.spawn(two_process_worker, args=(free_port(), out), nprocs=2)
    return [torch.load(os.path.join(out, f"rank_{rank}.pt"), weights_only=True) for rank in range(2)]


def test_two_processes_at_batch_b_train_as_one_at_2b(two_processes):
    args = step_args(2 * BATCH)
    torch.manual_seed(0)
    G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(torch.device("cpu"))
    run = train.run_helpers(args, torch.device("cpu"), G, D_lst, optim_g, optim_d_lst)
    loader = batching.training_loader(toy_dataset(), 2 * BATCH, 0, False)
    torch.manual_seed(SEED)  # the generator's noise: z and the conditioning augmentation's eps
    losses = run_epoch(args, loader, G, D_lst, optim_g, optim_d_lst, run)
    expected = weights(G, D_lst, run)
    # The mapping's Linear bias feeds a BatchNorm, which subtracts the batch mean: its gradient is zero up to
    # rounding, and Adam normalises that rounding noise into steps of up to lr either way (3 steps here); the
    # BatchNorm's running mean follows the bias. Every other weight agrees to float rounding.
    rounding_steps = {"g_layer.0.mapping.0.bias": 2 * 3 * args.learning_rate,
                      "g_layer.0.mapping.1.running_mean": 2 * 3 * args.learning_rate}
    for result in two_processes:
        torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-5)
        for model, state in expected.items():
            for key, value in state.items():
                torch.testing.assert_close(result["weights"][model][key], value, rtol=1e-4,
                                           atol=rounding_steps.get(key, 1e-5), msg=f"{model} {key}")
    for key, value in two_processes[0]["weights"]["G"].items():  # the processes hold the same weights exactly
        assert torch.equal(value, two_processes[1]["weights"]["G"][key])


def test_a_non_finite_loss_in_one_process_is_skipped_by_both(two_processes):
    for result in two_processes:
        assert (result["after_nan"]["skipped"], result["after_nan"]["updates"]) == (1, 3 + 2)
    for key, value in two_processes[0]["after_nan"]["G"].items():
        assert torch.equal(value, two_processes[1]["after_nan"]["G"][key]), key
        assert not value.is_floating_point() or torch.isfinite(value).all(), key


def test_synchronised_batchnorm_equals_batchnorm_on_the_global_batch(two_processes):
    whole = synced_batchnorm(None)
    for rank, result in enumerate(two_processes):
        part = result["batchnorm"]
        torch.testing.assert_close(part["out"], whole["out"][rank::2])
        torch.testing.assert_close(part["running_mean"], whole["running_mean"])
        torch.testing.assert_close(part["running_var"], whole["running_var"])
    # The input gradient is each process's rows; the weight gradients are sums, which the all_reduce completes.
    torch.testing.assert_close(two_processes[0]["batchnorm"]["grad"], whole["grad"][0::2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two_processes[1]["batchnorm"]["grad"], whole["grad"][1::2], rtol=1e-4, atol=1e-5)
    for name in ("weight_grad", "bias_grad"):
        torch.testing.assert_close(two_processes[0]["batchnorm"][name] + two_processes[1]["batchnorm"][name],
                                   whole[name], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# torchrun end to end
# ----------------------------------------------------------------------------------------------------------

def train_argv(data, clip_path, folder, epochs, *extra):
    return ["--train_data", data, "--batch_size", "4", "--num_epochs", str(epochs), "--learning_rate", "2e-4",
            "--report_interval", "1", "--noise_dim", "8", "--projection_dim", "8", "--clip_embedding_dim", "512",
            "--checkpoint_path", os.path.join(folder, "checkpoints"), "--result_path", os.path.join(folder, "results"),
            "--num_stage", "3", "--resume_epoch", "-1", "--use_uncond_loss", "--use_contrastive_loss", "--clip_model",
            clip_path, "--g_in_chans", "64", "--d_in_chans", "4", "--device", "cpu", *extra]


def torchrun(argv: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("T2I_TEST_FAULT", None)
    if fault:
        env["T2I_TEST_FAULT"] = fault
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "tests", "torchrun_main.py"), *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)


def run_ok(argv: list[str]) -> subprocess.CompletedProcess:
    result = torchrun(argv)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def epoch_files(epoch: int) -> list[str]:
    return [f"epoch_{epoch}_Gen.pt"] + [f"epoch_{epoch}_Dis_{stage}.pt" for stage in range(3)]


def assert_same_files(folder_a: str, folder_b: str, names: list[str]) -> None:
    for name in names:
        a = torch.load(os.path.join(folder_a, name), weights_only=True)
        b = torch.load(os.path.join(folder_b, name), weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs"


@pytest.fixture(scope="module")
def straight_run(preprocessed_zips, tiny_clip_path, tmp_path_factory):
    """Two epochs on two processes, uninterrupted: its folder and its output."""
    folder = str(tmp_path_factory.mktemp("straight"))
    result = run_ok(train_argv(preprocessed_zips["train"], tiny_clip_path, folder, 2, "--save_every_steps", "1"))
    return {"folder": folder, "result": result}


def test_process_0_writes_the_contract_files_and_prints_the_global_batch(straight_run):
    checkpoint_path = os.path.join(straight_run["folder"], "checkpoints")
    assert sorted(os.listdir(checkpoint_path)) == sorted(
        epoch_files(0) + epoch_files(1) + ["epoch_0_state.pt", "epoch_1_state.pt", "hyperparameter.pt",
                                           "loss_log.csv", "run_options.json", "tensorboard"])
    assert len(os.listdir(os.path.join(checkpoint_path, "tensorboard"))) == 1  # one event file: process 0's
    assert sorted(os.listdir(os.path.join(straight_run["folder"], "results"))) == ["epoch_0.png", "epoch_1.png",
                                                                                   "loss_curve.png"]
    hyp = checkpoints.read_hyperparameters(checkpoint_path)
    assert hyp["batch_size"] == 4  # the contract's: images per process
    for stage in range(3):  # strictly, as the graders load them: no `module.` prefix, the same keys
        checkpoints.load_state_file(checkpoints.build_discriminator(hyp, stage, "cpu", network),
                                    os.path.join(checkpoint_path, f"epoch_1_Dis_{stage}.pt"))
    checkpoints.load_generator(checkpoint_path, 1, networks=NETWORKS)
    state = checkpoints.read_training_state(os.path.join(checkpoint_path, "epoch_1_state.pt"))
    assert state["world_size"] == 2 and len(state["processes"]["rng"]) == 2
    output = straight_run["result"].stdout
    assert output.count("global batch of 8") == 1  # printed once: process 0 alone prints
    assert output.count("Epoch: 1 start") == 1


def test_files_of_two_processes_load_in_the_course_generate_image(straight_run, tiny_clip_path, tmp_path):
    workdir = harness.prepare_workdir(str(tmp_path / "course"), os.path.join(ROOT, "network.py"),
                                      os.path.join(ROOT, "train.py"))
    shutil.copytree(os.path.join(straight_run["folder"], "checkpoints"), os.path.join(workdir, "checkpoints"))
    result = harness.run_course_script(workdir, "generate_image.py", ["--prompt", PROMPT, "--load_epoch", "1",
                                                                      "--checkpoint_path", "checkpoints"],
                                       clip_standin=tiny_clip_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for size in (64, 128, 256):
        assert os.path.isfile(os.path.join(workdir, f"result_{size}.png"))


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(straight_run, preprocessed_zips, tiny_clip_path,
                                                                     tmp_path, capsys):
    folder = str(tmp_path / "killed")
    argv = train_argv(preprocessed_zips["train"], tiny_clip_path, folder, 2, "--save_every_steps", "1")
    # 3 iterations an epoch: process 0 dies as epoch 1's step 1 begins, its snapshot of step 0 written.
    killed = torchrun(argv, fault="0:5:crash")
    assert killed.returncode != 0
    checkpoint_path = os.path.join(folder, "checkpoints")
    assert checkpoints.complete_epochs(checkpoint_path, 3) == [0]
    snapshot = checkpoints.read_training_state(os.path.join(checkpoint_path, checkpoints.MID_EPOCH_FILE))
    assert (snapshot["epoch"], snapshot["step"], snapshot["world_size"]) == (1, 1, 2)
    elsewhere = str(tmp_path / "one_process")
    shutil.copytree(folder, elsewhere)

    argv[argv.index("--resume_epoch") + 1] = "latest"
    resumed = run_ok(argv + ["--resume_checkpoint_path", checkpoint_path])
    assert "epoch 1, step 1" in resumed.stdout
    straight = os.path.join(straight_run["folder"], "checkpoints")
    assert_same_files(straight, checkpoint_path, epoch_files(1))

    # With another number of processes the snapshot's position means nothing: on from the last complete epoch.
    capsys.readouterr()
    main.main(train_argv(preprocessed_zips["train"], tiny_clip_path, elsewhere, 2, "--resume_epoch", "latest",
                         "--resume_checkpoint_path", os.path.join(elsewhere, "checkpoints")))
    output = capsys.readouterr().out
    assert "was made by 2 process(es) and this run has 1: an epoch cannot go on mid-way" in output
    assert "this run has 1: it continues with a global batch of 4" in output
    assert checkpoints.complete_epochs(os.path.join(elsewhere, "checkpoints"), 3) == [0, 1]
    # The snapshot it could not use is kept, set aside where --overwrite would have put it.
    set_aside = glob.glob(os.path.join(elsewhere, "checkpoints", "previous_run_*", checkpoints.MID_EPOCH_FILE))
    assert len(set_aside) == 1 and checkpoints.read_training_state(set_aside[0])["world_size"] == 2


def test_a_failing_process_stops_the_run_with_one_line_naming_it(preprocessed_zips, tiny_clip_path, tmp_path):
    folder = str(tmp_path / "failing")
    result = torchrun(train_argv(preprocessed_zips["train"], tiny_clip_path, folder, 1), fault="1:2:error")
    assert result.returncode != 0
    errors = re.findall(r"error: process [^\n]*", result.stderr)
    assert "error: process 1 of 2: an injected failure" in errors
    assert all(line == "error: process 1 of 2: an injected failure" or "another process stopped first" in line
               for line in errors), errors
    assert checkpoints.complete_epochs(os.path.join(folder, "checkpoints"), 3) == []
