"""GALIP (Tao et al., CVPR 2023, "Generative Adversarial CLIPs for Text-to-Image Synthesis") behind the course's
model interface: the guideline's Problem 5, submitted as `network.py`.

GALIP puts a frozen CLIP in the discriminator: D judges the local (grid-token) features of CLIP ViT-B/32's
image encoder with a small trainable head, against the sentence embedding. Its generator is DF-GAN's
(Tao et al., CVPR 2022): a one-stage stack of residual blocks in which every block modulates its features
channel-wise with affine parameters predicted from [noise, sentence] ("deep text-image fusion").

    G:  z ──fc──> [64, 8, 8] ──4 M_Blocks──> conv ──> [8ngf, 8, 8] ──6 G_Blocks (x2 each but the first)──>
        [ngf, 256, 256] ──LReLU, conv, tanh──> image 256 px;  every block is fused with c = [z, sqrt(D) s]
    D:  CLIP-ViT(image) ──tokens after blocks 2, 5, 9──> [3, 768, 7, 7] ──2 D_Blocks (+ CLIP skips), 1 D_Block──>
        [512, 7, 7] ──concat tiled sqrt(D) s, conv k4, LReLU, conv k4──> one logit

Fitting the course's harness (the graders build both classes positionally from hyperparameter.pt, load the
state dicts strictly, and save G's outputs [-3], [-2], [-1] as the 64, 128 and 256 px results):
* GALIP is a one-stage model. G draws the largest image (64 * 2**(num_stage - 1) px) and returns it with its
  box-downsampled copies, smallest first, so the three saved files are one picture at three sizes.
* The frozen CLIP lives outside both modules: no state dict carries CLIP weights and no constructor needs them.
  Training runs CLIP and passes D its features (`galip_losses.clip_image_features`).
* GALIP's generator also sends its 7x7 bridge features through the frozen CLIP-ViT ("CLIP-empowered
  generator"). That part is left out: G's state dict would have to carry ViT-B/32's 85 M transformer weights
  (324 MiB fp32 in every epoch_N_Gen.pt, 6x the trainable G at the default width), since the graders'
  constructor cannot download them. Without the ViT, GALIP's conv_fuse -> ViT -> conv path is two linear
  convolutions in a row, merged here into one.
* Stage 0's Discriminator is GALIP's whole trainable D (feature head + matching head). The stages > 0 are
  parameter-free placeholders: their images are copies of the largest one, so there is nothing else to judge,
  and their empty state dicts save and load strictly like any other.

Hyperparameters, as the course passes them (`hyperparameter.pt`):
    clip_embedding_dim  D, the sentence embedding width (512 for ViT-B/32).
    projection_dim      P, width of the matching head's joint convolution (GALIP: 128). G does not use it.
    noise_dim           z width (GALIP: 100).
    g_in_chans          width of G's first (8x8) block, 8 * ngf. Must divide by 8. Default 256 (ngf 32, DF-GAN's
                        CUB width): 816 GFLOP per batch-8 training step at 256 px, as much as our StackGAN's
                        834 at Ng 1024; GALIP's ngf 64 (512) costs 1894.
    g_out_chans         image channels (3).
    num_stage           1, 2 or 3: the largest image is 64, 128 or 256 px.
    d_in_chans          token width of the CLIP image encoder whose features D reads: 768 for ViT-B/32 (the
                        default). D's residual blocks keep that width.
    d_out_chans         logits per image (1).

Inputs: `text_embedding` is the L2-normalised CLIP sentence embedding (what the graders pass). GALIP feeds raw
CLIP embeddings; a unit vector's elements are ~1/sqrt(D), which the noise (elements ~1) would drown in the
fusion MLPs, so both G and D multiply it by sqrt(D) first (`text_scale`): elements ~1, the scale of z.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_G_IN_CHANS = 256  # 8 * ngf, ngf 32
DEFAULT_D_IN_CHANS = 768  # ViT-B/32's token width
MAX_STAGES = 3            # 64, 128 and 256 px: the preprocessed images are 256 px
BRIDGE_SIZE = 8           # G's first feature map is 8x8 (GALIP: CLIP's 7x7 grid, then 8x8 after its first block)
BRIDGE_CODE_CHANS = 64    # GALIP's bridge feature predictor: z -> [64, 7, 7], four M_Blocks of 64 -> 32 -> 64
BRIDGE_MID_CHANS = 32
BRIDGE_BLOCKS = 4
NUM_CLIP_LAYERS = 3       # D reads CLIP tokens after three ViT blocks (GALIP: after blocks 2, 5 and 9 of 12)
CLIP_GRID = 7             # 224 px input / 32 px patches


def check_num_stage(num_stage: int) -> None:
    if num_stage not in range(1, MAX_STAGES + 1):
        raise ValueError(f"--num_stage must be 1, 2 or 3 (64, 128 or 256 px), got {num_stage}")


def text_scale(embedding_dim: int) -> float:
    """sqrt(D): turns a unit-norm embedding into one whose elements have unit variance, like the noise's."""
    return math.sqrt(embedding_dim)


def generator_channels(base_chans: int, image_size: int) -> list[tuple[int, int]]:
    """(in, out) channels of G's blocks for an `image_size` px output, from 8x8 (DF-GAN's / GALIP's rule):
    widths ngf * min(2**i, 8) counted from the output, ngf = base_chans / 8, so the early blocks are 8 ngf wide
    and the last ones halve it: 256 px -> 8,8,8,8,4,2,1 (x ngf), six blocks at 8, 16, 32, 64, 128, 256 px."""
    ngf = base_chans // 8
    num_widths = int(math.log2(image_size)) - 1
    widths = [ngf * min(2 ** i, 8) for i in range(num_widths)][::-1]
    return list(zip(widths[:-1], widths[1:]))


# ----------------------------------------------------------------------------------------------------------
# Generator: DF-GAN blocks with deep text-image fusion
# ----------------------------------------------------------------------------------------------------------

class Affine(nn.Module):
    """x -> gamma(c) * x + beta(c), channel-wise, with gamma and beta predicted from the condition c by two
    small MLPs. Initialised to the identity (gamma 1, beta 0): fusion starts as a no-op and learns the text."""

    def __init__(self, cond_dim: int, num_features: int):
        super().__init__()
        self.fc_gamma = nn.Sequential(nn.Linear(cond_dim, num_features), nn.ReLU(inplace=True),
                                      nn.Linear(num_features, num_features))
        self.fc_beta = nn.Sequential(nn.Linear(cond_dim, num_features), nn.ReLU(inplace=True),
                                     nn.Linear(num_features, num_features))
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            nn.init.zeros_(self.fc_gamma[2].weight)
            nn.init.ones_(self.fc_gamma[2].bias)
            nn.init.zeros_(self.fc_beta[2].weight)
            nn.init.zeros_(self.fc_beta[2].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma = self.fc_gamma(cond)[:, :, None, None]
        beta = self.fc_beta(cond)[:, :, None, None]
        return gamma * x + beta


class FusionBlock(nn.Module):
    """DF-GAN's DFBlock: [Affine + LeakyReLU] x 2. Stacking two modulations with a non-linearity between them
    lets the text change the features non-linearly, more than one conditional normalisation could."""

    def __init__(self, cond_dim: int, num_features: int):
        super().__init__()
        self.affine0 = Affine(cond_dim, num_features)
        self.affine1 = Affine(cond_dim, num_features)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.affine0(x, cond), 0.2)
        return F.leaky_relu(self.affine1(x, cond), 0.2)


def shortcut_conv(in_chans: int, out_chans: int) -> nn.Module:
    """A learned 1x1 projection where the residual changes the width; the identity otherwise."""
    return nn.Conv2d(in_chans, out_chans, kernel_size=1) if in_chans != out_chans else nn.Identity()


class GBlock(nn.Module):
    """DF-GAN's generator block: [nearest x2 upsampling], then shortcut + [fuse, conv3x3, fuse, conv3x3].

    No normalisation layer anywhere in G: the fusion affines are its only per-channel scale and shift. The
    convolutions keep their biases, as in DF-GAN / GALIP (only the fusion's affine follows c1).
    """

    def __init__(self, cond_dim: int, in_chans: int, out_chans: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.fuse1 = FusionBlock(cond_dim, in_chans)
        self.c1 = nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1)
        self.fuse2 = FusionBlock(cond_dim, out_chans)
        self.c2 = nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1)
        self.shortcut = shortcut_conv(in_chans, out_chans)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        residual = self.c2(self.fuse2(self.c1(self.fuse1(x, cond)), cond))
        return self.shortcut(x) + residual


class MBlock(nn.Module):
    """GALIP's bridge block (M_Block): shortcut + [conv3x3, fuse, conv3x3, fuse] at a fixed size."""

    def __init__(self, cond_dim: int, in_chans: int, mid_chans: int, out_chans: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, mid_chans, kernel_size=3, padding=1)
        self.fuse1 = FusionBlock(cond_dim, mid_chans)
        self.conv2 = nn.Conv2d(mid_chans, out_chans, kernel_size=3, padding=1)
        self.fuse2 = FusionBlock(cond_dim, out_chans)
        self.shortcut = shortcut_conv(in_chans, out_chans)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        residual = self.fuse2(self.conv2(self.fuse1(self.conv1(x), cond)), cond)
        return self.shortcut(x) + residual


class BridgeFeaturePredictor(nn.Module):
    """GALIP's bridge feature predictor: z -> a small [64, 8, 8] code, refined by four text-fused M_Blocks,
    projected to G's first width. (GALIP then adds what the frozen CLIP-ViT makes of it; see the module doc.)"""

    def __init__(self, noise_dim: int, cond_dim: int, out_chans: int):
        super().__init__()
        self.fc_code = nn.Linear(noise_dim, BRIDGE_CODE_CHANS * BRIDGE_SIZE * BRIDGE_SIZE)
        self.blocks = nn.ModuleList([MBlock(cond_dim, BRIDGE_CODE_CHANS, BRIDGE_MID_CHANS, BRIDGE_CODE_CHANS)
                                     for _ in range(BRIDGE_BLOCKS)])
        self.conv = nn.Conv2d(BRIDGE_CODE_CHANS, out_chans, kernel_size=5, padding=2)

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        code = self.fc_code(noise).view(-1, BRIDGE_CODE_CHANS, BRIDGE_SIZE, BRIDGE_SIZE)
        for block in self.blocks:
            code = block(code, cond)
        return self.conv(code)


class Generator(nn.Module):
    """[sentence, z] -> images at 64, 128, ... 64 * 2**(num_stage - 1) px (one picture, box-downsampled).

    `forward(text_embedding [B, D], noise [B, noise_dim]) -> (fake_images, mu, log_sigma)`, the course's
    format. GALIP has no conditioning augmentation: `mu` is the sentence embedding G was given (the condition
    D judges against) and `log_sigma` zeros, so a KL term on them is a constant with no gradient.
    """

    ARCH = "galip"  # read by train.py: the course's main.py, with this module as network.py, trains GALIP

    def __init__(self, clip_embedding_dim: int, projection_dim: int, noise_dim: int, g_in_chans: int,
                 g_out_chans: int, num_stage: int, device: torch.device | str):
        super().__init__()
        check_num_stage(num_stage)
        if g_in_chans % 8 or g_in_chans < 8:
            raise ValueError(f"g_in_chans {g_in_chans} (8 x ngf, the width of G's first block) must be a "
                             f"positive multiple of 8")
        self.device = device
        self.clip_embedding_dim = clip_embedding_dim
        self.projection_dim = projection_dim  # unused by G: GALIP fuses [z, s] directly
        self.noise_dim = noise_dim
        self.cond_dim = noise_dim + clip_embedding_dim
        self.in_chans = g_in_chans
        self.out_chans = g_out_chans
        self.num_stage = num_stage
        self.image_size = 64 * 2 ** (num_stage - 1)
        self.text_scale = text_scale(clip_embedding_dim)

        channels = generator_channels(g_in_chans, self.image_size)
        self.bridge = BridgeFeaturePredictor(noise_dim, self.cond_dim, channels[0][0])
        # The first block refines the 8x8 bridge features in place (GALIP's 7 -> 8 px step); each later one
        # doubles the size: 8 -> 16 -> ... -> image_size.
        self.blocks = nn.ModuleList([GBlock(self.cond_dim, c_in, c_out, upsample=index > 0)
                                     for index, (c_in, c_out) in enumerate(channels)])
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(channels[-1][1], g_out_chans, 3, padding=1),
                                    nn.Tanh())  # tanh (DF-GAN's; GALIP clamps instead): images stay in [-1, 1]

    def condition(self, text_embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """c = [z, sqrt(D) s], the input of every fusion MLP."""
        return torch.cat([noise, self.text_scale * text_embedding], dim=1)

    def forward(self, text_embedding: torch.Tensor, noise: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        cond = self.condition(text_embedding, noise)
        out = self.bridge(noise, cond)
        for block in self.blocks:
            out = block(out, cond)
        image = self.to_rgb(out)
        # Smallest first: [-1] is the full image, [-2] half its size, [-3] a quarter (area averages).
        fake_images = [F.avg_pool2d(image, 2 ** k) if k else image for k in reversed(range(self.num_stage))]
        return fake_images, text_embedding, torch.zeros_like(text_embedding)


# ----------------------------------------------------------------------------------------------------------
# Discriminator: a trainable head on frozen CLIP features
# ----------------------------------------------------------------------------------------------------------

class DBlock(nn.Module):
    """GALIP's D_Block at CLIP's 7x7 grid: x' = shortcut(x) + gamma * [conv3x3, LReLU] x 2 (x) [+ beta * f_l],
    where f_l is the next selected CLIP layer's features. gamma and beta start at 0, so D starts from the
    shallowest CLIP features and learns how much of its own convolutions and deeper CLIP layers to add."""

    def __init__(self, in_chans: int, out_chans: int, clip_skip: bool):
        super().__init__()
        self.conv_r = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.LeakyReLU(0.2),
        )
        self.shortcut = shortcut_conv(in_chans, out_chans)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1)) if clip_skip else None

    def forward(self, x: torch.Tensor, clip_features: torch.Tensor | None = None) -> torch.Tensor:
        out = self.shortcut(x) + self.gamma * self.conv_r(x)
        if self.beta is not None:
            out = out + self.beta * clip_features
        return out


class Discriminator(nn.Module):
    """Stage `stage`'s discriminator. Stage 0 holds GALIP's trainable D; later stages are empty placeholders.

    Stage 0 (training calls these; the graders only build and load the module):
    * `features(clip_layers [B, 3, d_in_chans, 7, 7]) -> [B, min(d_in_chans, D), 7, 7]`: GALIP's NetD on
      the CLIP-ViT tokens after three blocks (`galip_losses.clip_image_features`), shallowest first.
    * `text_input(sentence [B, D] unit-norm) -> sqrt(D) * sentence`: the sentence as the matching head reads it.
    * `predict(features, text) -> [B]` logits: GALIP's NetC, the matching-aware head, on `text_input(s)`.
    * `forward(clip_layers, sentence) -> [B]` logits = predict(features(clip_layers), text_input(sentence)).
    The logits are raw (hinge loss, no sigmoid). Computing `features` once lets a step judge one image
    batch against the matching and the mismatched sentences. MA-GP differentiates with respect to
    `text_input(s)`, not s: with respect to the unit vector the text gradient is sqrt(D) times larger, and
    its 6th power swamped the penalty (measured at initialisation: 5.1 against 0.11 for the image features),
    which taught D to ignore the text.
    """

    ARCH = "galip"

    def __init__(self, projection_dim: int, g_out_chans: int, d_in_chans: int, d_out_chans: int,
                 clip_embedding_dim: int, stage: int, device: torch.device | str):
        super().__init__()
        check_num_stage(stage + 1)
        self.device = device
        self.projection_dim = projection_dim
        self.img_chans = g_out_chans
        self.in_chans = d_in_chans
        self.out_chans = d_out_chans
        self.clip_embedding_dim = clip_embedding_dim
        self.stage = stage
        self.text_scale = text_scale(clip_embedding_dim)
        self.is_placeholder = stage > 0
        if self.is_placeholder:
            return
        # NetD: two residual blocks that each add the next CLIP layer, then one that narrows to the feature
        # width (GALIP: 768 -> 512, the embedding width; never wider than the CLIP tokens).
        self.feature_chans = min(d_in_chans, clip_embedding_dim)
        self.blocks = nn.ModuleList([DBlock(d_in_chans, d_in_chans, clip_skip=True)
                                     for _ in range(NUM_CLIP_LAYERS - 1)])
        self.main = DBlock(d_in_chans, self.feature_chans, clip_skip=False)
        # NetC: [features, tiled sentence] -> conv 4x4 (7 -> 4) -> LReLU -> conv 4x4 (4 -> 1).
        self.joint_conv = nn.Sequential(
            nn.Conv2d(self.feature_chans + clip_embedding_dim, projection_dim, kernel_size=4, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(projection_dim, d_out_chans, kernel_size=4, bias=False),
        )

    def _check_active(self) -> None:
        if self.is_placeholder:
            raise RuntimeError(f"stage-{self.stage} discriminator is a placeholder: GALIP judges the largest "
                               f"image once, with the stage-0 discriminator")

    def features(self, clip_layers: torch.Tensor) -> torch.Tensor:
        self._check_active()
        if clip_layers.dim() != 5 or clip_layers.shape[1] != NUM_CLIP_LAYERS:
            raise ValueError(f"expected CLIP features [B, {NUM_CLIP_LAYERS}, {self.in_chans}, 7, 7], "
                             f"got {tuple(clip_layers.shape)}")
        out = clip_layers[:, 0]
        for index, block in enumerate(self.blocks):
            out = block(out, clip_layers[:, index + 1])
        return self.main(out)

    def text_input(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.text_scale * sentence

    def predict(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """NetC: conv4x4([features, text tiled over the grid]) -> LReLU -> conv4x4 -> logit.

        The first convolution has no padding, so every output position sees the tiled text under every
        kernel tap: the text's share of it is one matrix product with that half of the kernel summed over
        its taps. Computed that way: the same function of the same weights as the concatenation, without
        convolving D constant channels (half the head's input).
        """
        self._check_active()
        joint = self.joint_conv[0]
        image_part, text_part = joint.weight.split([features.shape[1], text.shape[1]], dim=1)
        out = F.conv2d(features, image_part) + (text @ text_part.sum(dim=(2, 3)).t())[:, :, None, None]
        logits = self.joint_conv[1:](out)
        return logits.flatten(1).mean(1)  # [B, 1, 1, 1] -> [B]; mean over d_out_chans if more than one

    def forward(self, clip_layers: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return self.predict(self.features(clip_layers), self.text_input(sentence))


def weight_init(layer: nn.Module) -> None:
    """GALIP's initialisation, safe to `.apply()` to G and D (children are visited before their parents).

    Convolutions and Linear layers get PyTorch's default (Kaiming-uniform) initialisation, which DF-GAN and
    GALIP train with; the course's N(0, 0.02) suits BatchNorm networks, and neither G nor D here has any.
    Each Affine is then reset to the identity (its parent visit comes after its Linear layers'), and the
    D_Blocks' gains gamma and beta to 0.
    """
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        layer.reset_parameters()
    elif isinstance(layer, Affine):
        layer.reset_identity()
    elif isinstance(layer, DBlock):
        with torch.no_grad():
            layer.gamma.zero_()
            if layer.beta is not None:
                layer.beta.zero_()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
