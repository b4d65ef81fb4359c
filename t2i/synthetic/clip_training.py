"""A small CLIP trained contrastively on the synthetic world's images and captions (`t2i.synthetic.held_out`).

A random-weight CLIP gives a text encoder but no image-text signal: similar captions do not land close, and L_ConG
(the CLIP loss on generated images) means nothing. Where the pretrained ViT-B/32 cannot be loaded (offline), the
demo and the conditional benchmark train this stand-in instead: the real `clip.model.CLIP` class, small, with the
symmetric InfoNCE loss of CLIP, so that its caption embeddings separate the attributes and L_ConG carries the kind
of signal the pretrained ViT-B/32 gives on CelebA. Tokenizer, 77-token context, 224 px input and 512-d embeddings
are the real ones: the saved state dict goes through `clip_utils.load_clip`, preprocessing and training unchanged.

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
from t2i.data.images import clip_normalize, clip_view
from t2i.generation import encode_prompt
from t2i.synthetic.held_out import (ATTRIBUTES, VALUES, all_combinations, combination_key, held_out_captions,
                                    read_raw_split)

# Two 128-wide layers in the image tower: the second layer's class token can then gather position-specific
# colour features (hair at the top, background in the corners, glasses in the middle) made by the first.
# The text tower's heads follow clip.model.build_model's rule (width // 64), so a reload rebuilds it exactly.
TRAINED_CLIP = dict(embed_dim=512, image_resolution=224, vision_layers=2, vision_width=128, vision_patch_size=32,
                    context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                    transformer_layers=1)


def clip_input(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> CLIP's input, by the transform chain of train.contrastive_loss_G."""
    return clip_normalize()(clip_view(images))


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy between two batches of normalised features (pair i matches i)."""
    logits = scale * a @ b.t()
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def contrastive_step_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's loss over the batch's image-caption similarities."""
    image_features = F.normalize(model.encode_image(clip_input(images)), dim=-1)
    text_features = F.normalize(model.encode_text(tokens), dim=-1)
    return info_nce(image_features, text_features, model.logit_scale.exp())


def paraphrase_step_loss(model: torch.nn.Module, tokens: torch.Tensor, paraphrases: torch.Tensor) -> torch.Tensor:
    """The same loss between two captions of each image: the text tower alone learns which words change the
    picture."""
    features = F.normalize(model.encode_text(torch.cat([tokens, paraphrases])), dim=-1)
    return info_nce(features[:len(tokens)], features[len(tokens):], model.logit_scale.exp())


def train_clip(images: torch.Tensor, captions: list[list[str]], groups: list[int], steps: int,
               batch_size: int = 64, lr: float = 1e-3, noise_std: float = 0.05, seed: int = 0,
               twins: dict[int, int] | None = None, text_only: bool = False
               ) -> tuple[torch.nn.Module, list[float]]:
    """Train TRAINED_CLIP on `images` (uint8 [N, 3, H, W]), each with its `captions`; return it (eval mode)
    and the loss of every step.

    `groups[i]` names image i's attribute combination: a batch takes each combination at most once, since two
    pictures of one combination would be false negatives to each other (a large real dataset rarely repeats a
    description within a batch). With `twins` (group -> the group that differs from it in one attribute only),
    a batch is made of such pairs: each image's hardest negative is its twin, so the loss cannot fall without
    that attribute. Colours are learnt in any batch; a small detail such as eyeglasses is learnt late without it.
    `text_only` trains the text tower alone, on two captions of each image (paraphrase_step_loss), and leaves
    the image tower at its random weights: for a text encoder in a few steps. Measured after 150 steps of 64
    (in twin batches): eyeglasses explain 19 % of the caption-embedding variance this way; trained with images,
    0.01 %, and 1 % with both losses, since an image tower that cannot yet see eyeglasses teaches the text
    tower to ignore the words for them (the benchmark's 1000 image-caption steps reach 15 %).
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
        pairs = sorted((group, twins[group]) for group in group_ids if twins and twins.get(group, -1) in by_group
                       and group < twins[group])
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        # A short warm-up, then cosine decay: the usual CLIP schedule, compressed into `steps`.
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
        losses = []
        model.train()
        for _ in tqdm(range(steps), desc="training the small CLIP", unit="step"):
            if pairs:
                halves = rng.choice(len(pairs), size=min(batch_size // 2, len(pairs)), replace=False)
                chosen = [group for index in halves for group in pairs[index]]
            else:
                chosen = rng.choice(group_ids, size=min(batch_size, len(group_ids)), replace=False)
            picks = [int(rng.choice(by_group[group])) for group in chosen]
            batch_tokens = torch.stack([tokens[i][rng.integers(len(tokens[i]))] for i in picks])
            if text_only:
                paraphrases = torch.stack([tokens[i][rng.integers(len(tokens[i]))] for i in picks])
                loss = paraphrase_step_loss(model, batch_tokens, paraphrases)
            else:
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
        image_features = F.normalize(model.encode_image(clip_input(images.float() / 255)), dim=-1)
    text_features = F.normalize(model.encode_text(clip_utils.tokenize(captions)), dim=-1)
    predicted = (image_features @ text_features.t()).argmax(dim=1)
    return float(np.mean([caption_groups[int(p)] == g for p, g in zip(predicted, groups)]))


@torch.no_grad()
def attribute_variance_share(clip_model: torch.nn.Module, seed: int) -> dict[str, float]:
    """Share of the variance of caption embeddings (two paraphrases of every combination) that each attribute
    explains: an attribute the text encoder hardly separates cannot steer the generator."""
    captions, combos = held_out_captions(all_combinations(), 2, seed)
    features = torch.cat([encode_prompt(clip_model, caption, torch.device("cpu")) for caption in captions]).numpy()
    features = features - features.mean(axis=0)
    total = float(np.mean(np.sum(features ** 2, axis=1)))
    shares = {}
    for name in ATTRIBUTES:
        values = np.array([combo[name] for combo in combos])
        means = [features[values == value].mean(axis=0) for value in VALUES[name]]
        shares[name] = float(np.mean([np.sum(mean ** 2) for mean in means]) / total)
    return shares


def glasses_twins() -> dict[int, int]:
    """Index (in all_combinations()) of each combination -> that of the combination differing only in eyeglasses."""
    index = {combination_key(c): i for i, c in enumerate(all_combinations())}
    return {i: index[combination_key(dict(c, eyeglasses=not c["eyeglasses"]))]
            for i, c in enumerate(all_combinations())}


def make_trained_clip(path: str, raw: dict, test_combos: list[dict], steps: int, seed: int, image_size: int = 64,
                      glasses_pairs: bool = False, **train_options) -> dict:
    """Train TRAINED_CLIP on the training split of `t2i.synthetic.held_out.write_raw`'s dataset `raw` (its images at
    `image_size` px; with `glasses_pairs`, in batches of eyeglasses twins; `train_options` go to train_clip) and
    save its state dict to `path` for `clip_utils.load_clip`. Return a summary: losses, time, the top-1 retrieval
    accuracy of the held-out combinations' test images among fresh captions of those combinations, and the
    caption-embedding variance each attribute explains."""
    started = time.time()
    images, captions, groups = read_raw_split(raw, "train", image_size)
    model, losses = train_clip(images, captions, groups, steps, seed=seed,
                               twins=glasses_twins() if glasses_pairs else None, **train_options)
    torch.save(model.state_dict(), path)
    seconds = time.time() - started
    test_images, _, test_groups = read_raw_split(raw, "test", image_size)
    index = {combination_key(c): i for i, c in enumerate(all_combinations())}
    texts, combos = held_out_captions(test_combos, 1, seed)
    model = clip_utils.load_clip(path, "cpu")  # the saved file, as preprocessing and training will read it
    tail = max(1, len(losses) // 10)
    return {"path": path, "steps": steps, "seconds": seconds, "first_loss": losses[0],
            "last_loss": float(np.mean(losses[-tail:])),
            "held_out_retrieval": retrieval_accuracy(model, test_images, test_groups, texts,
                                                     [index[combination_key(c)] for c in combos]),
            "retrieval_chance": 1 / len(test_combos),
            "attribute_variance_share": attribute_variance_share(model, seed)}
