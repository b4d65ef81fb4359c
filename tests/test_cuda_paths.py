"""The CUDA code paths, reproduced on the CPU: every entry point's CLIP calls with CLIP in openai-clip's CUDA dtype
layout (fp16 weights, fp32 LayerNorms), and training in fp32 and under fp16 autocast with gradient scaling and
channels-last, as on a GPU. On a machine with a GPU, the same entry points run on CUDA itself.

A CLIP cast whole with `.half()` (LayerNorms included) fails in both encoders outside autocast; every test here
failed that way before CLIP was loaded in openai-clip's own layout.
"""
import os

import pytest
import torch
from conftest import preprocess

import check_submission
import generate_image
import main
from t2i import clip_utils
from t2i.evaluation import metrics
from t2i.training import precision
from t2i.training import step as training_step
from t2i.training.precision import Precision

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def cuda_layout(monkeypatch):
    """CLIP in the layout it gets on CUDA, on the CPU."""
    monkeypatch.setattr(clip_utils, "uses_half_layout", lambda device: True)


def test_the_cuda_layout_is_openai_clips_and_both_encoders_run_in_it(tiny_clip_path, cuda_layout):
    model = clip_utils.load_clip(tiny_clip_path, "cpu")
    dtypes = {name: parameter.dtype for name, parameter in model.named_parameters()}
    assert dtypes["visual.conv1.weight"] == dtypes["text_projection"] == dtypes["visual.proj"] == torch.float16
    assert dtypes["transformer.resblocks.0.attn.in_proj_weight"] == torch.float16
    assert {dtype for name, dtype in dtypes.items() if ".ln_" in name or name.startswith("ln_")} == {torch.float32}
    text = model.encode_text(clip_utils.tokenize(["a woman with blond hair"]))
    image = model.encode_image(torch.rand(1, 3, 224, 224, dtype=torch.float16))
    assert text.dtype == image.dtype == torch.float16 and torch.isfinite(text).all() and torch.isfinite(image).all()
    whole_half = clip_utils.load_clip(tiny_clip_path, "cpu").half()  # what the loader used to do on CUDA
    with pytest.raises(RuntimeError):
        whole_half.encode_text(clip_utils.tokenize(["a woman with blond hair"]))
    assert clip_utils.clip_identity_of(model)["fingerprint"] == clip_utils.clip_identity_of(
        clip_utils.load_clip(tiny_clip_path, "cpu"))["fingerprint"]  # the same CLIP in either layout


def test_preprocessing_encodes_in_the_cuda_layout(synthetic_raw, tiny_clip_path, tmp_path, cuda_layout):
    dest = tmp_path / "train.zip"
    preprocess(["--source", synthetic_raw["paths"]["source"], "--dest", str(dest), "--clip_model", tiny_clip_path,
                "--device", "cpu", "--max-images", "3", "--num_workers", "1"], "train")
    assert dest.is_file()


def training_argv(train_zip, tiny_clip_path, tmp_path, *extra):
    return ["--train_data", train_zip, "--batch_size", "4", "--num_epochs", "1", "--report_interval",
            "1", "--noise_dim", "8", "--projection_dim", "8", "--checkpoint_path", str(tmp_path / "ck"),
            "--result_path", str(tmp_path / "res"), "--num_stage", "3", "--use_uncond_loss", "--use_contrastive_loss",
            "--clip_model", tiny_clip_path, "--g_in_chans", "64", "--d_in_chans", "4", "--device", "cpu", *extra]


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "fp16-autocast"])
def test_a_training_epoch_runs_as_on_cuda(small_train_zip, tiny_clip_path, tmp_path, monkeypatch, cuda_layout, amp):
    """L_ConG backpropagates through the fp16 CLIP; with AMP under fp16 autocast with gradient scaling;
    channels-last models and batches, as on CUDA."""
    cuda_like = Precision("cpu", torch.float16 if amp else None, loss_scaling=amp)
    monkeypatch.setattr(training_step, "precision_for", lambda device, amp_flag: cuda_like)
    monkeypatch.setattr(training_step, "uses_channels_last", lambda device: True)
    main.main(training_argv(small_train_zip, tiny_clip_path, tmp_path))
    state = torch.load(tmp_path / "ck" / "epoch_0_state.pt", weights_only=True)
    if amp:
        assert state["trainer"]["precision"]["scaler_g"]["scale"] > 0  # the scaler ran and was saved
    G = torch.load(tmp_path / "ck" / "epoch_0_Gen.pt", weights_only=True)
    assert all(value.dtype != torch.float16 for value in G.values())  # the weights stay fp32
    assert all(torch.isfinite(value).all() for value in G.values() if value.is_floating_point())


@pytest.fixture(scope="module")
def trained(small_train_zip, tiny_clip_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    main.main(training_argv(small_train_zip, tiny_clip_path, folder, "--no-ema"))
    return str(folder / "ck")


def test_generation_encodes_the_prompt_in_the_cuda_layout(trained, tiny_clip_path, tmp_path, cuda_layout):
    generate_image.main(["--prompt", "The woman is young and has blond hair.", "--load_epoch", "0",
                         "--checkpoint_path", trained, "--clip_model", tiny_clip_path, "--out_dir", str(tmp_path),
                         "--device", "cpu"])
    assert sorted(os.listdir(tmp_path)) == ["result_128.png", "result_256.png", "result_64.png"]


def test_the_clip_score_runs_in_the_cuda_layout(tiny_clip_path, cuda_layout):
    model = clip_utils.load_clip(tiny_clip_path, "cpu")
    images = (torch.rand(3, 3, 256, 256) * 255).to(torch.uint8)
    embeddings = metrics.clip_image_embeddings(model, images, batch_size=2, progress=False)
    assert embeddings.dtype == torch.float32 and embeddings.shape == (3, 512)
    assert -100 <= metrics.clip_score(embeddings, torch.randn(3, 512)) <= 100


def test_the_submission_check_generates_its_prompts_in_the_cuda_layout(trained, tiny_clip_path, tmp_path,
                                                                       cuda_layout):
    status = check_submission.main(["--checkpoint_path", trained, "--epoch", "0", "--clip_model", tiny_clip_path,
                                    "--out_dir", str(tmp_path), "--num_images", "1", "--device", "cpu"])
    assert status == 0
    assert os.path.isfile(tmp_path / "prompts.png")


def test_amp_on_a_cpu_without_bf16_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(Exception, match="--amp on the CPU means bf16, which this CPU"):
        precision.precision_for(torch.device("cpu"), True)
    assert precision.precision_for(torch.device("cpu"), None).autocast_dtype is None


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the CPU tests above reproduce these paths)")
@pytest.mark.parametrize("amp", ["--amp", "--no-amp"])
def test_training_on_cuda(small_train_zip, tiny_clip_path, tmp_path, amp):
    argv = training_argv(small_train_zip, tiny_clip_path, tmp_path, amp)
    argv[argv.index("--device") + 1] = "cuda"
    main.main(argv)
    assert (tmp_path / "ck" / "epoch_0_Gen.pt").is_file()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the CPU tests above reproduce these paths)")
def test_clip_on_cuda_is_in_openai_clips_layout_and_encodes(tiny_clip_path):
    model = clip_utils.load_clip(tiny_clip_path, "cuda")
    assert model.visual.conv1.weight.dtype == torch.float16 and model.ln_final.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model.encode_text(clip_utils.tokenize(["a face"]).cuda())).all()
