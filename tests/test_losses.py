"""The guideline's formulas, checked against values computed by hand on small inputs."""
import math

import pytest
import torch

import train
from train_utils import KL_divergence, normalize


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
    from t2i import clip_utils

    clip_model = clip_utils.load_clip(tiny_clip_path)
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    text = normalize(torch.randn(3, 512))
    torch.manual_seed(1)
    loss = train.contrastive_loss_G(images, clip_model, text, "cpu", tau=0.5)
    torch.manual_seed(1)  # the same random crop, by hand
    from train_utils import clip_preprocess, clip_transform, custom_reshape, denormalize_image
    views = custom_reshape(clip_transform(224)(denormalize_image(images)))
    features = clip_model.encode_image(clip_preprocess()(views))
    logits = normalize(text) @ normalize(features).t() / 0.5
    expected = -0.5 * torch.log_softmax(logits, dim=1).diagonal().sum()
    torch.testing.assert_close(loss, expected)
    images.requires_grad_(True)
    train.contrastive_loss_G(images, clip_model, text, "cpu").backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # the gradient reaches the generator


def test_clip_view_is_the_clip_transform_and_custom_reshape_chain():
    from t2i.data.images import clip_view
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


class FixedHeads:
    """A discriminator stand-in whose heads give set logits: real images hold 1, fake ones -1, and the condition
    says whether the caption matches (mu, zeros) or not (wrong_mu, ones)."""

    def __init__(self, logits: dict, align: torch.Tensor):
        self.logits = logits  # (image value, condition value) -> (uncond, cond) logits of the batch
        self.align = align

    def trunk(self, images):
        return images

    def heads(self, features, condition=None, uncond=True, align=True):
        key = (features.flatten()[0].item(), condition.flatten()[0].item())
        uncond_out, cond_out = (torch.tensor(v) for v in self.logits[key])
        return (uncond_out if uncond else None), cond_out, (self.align if align else None)


REAL, FAKE = torch.ones(2, 3, 4, 4), -torch.ones(2, 3, 4, 4)
MU, WRONG_MU = torch.zeros(2, 3), torch.ones(2, 3)
LOGITS = {(1.0, 0.0): ([2.0, -1.0], [0.5, 1.5]), (-1.0, 0.0): ([-0.5, 0.3], [-2.0, 0.1]),
          (1.0, 1.0): ([0.0, 0.0], [0.3, -0.7])}


def test_d_and_g_losses_are_bce_on_sigmoid_outputs_with_the_skeleton_keys():
    align = normalize(torch.randn(2, 4))
    text = normalize(torch.randn(2, 4))
    D = FixedHeads(LOGITS, align)
    ones, zeros = torch.ones(2), torch.zeros(2)
    bce, sig = torch.nn.BCELoss(), torch.sigmoid
    real_uncond, real_cond = (torch.tensor(v) for v in LOGITS[(1.0, 0.0)])
    fake_uncond, fake_cond = (torch.tensor(v) for v in LOGITS[(-1.0, 0.0)])
    parts = {}
    loss = train.D_loss(REAL, FAKE, D, torch.nn.BCEWithLogitsLoss(), True, True, 5.0, MU, text, zeros, ones,
                        components=parts)
    expected = (bce(sig(real_cond), ones) + bce(sig(fake_cond), zeros) + bce(sig(real_uncond), ones)
                + bce(sig(fake_uncond), zeros) + 5 * train.contrastive_loss_D(align, text)
                + 5 * train.contrastive_loss_D(align, text))
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"d_loss_fake_uncond", "d_loss_real_uncond", "d_loss_fake_cond", "d_loss_real_cond",
                          "d_loss_fake_cond_contrastive", "d_loss_real_cond_contrastive"}
    parts = {}
    train.D_loss(REAL, FAKE, D, torch.nn.BCEWithLogitsLoss(), False, False, 5.0, MU, text, zeros, ones,
                 components=parts)
    assert set(parts) == {"d_loss_real_cond", "d_loss_fake_cond"}

    g_parts = {}
    g_loss = train.G_loss(FAKE, D, torch.nn.BCEWithLogitsLoss(), True, True, None, 5.0, 10.0, "cpu", MU, text, ones,
                          components=g_parts)  # 4 px images: no L_ConG, as the course applies it at 256 px only
    expected_g = bce(sig(fake_cond), ones) + bce(sig(fake_uncond), ones) + 5 * train.contrastive_loss_D(align, text)
    torch.testing.assert_close(g_loss, expected_g)
    assert set(g_parts) == {"g_loss_uncond", "g_loss_cond", "d_loss_cond_contrastive"}


def test_l_cong_is_added_at_256_px_or_at_the_size_asked_for(tiny_clip_path):
    from t2i import clip_utils

    clip_model = clip_utils.load_clip(tiny_clip_path)
    text = normalize(torch.randn(2, 512))
    for size, min_size, expected in ((64, 256, False), (256, 256, True), (64, 64, True)):
        fake = -torch.ones(2, 3, size, size)
        D = FixedHeads(LOGITS, normalize(torch.randn(2, 512)))
        parts = {}
        train.G_loss(fake, D, torch.nn.BCEWithLogitsLoss(), False, True, clip_model, 5.0, 10.0, "cpu", MU, text,
                     torch.ones(2), clip_loss_min_size=min_size, components=parts)
        assert ("g_loss_cond_contrastive" in parts) == expected


def test_mismatched_captions_share_the_fake_weight():
    D = FixedHeads(LOGITS, None)
    ones, zeros = torch.ones(2), torch.zeros(2)
    parts = {}
    train.D_loss(REAL, FAKE, D, torch.nn.BCEWithLogitsLoss(), False, False, 5.0, MU, None, zeros, ones,
                 wrong_mu=WRONG_MU, components=parts)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fake_cond, wrong_cond = torch.tensor(LOGITS[(-1.0, 0.0)][1]), torch.tensor(LOGITS[(1.0, 1.0)][1])
    torch.testing.assert_close(parts["d_loss_fake_cond"] + parts["d_loss_wrong_cond"],
                               0.5 * bce(fake_cond, zeros) + 0.5 * bce(wrong_cond, zeros))
