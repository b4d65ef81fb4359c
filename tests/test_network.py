"""The models: shapes at every stage count, the contract's layer rules, and the graders' loading path."""
import argparse

import pytest
import torch
import torch.nn as nn

from network import (AlignCondDiscriminator, CondDiscriminator, ConditioningAugmention, Discriminator, Generator,
                     Generator_type_1, Generator_type_2, ImageExtractor, ResModule, UncondDiscriminator, weight_init)
from t2i import checkpoints
from train import init_conditioning_mu
from train_utils import load_checkpoint, save_hyp, save_model

CLIP_DIM, PROJ, NOISE, NG, ND = 512, 16, 12, 128, 8


@pytest.mark.parametrize("num_stage", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 5])
def test_generator_and_discriminator_shapes(num_stage, batch):
    G = Generator(CLIP_DIM, PROJ, NOISE, NG, 3, num_stage, "cpu")
    G.apply(weight_init)
    if batch == 1:
        G.eval()  # BatchNorm1d cannot train on one sample; the graders generate in eval mode
    fake_images, mu, log_sigma = G(torch.randn(batch, CLIP_DIM), torch.randn(batch, NOISE))
    assert [tuple(image.shape) for image in fake_images] == [(batch, 3, 64 * 2 ** s, 64 * 2 ** s)
                                                             for s in range(num_stage)]
    assert mu.shape == log_sigma.shape == (batch, PROJ)
    assert all(image.min() >= -1 and image.max() <= 1 for image in fake_images)
    for stage in range(num_stage):
        D = Discriminator(PROJ, 3, ND, 1, CLIP_DIM, stage, "cpu").eval()
        out, align = D(fake_images[stage])
        assert out.shape == (batch,) and align is None  # one value per image
        assert ((out >= 0) & (out <= 1)).all()  # sigmoid applied inside forward
        out, align = D(fake_images[stage], mu)
        assert out.shape == (batch,) and align.shape == (batch, CLIP_DIM)
        assert D.trunk(fake_images[stage]).shape == (batch, 8 * ND, 4, 4)


def test_forward_feeds_the_skeletons_bce_loss_and_matches_the_fast_path():
    # The skeleton's D_loss: BCELoss(sigmoid outputs of forward, labels of shape [B]).
    torch.manual_seed(0)
    D = Discriminator(PROJ, 3, ND, 1, CLIP_DIM, 1, "cpu").eval()
    images, mu = torch.rand(4, 3, 128, 128) * 2 - 1, torch.randn(4, PROJ)
    labels = torch.ones(4)
    out, _ = D(images, mu)
    loss = torch.nn.BCELoss()(out, labels)
    uncond, cond, _ = D.heads(D.trunk(images), mu)
    assert torch.allclose(loss, torch.nn.BCEWithLogitsLoss()(cond, labels))
    assert torch.allclose(D(images)[0], torch.sigmoid(uncond))


def test_submodule_shapes_follow_the_guideline():
    x = torch.randn(2, 8 * ND, 4, 4)
    c = torch.randn(2, PROJ)
    assert UncondDiscriminator(ND, 1)(x).shape == (2, 1, 1, 1)
    assert CondDiscriminator(ND, PROJ, 1)(x, c).shape == (2, 1, 1, 1)
    assert AlignCondDiscriminator(ND, PROJ, CLIP_DIM)(x, c).shape == (2, CLIP_DIM)
    assert ImageExtractor(32)(torch.randn(2, 32, 16, 16)).shape == (2, 3, 16, 16)
    assert ResModule(32)(torch.randn(2, 32, 8, 8)).shape == (2, 32, 8, 8)
    out, image = Generator_type_1(NG, PROJ + NOISE)(torch.randn(2, PROJ), torch.randn(2, NOISE))
    assert out.shape == (2, NG // 16, 64, 64) and image.shape == (2, 3, 64, 64)
    out, image = Generator_type_2(NG // 16, PROJ, 2, "cpu")(torch.randn(2, PROJ), torch.randn(2, NG // 16, 64, 64))
    assert out.shape == (2, NG // 32, 128, 128) and image.shape == (2, 3, 128, 128)


def test_conditioning_augmentation_samples_around_mu():
    ca = ConditioningAugmention(CLIP_DIM, PROJ, "cpu")
    text = torch.randn(3, CLIP_DIM)
    condition, mu, log_sigma = ca(text)
    torch.testing.assert_close(mu, ca.layer(text)[:, :PROJ])
    torch.testing.assert_close(log_sigma, ca.layer(text)[:, PROJ:])
    assert not torch.allclose(condition, mu)
    with torch.no_grad():
        ca.layer[0].bias.fill_(-200.0)  # LeakyReLU gives log_sigma -40: sigma -> 0: the sample collapses onto mu
        ca.layer[0].weight.zero_()
    condition, mu, _ = ca(text)
    torch.testing.assert_close(condition, mu)


def test_no_convolution_has_a_bias_and_weight_init_follows_the_course():
    torch.manual_seed(0)
    models = [Generator(CLIP_DIM, PROJ, NOISE, 1024, 3, 3, "cpu")]
    models += [Discriminator(PROJ, 3, 64, 1, CLIP_DIM, s, "cpu") for s in range(3)]
    for model in models:
        model.apply(weight_init)
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert convs and all(m.bias is None for m in convs)
        conv_weights = torch.cat([m.weight.flatten() for m in convs])
        assert abs(conv_weights.mean()) < 1e-3 and abs(conv_weights.std() - 0.02) < 1e-3
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        bn_weights = torch.cat([m.weight.flatten() for m in norms])
        assert abs(bn_weights.mean() - 1) < 2e-3 and abs(bn_weights.std() - 0.02) < 2e-3
        assert all((m.bias == 0).all() for m in norms)
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):  # the given init skips 1-d
            assert (norm.weight == 1).all() and (norm.bias == 0).all()
        for linear in (m for m in model.modules() if isinstance(m, nn.Linear)):
            assert (linear.bias == 0).all() and abs(linear.weight.std() - 0.02) < 2e-3


def caption_like_embeddings(count: int) -> torch.Tensor:
    """Unit-norm vectors sharing a large common part (cosine ~0.8 between them), as CLIP's captions do."""
    common = nn.functional.normalize(torch.randn(1, CLIP_DIM), dim=-1)
    specific = nn.functional.normalize(torch.randn(count, CLIP_DIM), dim=-1)
    return nn.functional.normalize(2 * common + specific, dim=-1)


def test_mu_init_lets_the_caption_reach_mu_and_keeps_sigma_at_one():
    torch.manual_seed(0)
    text = caption_like_embeddings(256)
    spread = {}
    for std in (0.02, 1.0):
        G = Generator(CLIP_DIM, PROJ, NOISE, 64, 3, 1, "cpu")
        G.apply(weight_init)
        init_conditioning_mu(G, std)
        ca = G.condition_aug
        weight = ca.layer[0].weight.detach()
        assert abs(weight[:PROJ].std() - std) < 0.05 * std  # the mu rows
        assert abs(weight[PROJ:].std() - 0.02) < 2e-3  # the log_sigma rows keep weight_init's
        _, mu, log_sigma = ca(text)
        assert log_sigma.abs().max() < 0.1  # sigma starts near 1 either way
        spread[std] = mu.std(dim=0).mean().item()  # how much mu moves with the caption
    assert spread[0.02] < 0.01 < 0.1 < spread[1.0]


def test_discriminator_prior_layer_matches_the_guideline():
    assert isinstance(Discriminator(PROJ, 3, ND, 1, CLIP_DIM, 0, "cpu").prior_layer, nn.Identity)
    prior = Discriminator(PROJ, 3, ND, 1, CLIP_DIM, 2, "cpu").prior_layer
    convs = [m for m in prior.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in convs] == [
        (8 * ND, 16 * ND, 2), (16 * ND, 32 * ND, 2), (32 * ND, 16 * ND, 1), (16 * ND, 8 * ND, 1)]


@pytest.mark.parametrize("bad", [0, 4])
def test_unsupported_stage_counts_are_refused(bad):
    with pytest.raises(ValueError, match="--num_stage must be 1, 2 or 3"):
        Generator(CLIP_DIM, PROJ, NOISE, NG, 3, bad, "cpu")


@pytest.mark.parametrize("num_stage", [1, 2, 3])
def test_graders_rebuild_from_hyperparameters_and_load_strictly(tmp_path, num_stage):
    args = argparse.Namespace(clip_embedding_dim=CLIP_DIM, projection_dim=PROJ, noise_dim=NOISE, num_stage=num_stage,
                              use_uncond_loss=True, use_contrastive_loss=True, batch_size=4, num_epochs=1,
                              learning_rate=2e-4, checkpoint_path=str(tmp_path))
    G = Generator(CLIP_DIM, PROJ, NOISE, NG, 3, num_stage, "cpu")
    D_list = [Discriminator(PROJ, 3, ND, 1, CLIP_DIM, s, "cpu") for s in range(num_stage)]
    save_hyp(args, NG, 3, ND, 1)
    save_model(args, G, D_list, 0, num_stage)

    h = torch.load(tmp_path / "hyperparameter.pt", weights_only=True)
    assert set(h) == set(checkpoints.HYPERPARAMETER_KEYS)
    device = torch.device("cpu")
    G2 = Generator(h['clip_embedding_dim'], h['projection_dim'], h['noise_dim'], h['g_in_chans'], h['g_out_chans'],
                   h['num_stage'], device)
    D2 = [Discriminator(h['projection_dim'], h['g_out_chans'], h['d_in_chans'], h['d_out_chans'],
                        h['clip_embedding_dim'], stage, device) for stage in range(h['num_stage'])]
    load_checkpoint(G2, D2, str(tmp_path), 0)
    for ours, loaded in zip([G, *D_list], [G2, *D2]):
        for key, value in ours.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key])
    assert not G2.training


def test_load_checkpoint_names_the_problem(tmp_path, capsys):
    args = argparse.Namespace(clip_embedding_dim=CLIP_DIM, projection_dim=PROJ, noise_dim=NOISE, num_stage=2,
                              checkpoint_path=str(tmp_path))
    save_model(args, Generator(CLIP_DIM, PROJ, NOISE, NG, 3, 2, "cpu"),
               [Discriminator(PROJ, 3, ND, 1, CLIP_DIM, s, "cpu") for s in range(2)], 0, 2)
    G3 = Generator(CLIP_DIM, PROJ, NOISE, NG, 3, 3, "cpu")
    with pytest.raises(SystemExit):
        load_checkpoint(G3, [], str(tmp_path), 0)
    assert "other hyperparameters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_checkpoint(G3, [], str(tmp_path), 7)
    assert "epoch_7_Gen.pt: no such file" in capsys.readouterr().err
