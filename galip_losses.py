"""GALIP's training objective (Tao et al., CVPR 2023) as functions, for `network_galip`'s models.

One training step (batch of real images x in [-1, 1], their unit-norm sentence embeddings s, noise z):

    D step:  f_real = clip_image_features(CLIP, x, with_embedding=False)        frozen CLIP, no gradient
             x_fake = G(s, z)[0][-1];  f_fake, e_fake = clip_image_features(CLIP, x_fake)   graph kept for G
             L_D = hinge(D(f_real, s)) + [hinge(-D(f_fake.detach(), s)) + hinge(-D(f_real, s_mismatched))] / 2
                   + MA-GP(D(f_real, s); f_real, sqrt(D) s)     (the sentence as D's head reads it)
    G step:  L_G = -mean D(f_fake, s) - sim_w * mean cos(e_fake, s)     (backward through the frozen CLIP into G)

Hinge losses with a mismatched-text negative (the matching-aware D of DF-GAN / GALIP); MA-GP, the
matching-aware gradient penalty k * E[ ||(grad_f D, grad_s D)||_2 ** p ] on real, matching pairs, with
GALIP's and DF-GAN's k = 2, p = 6; sim_w = 4 (GALIP's CUB and COCO configs).

GALIP's D differentiates with respect to CLIP features, not pixels, so MA-GP's double backward runs through
the small D head only; CLIP's backward is needed once per step, for G.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_INPUT_SIZE = 224
# GALIP reads ViT-B/32's grid tokens after blocks 2, 5 and 9 of 12 (0-based indices 1, 4, 8).
GALIP_LAYER_FRACTIONS = (2 / 12, 5 / 12, 9 / 12)
MA_GP_K = 2.0
MA_GP_P = 6.0
SIM_WEIGHT = 4.0


# ----------------------------------------------------------------------------------------------------------
# CLIP features for D
# ----------------------------------------------------------------------------------------------------------

def clip_layer_indices(num_layers: int) -> tuple[int, int, int]:
    """0-based indices of the ViT blocks whose output tokens D reads: (1, 4, 8) for a 12-block ViT (GALIP);
    the same depth fractions for other depths (a 2-block ViT gives (0, 0, 1); repeats are allowed)."""
    return tuple(max(0, math.ceil(round(f * num_layers, 6)) - 1) for f in GALIP_LAYER_FRACTIONS)


@functools.lru_cache(maxsize=16)
def _resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """[out_size, in_size] matrix of a 1-D bicubic resize (antialiased when shrinking), read off F.interpolate."""
    basis = torch.eye(in_size, dtype=torch.float64)[None, None]
    return F.interpolate(basis, size=(out_size, in_size), mode="bicubic", align_corners=False,
                         antialias=out_size < in_size)[0, 0]


def to_clip_input(images: torch.Tensor, size: int = CLIP_INPUT_SIZE) -> torch.Tensor:
    """[B, 3, n, n] in [-1, 1] -> CLIP's input [B, 3, size, size]: to [0, 1], bicubic resize (two small matrix
    products, whose backward is cheap on the CPU), CLIP's mean / std. (GALIP's own code maps [-1, 1] to
    [0, 1] twice, a low-contrast input; this is the transform CLIP was trained with.)"""
    images = images * 0.5 + 0.5
    if images.shape[-1] != size or images.shape[-2] != size:
        rows = _resize_matrix(images.shape[-2], size).to(images.device, images.dtype)
        cols = _resize_matrix(images.shape[-1], size).to(images.device, images.dtype)
        images = rows @ images @ cols.t()
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype)[:, None, None]
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype)[:, None, None]
    return (images - mean) / std


def patch_embedding(conv1: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """CLIP-ViT's patch embedding (a bias-free convolution whose stride is its kernel) as one matrix product:
    [B, 3, H, W] -> [B, (H/p) * (W/p), width], the tokens in the convolution's row-major order. Same values;
    its backward is a matmul, where mkldnn's large-kernel convolution backward took 0.8 s of a 2 s CPU step."""
    patch = conv1.kernel_size[0]
    if conv1.stride[0] != patch or conv1.bias is not None or conv1.padding[0] != 0:
        raise ValueError("patch_embedding expects a bias-free, unpadded convolution with stride == kernel")
    batch, chans, height, width = images.shape
    rows, cols = height // patch, width // patch
    patches = images.reshape(batch, chans, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, rows * cols, -1) @ conv1.weight.reshape(conv1.out_channels, -1).t()


def clip_image_features(clip_model: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None,
                        with_embedding: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP-ViT's grid tokens after the blocks `layers` (default `clip_layer_indices`), as D's input
    [B, len(layers), width, grid, grid], and the image embedding [B, embed_dim] (None unless
    `with_embedding`; without it the blocks after the deepest selected one are skipped). Both float32.

    Differentiable with respect to `images`: wrap the call in torch.no_grad() for real images. Works with
    openai-clip's `VisionTransformer` in fp32 or in its CUDA fp16 layout (the input is cast to its dtype).
    """
    visual = clip_model.visual
    blocks = visual.transformer.resblocks
    layers = tuple(clip_layer_indices(len(blocks)) if layers is None else layers)
    dtype = visual.conv1.weight.dtype
    x = patch_embedding(visual.conv1, to_clip_input(images.float(), visual.input_resolution).to(dtype))
    batch, width = x.shape[0], x.shape[-1]                                                # [B, g*g, width]
    grid = math.isqrt(x.shape[1])
    cls = visual.class_embedding.to(dtype).expand(batch, 1, width)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(dtype))
    x = x.permute(1, 0, 2)                                                                # [1 + g*g, B, width]
    last = len(blocks) - 1 if with_embedding else max(layers)
    taps: dict[int, torch.Tensor] = {}
    for index in range(last + 1):
        x = blocks[index](x)
        if index in layers:
            taps[index] = x[1:].permute(1, 2, 0).reshape(batch, width, grid, grid).float()
    local = torch.stack([taps[index] for index in layers], dim=1)
    if not with_embedding:
        return local, None
    embedding = visual.ln_post(x[0])
    if visual.proj is not None:
        embedding = embedding @ visual.proj
    return local, embedding.float()


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------

def hinge_real(logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D)]: D's loss on real, matching pairs."""
    return F.relu(1.0 - logits).mean()


def hinge_fake(logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 + D)]: D's loss on fakes and on real images with mismatched text."""
    return F.relu(1.0 + logits).mean()


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                             mismatched_logits: torch.Tensor) -> torch.Tensor:
    """GALIP's L_D without the penalty: real + (fake + mismatched) / 2."""
    return hinge_real(real_logits) + (hinge_fake(fake_logits) + hinge_fake(mismatched_logits)) / 2


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z, s), s)]."""
    return -fake_logits.mean()


def mismatched_sentences(sentence: torch.Tensor) -> torch.Tensor:
    """Each image's text replaced by the next one's in the batch (GALIP's shift by one), detached."""
    return torch.roll(sentence, shifts=-1, dims=0).detach()


def ma_gp(real_logits: torch.Tensor, inputs: Sequence[torch.Tensor], k: float = MA_GP_K, p: float = MA_GP_P,
          scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Matching-aware gradient penalty: k * mean_i ||(dD_i/d input_1, dD_i/d input_2, ...)||_2 ** p.

    `real_logits` must come from `inputs` (real CLIP features and their matching sentence embeddings, each
    with requires_grad), per sample i. The penalty keeps D smooth around real, matching pairs in both the
    image and the text direction. The graph is kept (create_graph) so the penalty trains D.
    With fp16 autocast pass the loss's GradScaler: the gradient is taken of the scaled logits (small values
    would underflow) and unscaled before the norm, as GALIP's mixed-precision variant does.
    """
    outputs = real_logits if scaler is None else scaler.scale(real_logits)
    grads = torch.autograd.grad(outputs=outputs.sum(), inputs=list(inputs), create_graph=True)
    if scaler is not None:
        inv_scale = 1.0 / (scaler.get_scale() + 1e-8)
        grads = [grad * inv_scale for grad in grads]
    flat = torch.cat([grad.reshape(grad.shape[0], -1).float() for grad in grads], dim=1)
    return k * flat.norm(dim=1).pow(p).mean()


def text_image_similarity(image_embedding: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of CLIP image embeddings and their sentence embeddings."""
    return F.cosine_similarity(image_embedding.float(), sentence.float(), dim=1).mean()


def discriminator_loss(model_d: nn.Module, real_layers: torch.Tensor, fake_layers: torch.Tensor,
                       sentence: torch.Tensor, k: float = MA_GP_K, p: float = MA_GP_P,
                       scaler: torch.amp.GradScaler | None = None, mismatch: bool = True
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GALIP's whole D loss for one batch (stage-0 `network_galip.Discriminator`): hinge with fake and
    mismatched negatives, plus MA-GP on the real, matching pairs, with respect to the CLIP features and the
    sentence as D's head reads it (`text_input`, sqrt(D) s). `sentence` is unit-norm. `mismatch` False drops
    the mismatched negative (L_D = real + fake). Returns (loss, detached components: read back only when
    reported, so a CUDA step never waits for them)."""
    real_layers = real_layers.detach().requires_grad_(True)
    text = model_d.text_input(sentence.detach()).detach().requires_grad_(True)  # sqrt(D) s, what D's head reads
    real_features = model_d.features(real_layers)
    real_logits = model_d.predict(real_features, text)
    fake_logits = model_d.predict(model_d.features(fake_layers.detach()), text.detach())
    parts = {"d_real": hinge_real(real_logits), "d_fake": hinge_fake(fake_logits)}
    if mismatch:
        mismatched_logits = model_d.predict(real_features, mismatched_sentences(text))
        hinge = discriminator_hinge_loss(real_logits, fake_logits, mismatched_logits)
        parts["d_mismatch"] = hinge_fake(mismatched_logits)
    else:
        hinge = parts["d_real"] + parts["d_fake"]
    penalty = ma_gp(real_logits, (real_layers, text), k, p, scaler)
    parts["d_ma_gp"] = penalty
    return hinge + penalty, {name: value.detach() for name, value in parts.items()}


def generator_loss(model_d: nn.Module, fake_layers: torch.Tensor, fake_embedding: torch.Tensor,
                   sentence: torch.Tensor, sim_weight: float = SIM_WEIGHT
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GALIP's G loss: -E[D(fake, s)] - sim_weight * E[cos(CLIP(fake), s)]. Returns (loss, detached
    components)."""
    sentence = sentence.detach()
    adversarial = generator_hinge_loss(model_d(fake_layers, sentence))
    similarity = text_image_similarity(fake_embedding, sentence)
    return adversarial - sim_weight * similarity, {"g_adv": adversarial.detach(), "g_sim": similarity.detach()}
