"""A small CLIP trained contrastively on the conditional benchmark's images and captions.

A random-weight CLIP gives the benchmark a text encoder but no image-text signal, so L_ConG (the CLIP loss on
generated images) cannot be measured with it. This module trains the real `clip.model.CLIP` class, small, with
the symmetric InfoNCE loss of CLIP, so that L_ConG carries the kind of signal the pretrained ViT-B/32 gives on
CelebA. Tokenizer, 77-token context, 224 px input and 512-d embeddings are the real ones: the saved state dict
goes through `clip_utils.load_clip`, preprocessing and training unchanged.

Images are shown to it through the same transform that `train.contrastive_loss_G` applies to generated 64 px
images (bicubic resize to 224, a random crop of at least 0.99 of the side, CLIP normalisation), so it is trained
on the input distribution it will score.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from t2i import clip_utils
from t2i.image_ops import clip_view
from train_utils import clip_preprocess, normalize

# Two 128-wide layers in the image tower: the second layer's class token can then gather position-specific
# colour features (hair at the top, background in the corners, glasses in the middle) made by the first.
# The text tower's heads follow clip.model.build_model's rule (width // 64), so a reload rebuilds it exactly.
TRAINED_CLIP = dict(embed_dim=512, image_resolution=224, vision_layers=2, vision_width=128, vision_patch_size=32,
                    context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                    transformer_layers=1)


def clip_input(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> CLIP's input, by the transform chain of train.contrastive_loss_G."""
    return clip_preprocess()(clip_view(images))


def contrastive_step_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the batch's image-caption similarities (pair i matches i)."""
    image_features = normalize(model.encode_image(clip_input(images)))
    text_features = normalize(model.encode_text(tokens))
    logits = model.logit_scale.exp() * image_features @ text_features.t()
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def train_clip(images: torch.Tensor, captions: list[list[str]], groups: list[int], steps: int,
               batch_size: int = 64, lr: float = 1e-3, noise_std: float = 0.05, seed: int = 0
               ) -> tuple[torch.nn.Module, list[float]]:
    """Train TRAINED_CLIP on `images` (uint8 [N, 3, H, W]), each with its `captions`; return it (eval mode)
    and the loss of every step.

    `groups[i]` names image i's attribute combination: a batch takes each combination at most once, since two
    pictures of one combination would be false negatives to each other (a large real dataset rarely repeats a
    description within a batch).
    """
    clip = clip_utils.import_clip()
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.model.CLIP(**TRAINED_CLIP)
        model.initialize_parameters()
        tokens = [clip_utils.tokenize(texts) for texts in captions]
        by_group: dict[int, list[int]] = {}
        for index, group in enumerate(groups):
            by_group.setdefault(group, []).append(index)
        group_ids = sorted(by_group)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        # A short warm-up, then cosine decay: the usual CLIP schedule, compressed into `steps`.
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
        losses = []
        model.train()
        for _ in tqdm(range(steps), desc="training the benchmark CLIP", unit="step"):
            chosen = rng.choice(group_ids, size=min(batch_size, len(group_ids)), replace=False)
            picks = [int(rng.choice(by_group[group])) for group in chosen]
            batch_tokens = torch.stack([tokens[i][rng.integers(len(tokens[i]))] for i in picks])
            batch_images = images[picks].float() / 255
            # Pixel noise, so the features do not hinge on the exact flat colours a generator only approximates.
            batch_images = (batch_images + noise_std * torch.randn_like(batch_images)).clamp(0, 1)
            loss = contrastive_step_loss(model, batch_images, batch_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))  # CLIP's cap on the learned temperature
            losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def retrieval_accuracy(model: torch.nn.Module, images: torch.Tensor, groups: list[int], captions: list[str],
                       caption_groups: list[int]) -> float:
    """Share of images (uint8 [N, 3, H, W]) whose most similar caption, among `captions`, has their group."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the random crop of clip_input
        image_features = normalize(model.encode_image(clip_input(images.float() / 255)))
    text_features = normalize(model.encode_text(clip_utils.tokenize(captions)))
    predicted = (image_features @ text_features.t()).argmax(dim=1)
    return float(np.mean([caption_groups[int(p)] == g for p, g in zip(predicted, groups)]))


def train_and_save(path: str, images: torch.Tensor, captions: list[list[str]], groups: list[int], steps: int,
                   seed: int = 0) -> dict:
    """Train (see train_clip), save the state dict to `path` for `clip_utils.load_clip`; return a summary."""
    started = time.time()
    model, losses = train_clip(images, captions, groups, steps, seed=seed)
    torch.save(model.state_dict(), path)
    tail = max(1, len(losses) // 10)
    return {"path": path, "steps": steps, "seconds": time.time() - started,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-tail:]))}
