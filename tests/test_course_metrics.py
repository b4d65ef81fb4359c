"""The graders' FID and IS (`evaluate.py --protocol course`, t2i/evaluation/course.py), offline.

The protocol runs end to end on a tiny checkpoint and a 6-image test zip (the loader's batch 2 instead of the
graders' 128, so three batches), with a random-weight stand-in of torchvision's Inception given as a weights file.
Its figures are checked against an independent computation: the test records the images the protocol hands
to Inception, runs its own copy of the network on them, and computes FID and IS from those probabilities with
numpy. Inception costs about 0.1 s an image on a 2-core CPU; the run scores 18 images.
"""
import contextlib
import io
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from test_evaluate import CLIP_DIM, course_args, make_generator, smooth_images, write_test_zip
from torchvision.models import inception_v3

import check_submission
import evaluate
import network
from t2i import clip_utils, harness
from t2i.errors import T2IError
from t2i.evaluation import course as course_metrics
from t2i.evaluation import evaluator as evaluation
from t2i.training import options
from t2i.training.log import LossLog
from train_utils import save_hyp, save_model

TEST_IMAGES = 6
BATCH = 2


@pytest.fixture(scope="module")
def small_test_zip(tmp_path_factory) -> str:
    return write_test_zip(tmp_path_factory.mktemp("course_data") / "test.zip", smooth_images(TEST_IMAGES, seed=2),
                          CLIP_DIM)


@pytest.fixture(scope="module")
def varied_checkpoint(tmp_path_factory) -> str:
    """A 3-stage checkpoint whose images differ from noise to noise: a random generator makes near-grey images
    that all look alike (IS would be 1), so its last output convolution is scaled up."""
    folder = str(tmp_path_factory.mktemp("course_checkpoint"))
    args = course_args(folder, 3)
    generator = make_generator(3)
    with torch.no_grad():
        generator.g_layer[2].image_net.image_net[0].weight.mul_(3000)
    discriminators = [network.Discriminator(16, 3, 8, 1, CLIP_DIM, stage, "cpu") for stage in range(3)]
    save_hyp(args, 64, 3, 8, 1)
    save_model(args, generator, discriminators, 0, 3)
    return folder


@pytest.fixture(scope="module")
def course_run(varied_checkpoint, small_test_zip, course_inception_path, tiny_clip_path, tmp_path_factory):
    """`evaluate.py --protocol course` run once, recording what it hands to Inception and every generator call."""
    inputs, calls = [], []
    original = course_metrics.inception_input

    def recorded_input(images):
        inputs.append(original(images))
        return inputs[-1]

    def record_call(module, args):
        if isinstance(module, network.Generator):
            calls.append([arg.detach().clone() for arg in args])

    out = tmp_path_factory.mktemp("course_report") / "course.json"
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(course_metrics, "inception_input", recorded_input)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record_call)
    try:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluate.main(["--protocol", "course", "--checkpoint_path", varied_checkpoint, "--load_epoch", "0",
                           "--test_data", small_test_zip, "--clip_model", tiny_clip_path, "--inception_weights",
                           course_inception_path, "--batch_size", str(BATCH), "--device", "cpu", "--out", str(out),
                           "--quiet"])
    finally:
        hook.remove()
        monkeypatch.undo()
    return {"report": json.loads(out.read_text()), "stdout": printed.getvalue(), "inputs": inputs, "calls": calls,
            "out": out}


def probabilities(weights_path: str, images: torch.Tensor) -> np.ndarray:
    """Inception's class probabilities of images in [0, 1], computed here: torchvision's network as its ImageNet
    weights build it (input transform, aux head), eval mode, softmax of the logits."""
    model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    with torch.no_grad():
        return torch.softmax(model.eval()(images).double(), dim=1).numpy()


def frechet(first: np.ndarray, second: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), from symmetric eigenvalue problems."""
    sigma_1, sigma_2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    values, vectors = np.linalg.eigh(sigma_1)
    root_1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_1 @ sigma_2 @ root_1), 0, None)).sum()
    difference = first.mean(0) - second.mean(0)
    return float(difference @ difference + np.trace(sigma_1) + np.trace(sigma_2) - 2 * cross)


def inception_score(probs: np.ndarray) -> float:
    """exp of the mean KL divergence between each image's class distribution and the set's mean one."""
    return float(np.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(probs.mean(0))), axis=1))))


def test_the_figures_equal_an_independent_computation_from_the_same_images(course_run, course_inception_path):
    report = course_run["report"]
    inputs = course_run["inputs"]
    assert len(inputs) == 2 * TEST_IMAGES // BATCH  # each step: the fakes, then the real images
    fakes, reals = torch.cat(inputs[0::2]), torch.cat(inputs[1::2])
    assert fakes.shape == reals.shape == (TEST_IMAGES, 3, 299, 299)
    fake_probs = probabilities(course_inception_path, fakes)
    real_probs = probabilities(course_inception_path, reals)
    # Not degenerate: the stand-in's softmax tells these images apart.
    assert fake_probs.max() < 0.99 and len(set(fake_probs.argmax(1)) | set(real_probs.argmax(1))) > 1
    assert report["course_is"] == pytest.approx(inception_score(fake_probs), rel=1e-6)
    assert report["course_is"] > 1.01
    assert report["course_fid"] == pytest.approx(frechet(fake_probs, real_probs), rel=1e-6)
    assert report["course_fid"] > 1e-3


def test_every_fake_is_made_alone_from_the_one_published_prompt(course_run, tiny_clip_path):
    calls = course_run["calls"]
    assert len(calls) == TEST_IMAGES
    clip_model = clip_utils.load_clip(tiny_clip_path)
    with torch.no_grad():
        text = clip_model.encode_text(clip_utils.tokenize([course_metrics.PUBLISHED_PROMPT]))
    expected = text / text.norm(dim=-1, keepdim=True)
    for text_feature, noise in calls:
        assert text_feature.shape == (1, CLIP_DIM) and noise.shape == (1, 8)
        torch.testing.assert_close(text_feature, expected)
    assert not torch.equal(calls[0][1], calls[1][1])  # a new noise for every image


def test_the_real_images_are_the_course_loaders_wrapped_by_the_uint8_cast(course_run, small_test_zip):
    """Each real image is the course loader's third-stage tensor in [-1, 1]; ToPILImage multiplies it by 255 and
    casts to uint8, which wraps negative values around (on x86 CPUs: -x becomes 256 - x)."""
    dataset = harness.load_course_module("read_dataset").ZipDataset(small_test_zip, 3)
    reals = torch.cat(course_run["inputs"][1::2])

    def inception_view(uint8_image: torch.Tensor) -> torch.Tensor:
        resized = PIL.Image.fromarray(uint8_image.permute(1, 2, 0).numpy()).resize((299, 299), PIL.Image.BILINEAR)
        return torch.tensor(np.asarray(resized)).permute(2, 0, 1).float() / 255

    for index in (0, TEST_IMAGES - 1):
        stage = dataset[index][0][2]
        assert stage.shape == (3, 256, 256) and stage.min() < -0.2
        wrapped = inception_view(torch.remainder(torch.trunc(stage * 255).long(), 256).to(torch.uint8))
        # Many values times 255 are whole numbers, where the truncation turns on the last bit of the float: the
        # loader's worker process may round them otherwise (one level in a few pixels).
        difference = (reals[index] - wrapped).abs()
        assert difference.max() <= 1 / 255 + 1e-6 and (difference > 1e-6).float().mean() < 0.01
        clamped = inception_view((stage.clamp(0, 1) * 255).to(torch.uint8))
        assert (reals[index] - clamped).abs().mean() > 0.1


def test_the_report_names_the_protocol_and_prints_the_graders_lines(course_run):
    report = course_run["report"]
    assert report["protocol"] == "course" and report["prompt"] == course_metrics.PUBLISHED_PROMPT
    assert report["num_real"] == report["num_generated"] == TEST_IMAGES and report["loader_batch_size"] == BATCH
    assert report["seed"] == 999 and report["ignite"].startswith("0.5.")
    assert len(report["caveats"]) == 2  # 6 images, not 5888; random Inception weights
    lines = course_run["stdout"].splitlines()
    assert f"*   FID : {report['course_fid']:.6f}" in lines and f"*    IS : {report['course_is']:.6f}" in lines
    assert lines[-1].startswith("graders' FID") and str(course_run["out"]) in lines[-1]
    with PIL.Image.open(report["grid"]) as grid:
        assert grid.size == (BATCH * 301 + 2, 2 * 301 + 2)  # the fakes above, the wrapped real images below


def test_measuring_is_reproducible_and_keeps_the_callers_random_state(varied_checkpoint, small_test_zip,
                                                                      course_inception_path):
    generator = make_generator(3).train()
    feature = torch.nn.functional.normalize(torch.randn(1, CLIP_DIM), dim=-1)
    evaluator = course_metrics.CourseEvaluator(small_test_zip, feature, prompt="a face", device="cpu",
                                               inception_weights=course_inception_path, batch_size=BATCH,
                                               num_samples=BATCH, progress=False)
    rng_before = torch.get_rng_state()
    first = evaluator(generator)
    assert torch.equal(torch.get_rng_state(), rng_before) and generator.training
    assert evaluator(generator)["course_fid"] == first["course_fid"] and first["num_real"] == BATCH
    assert any("prompt 'a face'" in caveat for caveat in first["caveats"])


def test_the_metrics_use_ignites_default_extractor_with_the_given_weights(course_inception_path, monkeypatch):
    from ignite.metrics.gan.utils import InceptionModel

    monkeypatch.setenv("TORCH_HOME", "/nonexistent/torch_home")
    fid, inception_score_metric = course_metrics.graders_metrics(course_inception_path, torch.device("cpu"))
    state = torch.load(course_inception_path, weights_only=True)
    for metric in (fid, inception_score_metric):
        extractor = metric._feature_extractor
        assert isinstance(extractor, InceptionModel) and extractor.model.transform_input
        assert isinstance(extractor.model.fc[1], torch.nn.Softmax)  # both figures read class probabilities
        torch.testing.assert_close(extractor.model.Conv2d_1a_3x3.conv.weight,
                                   state["Conv2d_1a_3x3.conv.weight"].float())
    assert fid._num_features == 1000
    assert os.environ["TORCH_HOME"] == "/nonexistent/torch_home"  # restored after the weights were found


def test_wrong_weights_and_too_small_a_test_zip_are_one_line_errors(varied_checkpoint, small_test_zip,
                                                                   course_inception_path, tiny_clip_path, tmp_path):
    fidelity_like = tmp_path / "fidelity.pth"
    keys = [key for key in course_metrics.inception_layout().state_dict() if not key.startswith("AuxLogits.")]
    torch.save({key: torch.zeros(1) for key in keys}, fidelity_like)
    with pytest.raises(T2IError, match="looks like torch-fidelity's Inception"):
        course_metrics.check_course_inception_weights(str(fidelity_like))
    with pytest.raises(T2IError, match=r"not torchvision's Inception v3 state dict \(1 keys missing"):
        state = {key: torch.zeros(1) for key in course_metrics.inception_layout().state_dict()}
        del state["fc.bias"]
        torch.save(state, tmp_path / "partial.pth")
        course_metrics.check_course_inception_weights(str(tmp_path / "partial.pth"))
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--protocol", "course", "--checkpoint_path", varied_checkpoint, "--load_epoch", "0",
                       "--test_data", small_test_zip, "--clip_model", tiny_clip_path, "--inception_weights",
                       course_inception_path, "--device", "cpu", "--quiet"])
    line = str(exit_.value.code)
    assert "\n" not in line and "holds 6 test images" in line and "batch of 128" in line


def test_training_evaluates_with_the_graders_protocol_when_asked(small_test_zip, course_inception_path,
                                                                tiny_clip_path):
    def training_evaluator(eval_samples: int):
        args = options.complete(options.parse(
            ["--eval_every", "1", "--eval_data", small_test_zip, "--eval_protocol", "course", "--eval_samples",
             str(eval_samples), "--inception_weights", course_inception_path, "--clip_model", tiny_clip_path], "t"))
        return evaluation.make_training_evaluator(args, None, torch.device("cpu"))

    evaluator = training_evaluator(4)  # fewer than 128: one batch of them
    assert isinstance(evaluator, course_metrics.CourseEvaluator) and evaluator.num_real == evaluator.batch_size == 4
    assert evaluator.prompt == course_metrics.PUBLISHED_PROMPT
    with pytest.raises(T2IError, match="holds 6 test images, which fill no batch of 100"):
        training_evaluator(100)
    figures = {"protocol": "course", "course_fid": 0.25, "course_is": 1.9, "num_real": 5888, "num_generated": 5888}
    assert evaluation.summary_line(figures).startswith("graders' FID 0.250000, IS 1.900000 (5888 fakes")


def test_the_loss_log_keeps_the_graders_figures(tmp_path):
    log = LossLog(str(tmp_path / "loss_log.csv"))
    log.add(0, "end", 1.0, {"d_loss": 1.0, "g_loss": 2.0}, {"protocol": "course", "course_fid": 0.3, "course_is": 1.7})
    header, row = (tmp_path / "loss_log.csv").read_text().splitlines()
    assert dict(zip(header.split(","), row.split(",")))["course_fid"] == "0.3"


def test_check_submission_reports_the_graders_figures(varied_checkpoint, course_inception_path, tiny_clip_path,
                                                      tmp_path, capsys):
    two_images = write_test_zip(tmp_path / "test_2.zip", smooth_images(2, seed=4), CLIP_DIM)
    out_dir = tmp_path / "check"
    code = check_submission.main(["--checkpoint_path", varied_checkpoint, "--epoch", "0", "--clip_model",
                                  tiny_clip_path, "--device", "cpu", "--out_dir", str(out_dir), "--num_images", "1",
                                  "--test_data", two_images, "--inception_weights", course_inception_path,
                                  "--eval_batch_size", "2"])
    printed = capsys.readouterr().out
    report = json.loads((out_dir / "graders_fid_is.json").read_text())
    assert code == 0 and report["protocol"] == "course" and report["num_real"] == 2
    assert f"*   FID : {report['course_fid']:.6f}" in printed.splitlines()
