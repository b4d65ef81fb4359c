"""The guideline's formulas, checked against values computed by hand on small inputs."""
import math

import pytest
import torch

import train
from network import DiscriminatorLogits
from train_utils import KL_divergence, gather_all, normalize


def test_kl_divergence_matches_the_closed_form():
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    log_sigma = torch.tensor([[0.0, math.log(2.0)], [math.log(0.5), 0.0]])
    by_hand = [
        (0 - 0.5 + (1 + 0.25) / 2) + (-math.log(2) - 0.5 + (4 + 1) / 2),
        (-math.log(0.5) - 0.5 + (0.25 + 0) / 2) + (0 - 0.5 + (1 + 4) / 2),
    ]
    torch.testing.assert_close(KL_divergence(mu, log_sigma), torch.tensor(sum(by_hand) / 2))
    assert KL_divergence(torch.zeros(3, 4), torch.zeros(3, 4)) == 0


def test_contrastive_loss_matches_the_formula():
    tau = 0.5
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    f = [[1, 0], [0, 1], [1 / math.sqrt(2), 1 / math.sqrt(2)]]
    h = [[1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2)], [0, -1]]
    total = 0.0
    for i in range(3):
        sims = [sum(a * b for a, b in zip(f[j], h[i])) / tau for j in range(3)]
        total += math.log(math.exp(sims[i]) / sum(math.exp(s) for s in sims))
    expected = -tau * total
    torch.testing.assert_close(train.contrastive_loss_D(features, text, tau), torch.tensor(expected))
    torch.testing.assert_close(train.contrastive_loss(features, text, tau), torch.tensor(expected))


def test_contrastive_loss_g_uses_clip_image_features(tiny_clip_path):
    import clip_utils

    clip_model = clip_utils.load_clip(tiny_clip_path)
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    text = normalize(torch.randn(3, 512))
    torch.manual_seed(1)
    loss = train.contrastive_loss_G(images, clip_model, text, "cpu", tau=0.5)
    torch.manual_seed(1)  # the same random crop, by hand
    from train_utils import clip_preprocess, clip_transform, custom_reshape, denormalize_image
    features = clip_model.encode_image(clip_preprocess()(custom_reshape(clip_transform(224)(denormalize_image(images)))))
    logits = normalize(text) @ normalize(features).t() / 0.5
    expected = -0.5 * torch.log_softmax(logits, dim=1).diagonal().sum()
    torch.testing.assert_close(loss, expected)
    images.requires_grad_(True)
    train.contrastive_loss_G(images, clip_model, text, "cpu").backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # the gradient reaches the generator


def test_clip_view_is_the_clip_transform_and_custom_reshape_chain():
    from image_ops import clip_view
    from train_utils import clip_transform, custom_reshape

    for side in (64, 256):  # upsampled (the 64 px stage) and antialiased downsampling (the 256 px stage)
        images = torch.rand(2, 3, side, side, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(2, 3, 224, 224, dtype=torch.float64)
        for seed in range(6):  # several crops: the same random draws give the same crop
            torch.manual_seed(seed)
            chain = custom_reshape(clip_transform(224)(images))
            after_chain = torch.get_rng_state()
            torch.manual_seed(seed)
            fused = clip_view(images)
            assert torch.equal(torch.get_rng_state(), after_chain)  # the same draws: training order unchanged
            torch.testing.assert_close(fused, chain)
            chain_grad, = torch.autograd.grad((chain * weights).sum(), images)
            fused_grad, = torch.autograd.grad((fused * weights).sum(), images)
            torch.testing.assert_close(fused_grad, chain_grad)
    with pytest.raises(ValueError, match="square"):
        clip_view(torch.rand(1, 3, 64, 32))


def _logits(uncond, cond, align):
    return DiscriminatorLogits(torch.tensor(uncond), torch.tensor(cond), align)


def test_d_and_g_losses_are_bce_on_sigmoid_outputs():
    align = normalize(torch.randn(2, 4))
    text = normalize(torch.randn(2, 4))
    real = _logits([2.0, -1.0], [0.5, 1.5], align)
    fake = _logits([-0.5, 0.3], [-2.0, 0.1], align)
    ones, zeros = torch.ones(2), torch.zeros(2)
    bce = torch.nn.BCELoss()
    sig = torch.sigmoid
    parts = train.D_loss(real, fake, text, ones, zeros, use_uncond_loss=True, use_contrastive_loss=True, gamma=5.0)
    expected = (bce(sig(real.cond), ones) + bce(sig(fake.cond), zeros) + bce(sig(real.uncond), ones)
                + bce(sig(fake.uncond), zeros) + 5 * train.contrastive_loss_D(align, text)
                + 5 * train.contrastive_loss_D(align, text))
    torch.testing.assert_close(gather_all(parts), expected)
    assert set(train.D_loss(real, fake, text, ones, zeros, False, False, 5.0)) == {"d_real_cond", "d_fake_cond"}

    g_parts = train.G_loss(fake, text, ones, use_uncond_loss=True, use_contrastive_loss=True, gamma=5.0)
    expected_g = (bce(sig(fake.cond), ones) + bce(sig(fake.uncond), ones) + 5 * train.contrastive_loss_D(align, text))
    torch.testing.assert_close(gather_all(g_parts), expected_g)


def test_mismatched_captions_share_the_fake_weight():
    real = _logits([0.0, 0.0], [1.0, 2.0], None)
    fake = _logits([0.0, 0.0], [-1.0, 0.5], None)
    wrong = _logits([0.0, 0.0], [0.3, -0.7], None)
    ones, zeros = torch.ones(2), torch.zeros(2)
    parts = train.D_loss(real, fake, None, ones, zeros, False, False, 5.0, wrong=wrong)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(parts["d_fake_cond"] + parts["d_wrong_cond"],
                               0.5 * bce(fake.cond, zeros) + 0.5 * bce(wrong.cond, zeros))


def test_language_free_pseudo_features_follow_lafite():
    torch.manual_seed(0)
    image_features = normalize(torch.randn(4, 512))
    torch.manual_seed(1)
    pseudo = train.pseudo_text_features(image_features, xi=0.1)
    torch.manual_seed(1)
    eps = torch.randn(4, 512)
    expected = normalize(image_features + 0.1 * eps / eps.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(pseudo, expected)
    torch.testing.assert_close(pseudo.norm(dim=-1), torch.ones(4))
    cosine = (pseudo * image_features).sum(-1)
    torch.testing.assert_close(cosine, torch.full((4,), 1 / math.sqrt(1 + 0.01)), atol=0.02, rtol=0)
