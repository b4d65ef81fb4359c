"""A synthetic world with held-out attribute combinations: can a model draw what no training image showed?

Face-like drawings are fully determined by four attributes named in every caption (hair colour, background
colour, skin tone, eyeglasses; `t2i.synthetic.world`), plus detail the captions never mention (mouth shape, a side
ornament), so a good generator has something to vary with the noise. A share of the 150 attribute combinations
is held out: no training image shows them, yet every attribute value and every pair of values is still taught.
The raw zip and split pickles are written in the layout of Multimodal CelebA-HQ, so they go through the real
preprocessing.

Used by the demo (`demo.py`) and the conditional benchmark (`benchmarks/conditional.py`); the scoring of
generated images is `t2i.synthetic.attribute_score`.
"""
from __future__ import annotations

import io
import itertools
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from t2i.synthetic import world as sd

ATTRIBUTES = ("hair", "background", "skin", "eyeglasses")
VALUES = {"hair": tuple(sd.HAIR_COLOURS), "background": tuple(sd.BACKGROUND_COLOURS),
          "skin": tuple(sd.SKIN_TONES), "eyeglasses": sd.EYEGLASSES}
MOUTH_COLOURS = ((150, 50, 60), (120, 30, 40), (190, 80, 90), (90, 40, 40))
ORNAMENT_COLOURS = ((250, 210, 40), (30, 30, 30), (200, 200, 200), (230, 120, 20))


def all_combinations() -> list[dict]:
    return [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*(VALUES[a] for a in ATTRIBUTES))]


def combination_key(attributes: dict) -> tuple:
    return tuple(attributes[name] for name in ATTRIBUTES)


def split_combinations(held_out: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) combinations; every attribute value and every pair of values stays in training."""
    combos = all_combinations()
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(combos))
        test = [combos[i] for i in order[:held_out]]
        train = [combos[i] for i in order[held_out:]]
        seen_pairs = {(a, c[a], b, c[b]) for c in train for a, b in itertools.combinations(ATTRIBUTES, 2)}
        if all((a, c[a], b, c[b]) in seen_pairs for c in test for a, b in itertools.combinations(ATTRIBUTES, 2)):
            return train, test


def render_varied(attributes: dict, rng: np.random.Generator, size: int = 256) -> PIL.Image.Image:
    """`synthetic.render` plus detail no caption names: a random mouth and a side ornament.

    Both stay clear of the patches `synthetic.read_attributes` looks at, so the attributes read back unchanged.
    """
    image = sd.render(attributes, size)
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle(tuple(round(f * size) for f in (0.42, 0.69, 0.58, 0.74)), fill=sd.SKIN_TONES[attributes["skin"]])
    half_width, half_height = rng.uniform(0.04, 0.10), rng.uniform(0.008, 0.03)
    centre_y = rng.uniform(0.67, 0.76)
    mouth = (0.5 - half_width, centre_y - half_height, 0.5 + half_width, centre_y + half_height)
    colour = MOUTH_COLOURS[rng.integers(len(MOUTH_COLOURS))]
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(tuple(f * size for f in mouth), fill=colour)
    radius = rng.uniform(0.03, 0.06)
    centre_x = rng.uniform(0.02, 0.13) if rng.random() < 0.5 else rng.uniform(0.87, 0.98)
    centre_y = rng.uniform(0.32, 0.68)
    box = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
    draw.ellipse(tuple(f * size for f in box), fill=ORNAMENT_COLOURS[rng.integers(len(ORNAMENT_COLOURS))])
    return image


def write_raw(out_dir: str, train_combos: list[dict], test_combos: list[dict], images_per_combo: int,
              test_images_per_combo: int, seed: int, size: int = 256) -> dict:
    """The raw dataset in Multimodal CelebA-HQ's layout (`image/{id}.jpg`, `celeba-caption/{id}.txt`, split
    pickles); the train split shows only `train_combos`, the test split only `test_combos`."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    source = os.path.join(out_dir, "multimodal_celeba_hq.zip")
    attributes, splits = {}, {"train": [], "test": []}
    plan = [("train", c) for c in train_combos for _ in range(images_per_combo)]
    plan += [("test", c) for c in test_combos for _ in range(test_images_per_combo)]
    with zipfile.ZipFile(source, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in rng.permutation(len(plan)):
            split, combo = plan[index]
            image_id = str(len(attributes))
            attributes[image_id] = combo
            splits[split].append(image_id)
            jpeg = io.BytesIO()
            render_varied(combo, rng, size).save(jpeg, format="JPEG", quality=95)
            archive.writestr(f"image/{image_id}.jpg", jpeg.getvalue())
            captions = [sd.describe(combo, rng) for _ in range(10)]
            archive.writestr(f"celeba-caption/{image_id}.txt", "\n".join(captions) + "\n")
    for split, ids in splits.items():
        with open(os.path.join(out_dir, f"celeba_filenames_{split}.pickle"), "wb") as f:
            pickle.dump(ids, f)
    return {"source": source, "attributes": attributes, "splits": splits}


def read_raw_split(raw: dict, split: str, size: int) -> tuple[torch.Tensor, list[list[str]], list[int]]:
    """One split of `write_raw`'s dataset: the images at `size` px (uint8 [N, 3, size, size], Lanczos as
    preprocessing resizes), their captions, and each image's combination as an index into all_combinations()."""
    index = {combination_key(c): i for i, c in enumerate(all_combinations())}
    images, captions, groups = [], [], []
    with zipfile.ZipFile(raw["source"]) as archive:
        for image_id in raw["splits"][split]:
            image = PIL.Image.open(io.BytesIO(archive.read(f"image/{image_id}.jpg"))).convert("RGB")
            images.append(np.asarray(image.resize((size, size), PIL.Image.LANCZOS)))
            text = archive.read(f"celeba-caption/{image_id}.txt").decode()
            captions.append([line for line in text.splitlines() if line.strip()])
            groups.append(index[combination_key(raw["attributes"][image_id])])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions, groups


def held_out_captions(combos: list[dict], per_combo: int, seed: int) -> tuple[list[str], list[dict]]:
    """Fresh paraphrases (templates seen in training) of each combination."""
    rng = np.random.default_rng(seed + 1)
    pairs = [(sd.describe(combo, rng), combo) for combo in combos for _ in range(per_combo)]
    return [caption for caption, _ in pairs], [combo for _, combo in pairs]
