"""GALIP (network_galip, galip_losses): shapes, the graders' loading and generation path, MA-GP against a
hand-computed value, initialisation, layer rules, and CLIP feature extraction."""
import argparse
import ast
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import galip_losses as gl
import network_galip
from network_galip import Affine, DBlock, Discriminator, Generator, generator_channels, weight_init
from t2i import clip_utils
from train_utils import denormalize_image, load_checkpoint, save_hyp, save_model

CLIP_DIM, PROJ, NOISE = 512, 128, 100
NG_SMALL, ND_SMALL = 32, 16          # narrow widths for forward passes in tests
NG_DEFAULT, ND_DEFAULT = 512, 768    # GALIP's widths: ngf 64 (8 x 64 = 512), ViT-B/32 token width 768


def unit(batch: int, dim: int = CLIP_DIM) -> torch.Tensor:
    return F.normalize(torch.randn(batch, dim), dim=1)


def hyperparameters(tmp_path, num_stage: int, ng: int, nd: int) -> argparse.Namespace:
    return argparse.Namespace(clip_embedding_dim=CLIP_DIM, projection_dim=PROJ, noise_dim=NOISE, num_stage=num_stage,
                              use_uncond_loss=False, use_contrastive_loss=False, batch_size=4, num_epochs=1,
                              learning_rate=1e-4, checkpoint_path=str(tmp_path))


# ------------------------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("batch", [1, 5])
def test_three_stage_shapes(batch):
    torch.manual_seed(0)
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 3, "cpu")
    G.apply(weight_init)
    text = unit(batch)
    fake_images, mu, log_sigma = G(text, torch.randn(batch, NOISE))
    assert [tuple(image.shape) for image in fake_images] == [(batch, 3, 64, 64), (batch, 3, 128, 128),
                                                             (batch, 3, 256, 256)]
    assert all(image.min() >= -1 and image.max() <= 1 for image in fake_images)
    # One picture at three sizes: the smaller ones are box averages of the largest.
    assert torch.allclose(fake_images[0], F.avg_pool2d(fake_images[2], 4), atol=1e-6)
    assert torch.allclose(fake_images[1], F.avg_pool2d(fake_images[2], 2), atol=1e-6)
    assert torch.equal(mu, text) and torch.equal(log_sigma, torch.zeros_like(text))

    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    D.apply(weight_init)
    layers = torch.randn(batch, network_galip.NUM_CLIP_LAYERS, ND_SMALL, 7, 7)
    features = D.features(layers)
    assert features.shape == (batch, min(ND_SMALL, CLIP_DIM), 7, 7)
    logits = D(layers, text)
    assert logits.shape == (batch,)
    assert torch.allclose(logits, D.predict(features, D.text_input(text)))
    assert torch.allclose(D.text_input(text), math.sqrt(CLIP_DIM) * text)


@pytest.mark.parametrize("num_stage", [1, 2, 3])
def test_largest_image_and_block_count_follow_num_stage(num_stage):
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, num_stage, "cpu")
    size = 64 * 2 ** num_stage // 2
    assert G.image_size == size
    assert len(G.blocks) == int(math.log2(size)) - 2  # 8 px, then one doubling per block
    fake_images, _, _ = G(unit(2), torch.randn(2, NOISE))
    assert [image.shape[-1] for image in fake_images] == [64 * 2 ** s for s in range(num_stage)]


def test_generator_channels_follow_dfgan():
    assert generator_channels(512, 256) == [(512, 512), (512, 512), (512, 512), (512, 256), (256, 128), (128, 64)]
    assert generator_channels(512, 64) == [(512, 512), (512, 256), (256, 128), (128, 64)]


@pytest.mark.parametrize("bad", [0, 4, 100])
def test_generator_width_must_be_a_multiple_of_eight(bad):
    with pytest.raises(ValueError, match="multiple of 8"):
        Generator(CLIP_DIM, PROJ, NOISE, bad, 3, 3, "cpu")


@pytest.mark.parametrize("bad", [0, 4])
def test_unsupported_stage_counts_are_refused(bad):
    with pytest.raises(ValueError, match="num_stage"):
        Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, bad, "cpu")


def test_later_stage_discriminators_are_empty_placeholders():
    for stage in (1, 2):
        D = Discriminator(PROJ, 3, ND_DEFAULT, 1, CLIP_DIM, stage, "cpu")
        assert D.state_dict() == {} and not list(D.parameters())
        with pytest.raises(RuntimeError, match="placeholder"):
            D(torch.randn(1, 3, ND_DEFAULT, 7, 7), unit(1))


def test_discriminator_refuses_wrong_feature_shapes():
    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    with pytest.raises(ValueError, match="CLIP features"):
        D.features(torch.randn(2, ND_SMALL, 7, 7))


# --------------------------------------------------------------------------------- the graders' harness

@pytest.mark.parametrize("num_stage", [1, 3])
def test_graders_rebuild_positionally_and_load_strictly(tmp_path, num_stage):
    args = hyperparameters(tmp_path, num_stage, NG_DEFAULT, ND_DEFAULT)
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_DEFAULT, 3, num_stage, "cpu")
    D_list = [Discriminator(PROJ, 3, ND_DEFAULT, 1, CLIP_DIM, s, "cpu") for s in range(num_stage)]
    for model in (G, *D_list):
        model.apply(weight_init)
    save_hyp(args, NG_DEFAULT, 3, ND_DEFAULT, 1)
    save_model(args, G, D_list, 0, num_stage)

    h = torch.load(tmp_path / "hyperparameter.pt", weights_only=True)
    device = torch.device("cpu")
    G2 = Generator(h['clip_embedding_dim'], h['projection_dim'], h['noise_dim'], h['g_in_chans'], h['g_out_chans'],
                   h['num_stage'], device)
    G2.load_state_dict(torch.load(tmp_path / "epoch_0_Gen.pt", weights_only=True))  # strict
    D2 = [Discriminator(h['projection_dim'], h['g_out_chans'], h['d_in_chans'], h['d_out_chans'],
                        h['clip_embedding_dim'], stage, device) for stage in range(h['num_stage'])]
    for stage, D in enumerate(D2):
        D.load_state_dict(torch.load(tmp_path / f"epoch_0_Dis_{stage}.pt", weights_only=True))  # strict
    load_checkpoint(G2, D2, str(tmp_path), 0)  # the course's loader too
    for ours, loaded in zip([G, *D_list], [G2, *D2]):
        assert ours.state_dict().keys() == loaded.state_dict().keys()
        for key, value in ours.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key])
    # No CLIP weights in any file: G and D hold only their own layers.
    assert os.path.getsize(tmp_path / "epoch_0_Gen.pt") < 4 * network_galip.count_parameters(G) * 1.01 + 1e6


def test_eval_generation_as_the_graders_call_it(tmp_path):
    torch.manual_seed(0)
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 3, "cpu")
    G.apply(weight_init)
    torch.save(G.state_dict(), tmp_path / "epoch_0_Gen.pt")
    G2 = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 3, "cpu")
    G2.load_state_dict(torch.load(tmp_path / "epoch_0_Gen.pt"))
    G2.eval()
    text_feature = unit(1).float()
    noise = torch.randn(1, NOISE)
    with torch.no_grad():
        fake_images, _, _ = G2(text_feature, noise)
        again, _, _ = G2(text_feature, noise)
    for image, size in zip((fake_images[-3], fake_images[-2], fake_images[-1]), (64, 128, 256)):
        assert image.shape == (1, 3, size, size) and image.dtype == torch.float32
        pixels = denormalize_image(image)
        assert pixels.min() >= 0 and pixels.max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(fake_images, again))  # no randomness beyond the noise


def test_the_submitted_module_imports_only_torch_and_the_standard_library():
    tree = ast.parse(open(network_galip.__file__).read())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"__future__", "math", "torch", "typing"}


# ---------------------------------------------------------------------------- initialisation and layers

def test_weight_init_restores_galip_initialisation():
    torch.manual_seed(0)
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 1, "cpu")
    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    for model in (G, D):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.7)
        model.apply(weight_init)
    affines = [m for m in G.modules() if isinstance(m, Affine)]
    assert affines
    for affine in affines:  # identity modulation: gamma 1, beta 0 for any condition
        assert torch.equal(affine.fc_gamma[2].weight, torch.zeros_like(affine.fc_gamma[2].weight))
        assert torch.equal(affine.fc_gamma[2].bias, torch.ones_like(affine.fc_gamma[2].bias))
        assert not affine.fc_beta[2].weight.any() and not affine.fc_beta[2].bias.any()
        x = torch.randn(2, affine.fc_gamma[2].out_features, 3, 3)
        assert torch.allclose(affine(x, torch.randn(2, NOISE + CLIP_DIM)), x)
    for block in (m for m in D.modules() if isinstance(m, DBlock)):
        assert block.gamma.item() == 0 and (block.beta is None or block.beta.item() == 0)
    for conv in (m for m in (*G.modules(), *D.modules()) if isinstance(m, (nn.Conv2d, nn.Linear))):
        if any(conv is affine.fc_gamma[2] or conv is affine.fc_beta[2] for affine in affines):
            continue
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-6  # PyTorch's default (Kaiming-uniform)
        assert conv.weight.std() > 0


def test_convolution_biases_where_galip_keeps_them():
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 3, "cpu")
    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    # G has no normalisation layers: its convolutions keep their biases (DF-GAN / GALIP).
    assert all(m.bias is not None for m in G.modules() if isinstance(m, nn.Conv2d))
    # D's residual branches and the matching head have none; only the 1x1 width-changing shortcut does.
    for block in (m for m in D.modules() if isinstance(m, DBlock)):
        assert all(m.bias is None for m in block.conv_r if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in D.joint_conv if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in (*G.modules(), *D.modules()))


def test_text_reaches_the_image():
    torch.manual_seed(0)
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 1, "cpu")
    G.apply(weight_init)
    with torch.no_grad():  # give the fusion something other than the identity
        for block in G.blocks:
            nn.init.normal_(block.fuse1.affine0.fc_beta[2].weight, std=0.5)
    noise = torch.randn(1, NOISE)
    a, _, _ = G(unit(1), noise)
    b, _, _ = G(unit(1), noise)
    assert not torch.allclose(a[-1], b[-1])


# ------------------------------------------------------------------------------------------------ losses

def test_ma_gp_matches_a_hand_computed_value():
    # D(x, s) = sum(x ** 2) + 3 s per sample: gradients (2 x, 3), so for x = (1, 2), s = 2 the norm is
    # sqrt(4 + 16 + 9) = sqrt(29), and for x = (0, 1), s = -1 it is sqrt(0 + 4 + 9) = sqrt(13).
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    s = torch.tensor([[2.0], [-1.0]], requires_grad=True)
    logits = (x ** 2).sum(dim=1) + 3 * s[:, 0]
    penalty = gl.ma_gp(logits, (x, s), k=2.0, p=6.0)
    expected = 2.0 * (29 ** 3 + 13 ** 3) / 2
    assert penalty.item() == pytest.approx(expected)
    # The graph is kept: the penalty trains what produced the logits (d/dx of 2 * mean((4|x|^2 + 9)^3)).
    (grad_x,) = torch.autograd.grad(penalty, x)
    expected_grad = 2.0 / 2 * 3 * torch.tensor([[29.0], [13.0]]) ** 2 * 8 * x.detach()
    assert torch.allclose(grad_x, expected_grad)


def test_ma_gp_with_a_grad_scaler_equals_the_plain_value():
    x = torch.randn(3, 4, requires_grad=True)
    s = torch.randn(3, 2, requires_grad=True)
    logits = torch.tanh(x).sum(1) * s.sum(1)
    plain = gl.ma_gp(logits, (x, s))
    scaled = gl.ma_gp(logits, (x, s), scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-5)


def test_hinge_losses_and_mismatch():
    real, fake, mismatched = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0]), torch.tensor([1.0, -0.5])
    # real: mean(0, 0.5) = 0.25; fake: mean(0, 1) = 0.5; mismatched: mean(2, 0.5) = 1.25
    assert gl.discriminator_hinge_loss(real, fake, mismatched).item() == pytest.approx(0.25 + (0.5 + 1.25) / 2)
    assert gl.generator_hinge_loss(fake).item() == pytest.approx(1.0)
    sentence = torch.arange(6.0).view(3, 2).requires_grad_()
    shifted = gl.mismatched_sentences(sentence)
    assert torch.equal(shifted, torch.cat([sentence[1:], sentence[:1]]).detach()) and not shifted.requires_grad


def test_discriminator_and_generator_losses_train_the_right_modules():
    torch.manual_seed(0)
    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    D.apply(weight_init)
    with torch.no_grad():  # open the residual gains so every D weight is on the gradient path
        for block in (m for m in D.modules() if isinstance(m, DBlock)):
            block.gamma.fill_(0.5)
            if block.beta is not None:
                block.beta.fill_(0.5)
    real = torch.randn(4, 3, ND_SMALL, 7, 7)
    fake_source = torch.randn(4, 3, ND_SMALL, 7, 7, requires_grad=True)
    fake = fake_source * 1.0
    sentence = unit(4)
    d_loss, parts = gl.discriminator_loss(D, real, fake, sentence)
    d_loss.backward()
    assert set(parts) == {"d_real", "d_fake", "d_mismatch", "d_ma_gp"} and parts["d_ma_gp"] > 0
    assert fake_source.grad is None  # D's loss never reaches the generator side
    assert all(p.grad is not None for p in D.parameters())
    D.zero_grad()
    g_loss, parts = gl.generator_loss(D, fake, torch.randn(4, CLIP_DIM), sentence)
    g_loss.backward()
    assert fake_source.grad is not None and set(parts) == {"g_adv", "g_sim"}


def test_discriminator_loss_penalises_the_gradient_at_the_text_the_head_reads():
    """MA-GP in discriminator_loss is taken with respect to (real CLIP features, sqrt(D) s), and the hinge
    terms pair real with matching text, real with the next sample's text, fake with matching text."""
    torch.manual_seed(0)
    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    D.apply(weight_init)
    real, fake, sentence = torch.randn(3, 3, ND_SMALL, 7, 7), torch.randn(3, 3, ND_SMALL, 7, 7), unit(3)
    _, parts = gl.discriminator_loss(D, real, fake, sentence)
    layers = real.clone().requires_grad_()
    text = (math.sqrt(CLIP_DIM) * sentence).requires_grad_()
    real_logits = D.predict(D.features(layers), text)
    assert parts["d_ma_gp"] == pytest.approx(gl.ma_gp(real_logits, (layers, text)).item(), rel=1e-5)
    assert parts["d_real"] == pytest.approx(gl.hinge_real(D(real, sentence)).item(), rel=1e-5)
    assert parts["d_fake"] == pytest.approx(gl.hinge_fake(D(fake, sentence)).item(), rel=1e-5)
    assert parts["d_mismatch"] == pytest.approx(gl.hinge_fake(D(real, sentence.roll(-1, 0))).item(), rel=1e-5)


def test_text_image_similarity_is_the_mean_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert gl.text_image_similarity(a, b).item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------- CLIP

def test_clip_layer_indices_follow_galip():
    assert gl.clip_layer_indices(12) == (1, 4, 8)
    assert gl.clip_layer_indices(24) == (3, 9, 17)
    assert gl.clip_layer_indices(1) == (0, 0, 0)
    assert all(max(gl.clip_layer_indices(n)) < n for n in range(1, 30))


def test_to_clip_input_resizes_and_normalises():
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    out = gl.to_clip_input(images)
    expected = F.interpolate(images * 0.5 + 0.5, size=(224, 224), mode="bicubic", align_corners=False)
    mean = torch.tensor(gl.CLIP_MEAN)[:, None, None]
    std = torch.tensor(gl.CLIP_STD)[:, None, None]
    assert torch.allclose(out, (expected - mean) / std, atol=1e-4)
    same = torch.rand(1, 3, 224, 224) * 2 - 1
    assert torch.allclose(gl.to_clip_input(same), ((same * 0.5 + 0.5) - mean) / std)


def test_clip_image_features_shapes_embedding_and_gradient(tiny_clip_path):
    clip_model = clip_utils.load_clip(tiny_clip_path, "cpu")
    width = clip_model.visual.conv1.out_channels
    layers = gl.clip_layer_indices(len(clip_model.visual.transformer.resblocks))
    images = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    local, embedding = gl.clip_image_features(clip_model, images)
    assert local.shape == (2, len(layers), width, 7, 7) and local.dtype == torch.float32
    with torch.no_grad():
        reference = clip_model.encode_image(gl.to_clip_input(images))
    assert torch.allclose(embedding, reference, atol=1e-5)
    (local.sum() + embedding.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with torch.no_grad():
        local_only, none = gl.clip_image_features(clip_model, images, with_embedding=False)
    assert none is None and torch.allclose(local_only, local)
    D = Discriminator(PROJ, 3, width, 1, CLIP_DIM, 0, "cpu")
    assert D(local_only, unit(2)).shape == (2,)


def test_one_training_step_with_a_tiny_clip(tiny_clip_path):
    """The step the docstring of galip_losses describes runs end to end and moves both models."""
    torch.manual_seed(0)
    clip_model = clip_utils.load_clip(tiny_clip_path, "cpu")
    width = clip_model.visual.conv1.out_channels
    G = Generator(CLIP_DIM, PROJ, NOISE, NG_SMALL, 3, 1, "cpu")
    D = Discriminator(PROJ, 3, width, 1, CLIP_DIM, 0, "cpu")
    for model in (G, D):
        model.apply(weight_init)
    optim_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    optim_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    real, sentence = torch.rand(3, 3, 64, 64) * 2 - 1, unit(3)
    g_before = [p.detach().clone() for p in G.parameters()]
    d_before = [p.detach().clone() for p in D.parameters()]

    with torch.no_grad():
        real_layers, _ = gl.clip_image_features(clip_model, real, with_embedding=False)
    fake = G(sentence, torch.randn(3, NOISE))[0][-1]
    fake_layers, fake_embedding = gl.clip_image_features(clip_model, fake)
    d_loss, _ = gl.discriminator_loss(D, real_layers, fake_layers, sentence)
    optim_d.zero_grad(set_to_none=True)
    d_loss.backward()
    optim_d.step()
    g_loss, _ = gl.generator_loss(D, fake_layers, fake_embedding, sentence)
    optim_g.zero_grad(set_to_none=True)
    g_loss.backward()
    optim_g.step()
    assert math.isfinite(d_loss.item()) and math.isfinite(g_loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, D.parameters()))
    assert all(not p.requires_grad for p in clip_model.parameters())


def test_matching_head_equals_the_convolution_of_the_concatenation():
    torch.manual_seed(0)
    D = Discriminator(PROJ, 3, ND_SMALL, 1, CLIP_DIM, 0, "cpu")
    features, text = torch.randn(3, D.feature_chans, 7, 7), torch.randn(3, CLIP_DIM)
    tiled = text[:, :, None, None].expand(-1, -1, 7, 7)
    expected = D.joint_conv(torch.cat([features, tiled], dim=1)).flatten()
    assert torch.allclose(D.predict(features, text), expected, atol=1e-5)


def test_patch_embedding_equals_clip_convolution(tiny_clip_path):
    clip_model = clip_utils.load_clip(tiny_clip_path, "cpu")
    conv1 = clip_model.visual.conv1
    images = torch.randn(2, 3, 224, 224)
    expected = conv1(images).flatten(2).transpose(1, 2)
    assert torch.allclose(gl.patch_embedding(conv1, images), expected, atol=1e-4)
    with pytest.raises(ValueError):
        gl.patch_embedding(nn.Conv2d(3, 8, 4, stride=2), images)


# ------------------------------------------------------------------------------- training (--arch galip)

def galip_argv(data, root, clip_path, epochs, *extra, stages=1):
    """Our main.py with --arch galip at tiny widths (ngf 2); 64 px unless `stages` says otherwise."""
    return ["--train_data", data, "--batch_size", "4", "--num_epochs", str(epochs), "--learning_rate", "2e-4",
            "--report_interval", "1", "--noise_dim", "8", "--projection_dim", "8", "--clip_embedding_dim", "512",
            "--checkpoint_path", str(root / "checkpoints"), "--result_path", str(root / "results"),
            "--num_stage", str(stages), "--resume_epoch", "-1", "--clip_model", clip_path, "--arch", "galip",
            "--g_in_chans", "16", "--device", "cpu", *extra]


def test_arch_option_defaults_and_validation():
    from t2i.errors import T2IError
    from t2i.training import options

    course = argparse.Namespace(learning_rate=2e-4, num_stage=3)
    galip = options.complete(course, network_arch="galip")
    assert (galip.arch, galip.g_in_chans, galip.d_in_chans, galip.g_lr, galip.d_lr) == ("galip", 256, 768, 1e-4, 4e-4)
    stackgan = options.complete(course)
    assert (stackgan.arch, stackgan.g_in_chans, stackgan.d_in_chans, stackgan.g_lr) == ("stackgan", 1024, 64, None)
    given = options.parse(["--arch", "galip", "--g_in_chans", "24", "--g_lr", "3e-4"], "")
    completed = options.complete(given)
    assert (completed.g_in_chans, completed.g_lr, completed.d_lr) == (24, 3e-4, 4e-4)
    options.validate(completed)  # a multiple of 8 is enough for GALIP
    with pytest.raises(T2IError, match="multiple of 8"):
        options.validate(options.complete(options.parse(["--arch", "galip", "--g_in_chans", "20"], "")))
    assert options.BY_NAME["arch"].on_resume == options.MUST_MATCH


def test_training_writes_the_contract_files_and_logs_galip_losses(small_train_zip, tiny_clip_path, tmp_path):
    import main
    from t2i import checkpoints

    main.main(galip_argv(small_train_zip, tmp_path, tiny_clip_path, 1, stages=3))
    folder = tmp_path / "checkpoints"
    hyp = torch.load(folder / "hyperparameter.pt", weights_only=True)
    width = clip_utils.load_clip(tiny_clip_path).visual.conv1.out_channels
    assert (hyp["g_in_chans"], hyp["d_in_chans"], hyp["num_stage"]) == (16, width, 3)  # d_in_chans: the CLIP's
    G = Generator(hyp["clip_embedding_dim"], hyp["projection_dim"], hyp["noise_dim"], hyp["g_in_chans"],
                  hyp["g_out_chans"], hyp["num_stage"], "cpu")
    G.load_state_dict(torch.load(folder / "epoch_0_Gen.pt", weights_only=True))
    for stage in range(3):
        Discriminator(hyp["projection_dim"], hyp["g_out_chans"], hyp["d_in_chans"], hyp["d_out_chans"],
                      hyp["clip_embedding_dim"], stage, "cpu").load_state_dict(
            torch.load(folder / f"epoch_0_Dis_{stage}.pt", weights_only=True))
    assert checkpoints.read_run_record(str(folder))["options"]["arch"] == "galip"
    header = (folder / "loss_log.csv").read_text().splitlines()[0].split(",")
    assert {"D/d_real_0", "D/d_fake_0", "D/d_mismatch_0", "D/d_ma_gp_0", "G/g_adv_0", "G/g_sim_0"} <= set(header)
    assert (tmp_path / "results" / "epoch_0.png").is_file()
    state = torch.load(folder / "epoch_0_state.pt", weights_only=False)
    assert state["trainer"]["optim_d"][0]["param_groups"][0]["betas"] == (0.0, 0.9)
    assert state["trainer"]["optim_g"]["param_groups"][0]["lr"] == 1e-4


@pytest.mark.parametrize("flags", [
    ["--no-ema"],
    ["--diffaugment", "color,translation,cutout"],
    ["--no-mismatch"],
    ["--language_free"],
    ["--g_lr", "1e-3", "--d_lr", "1e-3", "--save_every_steps", "1"],
])
def test_every_flag_of_galip_trains_and_keeps_the_contract(flags, small_train_zip, tiny_clip_path, tmp_path):
    """One epoch with each flag that GALIP's training reads, then the graders' path: built positionally from
    hyperparameter.pt, loaded strictly, called as generate_image.py calls it."""
    import main

    main.main(galip_argv(small_train_zip, tmp_path, tiny_clip_path, 1, *flags))
    folder = tmp_path / "checkpoints"
    h = torch.load(folder / "hyperparameter.pt", weights_only=True)
    G = Generator(h["clip_embedding_dim"], h["projection_dim"], h["noise_dim"], h["g_in_chans"], h["g_out_chans"],
                  h["num_stage"], "cpu")
    G.load_state_dict(torch.load(folder / "epoch_0_Gen.pt", weights_only=True))
    Discriminator(h["projection_dim"], h["g_out_chans"], h["d_in_chans"], h["d_out_chans"], h["clip_embedding_dim"],
                  0, "cpu").load_state_dict(torch.load(folder / "epoch_0_Dis_0.pt", weights_only=True))
    with torch.no_grad():
        fake_images, _, _ = G.eval()(unit(1), torch.randn(1, h["noise_dim"]))
    assert [tuple(image.shape) for image in fake_images] == [(1, 3, 64, 64)]  # one stage: one image
    assert all(torch.isfinite(image).all() and image.abs().max() <= 1 for image in fake_images)


def test_resume_equals_an_uninterrupted_run(small_train_zip, tiny_clip_path, tmp_path):
    """Two epochs of one step each, straight and resumed after the first: the same weights, bit for bit."""
    import main

    data = small_train_zip
    main.main(galip_argv(data, tmp_path / "straight", tiny_clip_path, 2))
    main.main(galip_argv(data, tmp_path / "resumed", tiny_clip_path, 1))
    argv = galip_argv(data, tmp_path / "resumed", tiny_clip_path, 2)
    argv[argv.index("--resume_epoch") + 1] = "0"
    main.main(argv + ["--resume_checkpoint_path", str(tmp_path / "resumed" / "checkpoints")])
    for name in ("epoch_1_Gen.pt", "epoch_1_Dis_0.pt"):
        a = torch.load(tmp_path / "straight" / "checkpoints" / name, weights_only=True)
        b = torch.load(tmp_path / "resumed" / "checkpoints" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name


def test_resume_refuses_another_arch(small_train_zip, tiny_clip_path, tmp_path):
    import main

    main.main(galip_argv(small_train_zip, tmp_path, tiny_clip_path, 1))
    argv = galip_argv(small_train_zip, tmp_path, tiny_clip_path, 2)
    argv[argv.index("--resume_epoch") + 1] = "0"
    argv[argv.index("--arch") + 1] = "stackgan"
    argv[argv.index("--g_in_chans") + 1] = "64"
    with pytest.raises(SystemExit, match="--arch stackgan: the checkpoints to resume were made with --arch galip"):
        main.main(argv + ["--resume_checkpoint_path", str(tmp_path / "checkpoints")])


# ------------------------------------------------------------- the course's files, with GALIP as network.py

def test_course_main_trains_galip_and_the_packed_folder_generates_with_course_files(small_train_zip, tiny_clip_path,
                                                                                     tmp_path):
    """network_galip.py as network.py: the course's main.py (course flags only) trains one epoch as GALIP;
    check_submission packs the folder with that network.py; the course's generate_image.py, beside the packed
    network.py, writes the three PNGs from the packed checkpoint."""
    import zipfile

    from PIL import Image

    import check_submission
    from t2i import harness

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = harness.prepare_workdir(str(tmp_path / "train"), network_galip.__file__, os.path.join(root, "train.py"))
    argv = ["--train_data", small_train_zip, "--batch_size", "4", "--num_epochs", "1", "--learning_rate", "2e-4",
            "--report_interval", "50", "--noise_dim", "100", "--projection_dim", "128", "--clip_embedding_dim", "512",
            "--checkpoint_path", "checkpoints", "--result_path", "results", "--num_stage", "3", "--resume_epoch", "-1",
            "--use_contrastive_loss"]
    done = harness.run_course_script(workdir, "main.py", argv, clip_standin=tiny_clip_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint_path = os.path.join(workdir, "checkpoints")
    hyp = torch.load(os.path.join(checkpoint_path, "hyperparameter.pt"), weights_only=True)
    assert hyp["g_in_chans"] == 256  # GALIP's default width: the course's main.py cannot pass --g_in_chans
    assert os.path.isfile(os.path.join(workdir, "results", "epoch_0.png"))

    zip_path = str(tmp_path / "submission.zip")
    status = check_submission.main(["--checkpoint_path", checkpoint_path, "--epoch", "0", "--clip_model",
                                    tiny_clip_path, "--out_dir", str(tmp_path / "check"), "--num_images", "1",
                                    "--device", "cpu", "--zip", zip_path])
    assert status == 0
    packed = tmp_path / "packed"
    with zipfile.ZipFile(zip_path) as archive:  # the whole list: tests/test_submission_zip.py
        assert {"network.py", "hyperparameter.pt", "epoch_0_Gen.pt", "epoch_0_Dis_0.pt", "epoch_0_Dis_1.pt",
                "epoch_0_Dis_2.pt"} <= set(archive.namelist())
        archive.extractall(packed)
    assert (packed / "network.py").read_bytes() == open(network_galip.__file__, "rb").read()
    for size in (64, 128, 256):
        assert (tmp_path / "check" / "course_generate_image" / f"result_{size}.png").is_file()

    grader = harness.prepare_workdir(str(tmp_path / "grader"), str(packed / "network.py"),
                                     os.path.join(root, "train.py"))
    done = harness.run_course_script(grader, "generate_image.py", ["--prompt", "The man has a beard.",
                                                                   "--load_epoch", "0", "--checkpoint_path",
                                                                   str(packed)], clip_standin=tiny_clip_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for size in (64, 128, 256):
        with Image.open(os.path.join(grader, f"result_{size}.png")) as image:
            assert image.size == (size, size)


def test_check_submission_reads_the_arch_from_the_run(small_train_zip, tiny_clip_path, tmp_path, capsys):
    """A GALIP run trained by our main.py: check_submission finds --arch galip in run_options.json; told
    --arch stackgan instead, it reports the weights do not fit StackGAN's models."""
    import check_submission
    import main

    argv = galip_argv(small_train_zip, tmp_path, tiny_clip_path, 1, stages=3)
    argv[argv.index("--g_in_chans") + 1] = "64"  # a width StackGAN's constructor accepts at 3 stages
    main.main(argv)
    common = ["--checkpoint_path", str(tmp_path / "checkpoints"), "--epoch", "0", "--clip_model", tiny_clip_path,
              "--out_dir", str(tmp_path / "check"), "--num_images", "1", "--device", "cpu"]
    assert check_submission.main(common) == 0
    assert "(galip, 3 stages" in capsys.readouterr().out
    assert check_submission.main(common + ["--arch", "stackgan"]) == 1
    assert "does not fit the Generator" in capsys.readouterr().err
