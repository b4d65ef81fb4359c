"""Evaluation: metric sanity, agreement with torch-fidelity's own API, the CLI's report and its errors.

Everything runs offline on random weights: a random-weight InceptionV3 in torch-fidelity's layout (given the
way a user gives the real one, as a weights file) and the tiny random CLIP of conftest. Image counts are small
because InceptionV3 costs about 0.1 s an image on a 2-core CPU.
"""
import io
import json
import os
import zipfile
from argparse import Namespace

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity

import evaluate
import network
from t2i.errors import T2IError
from t2i.evaluation import evaluator as evaluation
from t2i.evaluation import metrics
from train_utils import save_hyp, save_model

NUM_IMAGES = 10
CLIP_DIM = 512


def smooth_images(count: int, seed: int, size: int = 256) -> torch.Tensor:
    """uint8 [count, 3, size, size]: random 8x8 colour fields upsampled, with some fine texture; picture-like
    enough that blurring and shifting change Inception features."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images = images + 0.15 * torch.rand(count, 3, size, size, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
    out = images.float()
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), kernel.view(3, 1, 1, -1), groups=3)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(3, 1, -1, 1), groups=3)
    return out.round().clamp(0, 255).to(torch.uint8)


def write_folder(images: torch.Tensor, folder) -> str:
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{i:04d}.png"))
    return str(folder)


def write_test_zip(path, images: torch.Tensor, embedding_dim: int, captions_per_image: int = 3, seed: int = 0) -> str:
    """A preprocessed zip in the contract's format: NNNNN/imgNNNNNNNN.png and dataset.json with raw embeddings."""
    rng = np.random.default_rng(seed)
    img_features, txt_features = [], []
    with zipfile.ZipFile(path, "w") as archive:
        for i, image in enumerate(images):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            buffer = io.BytesIO()
            PIL.Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
            img_features.append([name, rng.normal(size=embedding_dim).tolist()])
            txt_features.append([name, rng.normal(size=(captions_per_image, embedding_dim)).tolist()])
        archive.writestr("dataset.json", json.dumps({"clip_img_features": img_features,
                                                     "clip_txt_features": txt_features}))
    return str(path)


def make_generator(num_stage: int, seed: int = 0) -> network.Generator:
    torch.manual_seed(seed)
    generator = network.Generator(CLIP_DIM, 16, 8, 64, 3, num_stage, "cpu")
    generator.apply(network.weight_init)
    return generator


def course_args(checkpoint_path: str, num_stage: int) -> Namespace:
    return Namespace(train_data="train.zip", batch_size=4, num_epochs=1, learning_rate=2e-4, report_interval=50,
                     noise_dim=8, projection_dim=16, clip_embedding_dim=CLIP_DIM, checkpoint_path=checkpoint_path,
                     result_path=checkpoint_path, num_stage=num_stage, resume_epoch=-1, use_uncond_loss=True,
                     use_contrastive_loss=True, resume_checkpoint_path=None)


@pytest.fixture(scope="module")
def inception(inception_path):
    return metrics.load_inception(inception_path, "cpu")


@pytest.fixture(scope="module")
def real_set(inception):
    images = smooth_images(NUM_IMAGES, seed=1)
    return images, metrics.inception_features(inception, images, progress=False)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("checkpoint"))
    args = course_args(folder, 3)
    generator = make_generator(3)
    discriminators = [network.Discriminator(16, 3, 8, 1, CLIP_DIM, stage, "cpu") for stage in range(3)]
    for discriminator in discriminators:
        discriminator.apply(network.weight_init)
    save_hyp(args, 64, 3, 8, 1)
    save_model(args, generator, discriminators, 0, 3)
    return folder


@pytest.fixture(scope="module")
def test_zip(tmp_path_factory) -> str:
    return write_test_zip(tmp_path_factory.mktemp("data") / "test.zip", smooth_images(12, seed=2), CLIP_DIM)


@pytest.fixture(scope="module")
def blurred_set(inception, real_set):
    """A blurred copy of the real set, its features and its figures against the real set (computed once:
    each FID solves a 2048 x 2048 eigenvalue problem, seconds on a CPU)."""
    images = blur(real_set[0], 2.0)
    features = metrics.inception_features(inception, images, batch_size=3, progress=False)
    return images, metrics.fidelity_metrics(features, real_set[1])


def test_fid_is_zero_on_itself_and_grows_with_blur_and_shift(inception, real_set, blurred_set):
    images, real = real_set
    itself = metrics.frechet_distance(real, real)
    blur2 = blurred_set[1]["fid"]
    more_blur = metrics.inception_features(inception, blur(images, 5.0), progress=False)
    shifted = metrics.inception_features(inception, torch.roll(images, shifts=(64, 64), dims=(2, 3)), progress=False)
    assert abs(itself) < 1e-3 * blur2
    assert blur2 < metrics.frechet_distance(more_blur, real)
    assert metrics.frechet_distance(shifted, real) > 100 * abs(itself)
    assert abs(metrics.kernel_distance(real, real)[0]) < blurred_set[1]["kid_mean"]
    assert blurred_set[1]["kid_mean"] < metrics.kernel_distance(more_blur, real)[0]


def test_inception_score_of_identical_images_is_one(inception):
    same = smooth_images(1, seed=3).repeat(10, 1, 1, 1)
    mean, std = metrics.inception_score(metrics.inception_features(inception, same, progress=False))
    assert mean == pytest.approx(1.0, abs=1e-6) and std == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("num_1, num_2, repeats", [(10, 30, 1), (30, 10, 1), (200, 300, 1), (100, 80, 10)])
def test_fid_cross_term_equals_torch_fidelity_formula(num_1, num_2, repeats):
    """Fewer images than features (the factor is the centred features), more (Cholesky), and a singular
    covariance (each image 10 times: torch-fidelity's own computation) give torch-fidelity's FID."""
    generator = torch.Generator().manual_seed(num_1)
    dim = 64
    first = (torch.randn(num_1 // repeats, dim, generator=generator) * torch.rand(dim, generator=generator))
    first = first.repeat(repeats, 1)
    second = torch.randn(num_2, dim, generator=generator) ** 2
    theirs = torch_fidelity.metric_fid.fid_statistics_to_metric(
        torch_fidelity.metric_fid.fid_features_to_statistics(first),
        torch_fidelity.metric_fid.fid_features_to_statistics(second), verbose=False)
    ours = metrics.frechet_distance({metrics.FID_LAYER: first}, {metrics.FID_LAYER: second})
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-7)


def test_figures_equal_torch_fidelity_calculate_metrics_on_folders(inception_path, real_set, blurred_set, tmp_path):
    (real_images, _), (generated_images, ours) = real_set, blurred_set
    theirs = torch_fidelity.calculate_metrics(
        input1=write_folder(generated_images, tmp_path / "generated"),
        input2=write_folder(real_images, tmp_path / "real"),
        isc=True, fid=True, kid=True, kid_subset_size=NUM_IMAGES, feature_extractor_weights_path=inception_path,
        cuda=False, cache=False, save_cpu_ram=True, verbose=False)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    # 10 images a set: every KID subset is the whole set, so torch-fidelity's spread is 0 by construction; ours
    # says so (None: not measured) rather than print it as a measurement.
    assert ours["kid_std"] is None and theirs["kernel_inception_distance_std"] < 1e-6
    assert ours["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-3, abs=1e-9)


def test_cli_writes_report_with_every_figure_and_a_grid(checkpoint_dir, test_zip, tiny_clip_path, inception_path,
                                                        tmp_path, capsys):
    out = tmp_path / "reports" / "epoch0.json"
    code = evaluate.main(["--checkpoint_path", checkpoint_dir, "--load_epoch", "0", "--test_data", test_zip,
                          "--clip_model", tiny_clip_path, "--inception_weights", inception_path, "--device", "cpu",
                          "--batch_size", "5", "--num_samples", "10", "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    for key in ("fid", "kid_mean", "is_mean", "is_std", "clip_score", "clip_score_real"):
        assert isinstance(report[key], float) and np.isfinite(report[key]), key
    assert report["protocol"] == "standard"
    assert report["kid_std"] is None and len(report["caveats"]) == 2  # 10 images: see test_silently_wrong.py
    assert report["num_samples"] == 10 and report["generated_size"] == 256 and report["eval_size"] == 256
    assert report["is_splits"] == 10 and report["kid_subset_size"] == 10
    assert -100 <= report["clip_score"] <= 100
    grid = tmp_path / "reports" / "epoch0_grid.png"
    assert report["grid"] == str(grid) and PIL.Image.open(grid).size[0] > 256
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("FID ") and "IS " in last_line and "CLIP " in last_line and str(out) in last_line


def test_in_memory_evaluation_is_reproducible_and_keeps_the_callers_rng(test_zip, tiny_clip_path, inception_path):
    from t2i import clip_utils
    dataset = evaluation.load_test_dataset(test_zip, CLIP_DIM, progress=False)
    evaluator = evaluation.Evaluator(dataset, batch_size=4, clip_model=clip_utils.load_clip(tiny_clip_path),
                                   inception_weights=inception_path, seed=3, progress=False)
    generator = make_generator(3).train()
    rng_before = torch.get_rng_state()
    first = evaluator.generate(generator)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert generator.training
    assert torch.equal(first, evaluator.generate(generator))
    assert first.shape == (12, 3, 256, 256) and first.dtype == torch.uint8


def test_two_stage_generator_is_upsampled_and_the_grid_is_written(test_zip, inception_path, tmp_path):
    dataset = evaluation.load_test_dataset(test_zip, CLIP_DIM, progress=False)
    evaluator = evaluation.Evaluator(dataset, num_samples=10, batch_size=8, inception_weights=inception_path,
                                     progress=False)
    figures = evaluator(make_generator(2), str(tmp_path / "eval" / "grid.png"))
    assert figures["generated_size"] == 128 and figures["eval_size"] == 256 and figures["num_samples"] == 10
    assert figures["clip_score"] is None
    evaluation.write_report(str(tmp_path / "eval" / "report.json"), figures)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["fid"] == figures["fid"]
    assert (tmp_path / "eval" / "grid.png").is_file()


def test_a_galip_generator_is_generated_for_too(test_zip, inception_path):
    """GALIP's generator calls its text width clip_embedding_dim (network.py's: text_embedding_dim)."""
    import network_galip

    dataset = evaluation.load_test_dataset(test_zip, CLIP_DIM, progress=False)
    evaluator = evaluation.Evaluator(dataset, num_samples=10, batch_size=5, inception_weights=inception_path,
                                     progress=False)
    torch.manual_seed(0)
    images = evaluator.generate(network_galip.Generator(CLIP_DIM, 16, 8, 16, 3, 1, "cpu"))
    assert images.shape == (10, 3, 256, 256) and images.dtype == torch.uint8


def run_cli_error(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(argv + ["--device", "cpu", "--quiet"])
    line = str(exit_.value.code)  # printed to stderr, status 1, when run as a command
    assert "\n" not in line and line.startswith("error: "), line
    return line


def test_missing_checkpoint_is_a_one_line_error(test_zip, tmp_path, capsys):
    line = run_cli_error(["--checkpoint_path", str(tmp_path / "nowhere"), "--load_epoch", "0",
                          "--test_data", test_zip], capsys)
    assert "--checkpoint_path" in line and "nowhere" in line


def test_missing_epoch_is_a_one_line_error(checkpoint_dir, test_zip, capsys):
    line = run_cli_error(["--checkpoint_path", checkpoint_dir, "--load_epoch", "7", "--test_data", test_zip], capsys)
    assert "epoch_7_Gen.pt" in line and "complete epochs in" in line and ": [0])" in line


def test_test_zip_of_another_embedding_size_is_a_one_line_error(checkpoint_dir, tmp_path, capsys):
    other = write_test_zip(tmp_path / "test_256.zip", smooth_images(10, seed=5, size=64), 256)
    line = run_cli_error(["--checkpoint_path", checkpoint_dir, "--load_epoch", "0", "--test_data", other], capsys)
    assert "test_256.zip" in line and "256-d" in line and "--emb_dim 512" in line


def test_missing_test_zip_and_too_few_samples_are_one_line_errors(checkpoint_dir, test_zip, tmp_path, capsys):
    line = run_cli_error(["--checkpoint_path", checkpoint_dir, "--load_epoch", "0",
                          "--test_data", str(tmp_path / "absent.zip")], capsys)
    assert "absent.zip" in line and "no such test zip" in line
    line = run_cli_error(["--checkpoint_path", checkpoint_dir, "--load_epoch", "0", "--test_data", test_zip,
                          "--num_samples", "5"], capsys)
    assert "--num_samples 5" in line


def test_inception_file_with_wrong_keys_is_a_one_line_error(checkpoint_dir, test_zip, tiny_clip_path, tmp_path,
                                                            capsys):
    wrong = tmp_path / "wrong_inception.pt"
    torch.save({"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(1008)}, wrong)
    line = run_cli_error(["--checkpoint_path", checkpoint_dir, "--load_epoch", "0", "--test_data", test_zip,
                          "--clip_model", tiny_clip_path, "--inception_weights", str(wrong)], capsys)
    assert "--inception_weights" in line and "wrong_inception.pt" in line and "keys missing" in line
    not_a_state_dict = tmp_path / "notes.txt"
    not_a_state_dict.write_text("not weights")
    with pytest.raises(T2IError, match="not a PyTorch Inception weights file"):
        metrics.check_inception_weights(str(not_a_state_dict))
