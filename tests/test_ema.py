"""The EMA generator is saved with BatchNorm statistics of its own weights, not the raw generator's."""
import copy

import torch

import main
import network
from models import NETWORKS
from network import Generator
from read_dataset import ZipDataset
from t2i import checkpoints
from t2i.training.ema import BATCHNORM_SEED, GeneratorEMA, recompute_batchnorm


def batchnorm_inputs(model: torch.nn.Module, make_batches, seed: int) -> dict[str, list[torch.Tensor]]:
    """Each BatchNorm layer's input on every batch of `make_batches()`, with `model` in train mode (what training
    normalises), in the random stream of `seed` that the batches and the CA's noise draw from. A copy of `model`
    runs them, since train mode moves the running statistics."""
    model = copy.deepcopy(model)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_pre_hook(lambda module, args, name=name: seen.setdefault(name, []).append(
        args[0].detach().transpose(0, 1).flatten(1))) for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    model.train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for batch in make_batches():
            model(*batch)
    for hook in hooks:
        hook.remove()
    return seen


def assert_statistics_of(model: torch.nn.Module, make_batches, seed: int) -> None:
    """`model`'s running statistics are the average over the batches of its own train-mode batch statistics."""
    for name, inputs in batchnorm_inputs(model, make_batches, seed).items():
        norm = model.get_submodule(name)
        torch.testing.assert_close(norm.running_mean, torch.stack([x.mean(1) for x in inputs]).mean(0))
        torch.testing.assert_close(norm.running_var, torch.stack([x.var(1) for x in inputs]).mean(0))


def small_generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(512, 16, 8, 64, 3, 2, "cpu")


def test_recomputed_statistics_make_eval_mode_draw_what_train_mode_draws():
    raw = small_generator(0)
    ema = GeneratorEMA(raw, decay=0.9)
    with torch.no_grad():  # training moves the raw weights; the average lags behind them
        for parameter in raw.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    raw.train()
    with torch.no_grad():
        for _ in range(20):
            raw(torch.nn.functional.normalize(torch.randn(16, 512), dim=-1), torch.randn(16, 8))
    ema.update(raw, num_updates=0)  # the average's weights move part of the way; the statistics are the raw G's

    batch = (torch.nn.functional.normalize(torch.randn(64, 512), dim=-1), torch.randn(64, 8))

    def eval_and_train_images(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = []
        for training in (False, True):
            model.train(training)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(1)  # the same CA noise in both modes
                outputs.append(model(*batch)[0][-1])
        model.eval()
        return outputs[0], outputs[1]

    eval_images, train_images = eval_and_train_images(ema.model)
    before = (eval_images - train_images).abs().mean()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        recompute_batchnorm(ema.model, [batch])
    assert not ema.model.training
    assert_statistics_of(ema.model, lambda: [batch], seed=1)
    eval_images, train_images = eval_and_train_images(ema.model)
    after = (eval_images - train_images).abs().mean()
    # Not zero: the running variance is the unbiased one (n / (n - 1) of what train mode divides by).
    assert after < 0.01 and after < before / 10, (float(before), float(after))


def test_the_saved_ema_generator_holds_statistics_of_its_own_weights(preprocessed_zips, tiny_clip_path, tmp_path):
    folder = tmp_path / "checkpoints"
    main.main(["--train_data", preprocessed_zips["train"], "--batch_size", "4", "--num_epochs", "1",
               "--report_interval", "100", "--noise_dim", "8", "--projection_dim", "8", "--checkpoint_path",
               str(folder), "--result_path", str(tmp_path / "results"), "--num_stage", "1", "--clip_model",
               tiny_clip_path, "--g_in_chans", "64", "--d_in_chans", "4", "--recipe", "fast", "--ema",
               "--device", "cpu"])
    saved, hyp = checkpoints.load_generator(str(folder), 0, networks=NETWORKS)
    raw = checkpoints.build_generator(hyp, "cpu", network)
    raw.load_state_dict(torch.load(folder / "epoch_0_state.pt", weights_only=True)["trainer"]["raw_generator"])
    # The batches the run measured on, drawn again as the run's GeneratorEMA draws them.
    ema = GeneratorEMA(raw, 0.999, ZipDataset(preprocessed_zips["train"], 1), batch_size=4, noise_dim=8)
    assert_statistics_of(saved, lambda: ema.batchnorm_batches(torch.device("cpu")), seed=BATCHNORM_SEED)
    # ... and not the raw generator's, which training copied into the average.
    for name, module in saved.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert not torch.allclose(module.running_var, raw.get_submodule(name).running_var), name
