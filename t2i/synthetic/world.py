"""Synthetic stand-in for Multimodal CelebA-HQ, in exactly the raw layout the preprocessing reads.

Writes `multimodal_celeba_hq.zip` (`image/{id}.jpg` and `celeba-caption/{id}.txt`, ten sentences a file, one
per line) and the split pickles `celeba_filenames_train.pickle` / `celeba_filenames_test.pickle`.

Each picture is a face-like drawing fully determined by four attributes: hair colour, background colour, skin
tone and eyeglasses. Every caption names all four, in varied paraphrases, so a conditional model can learn
the mapping; `read_attributes` reads them back from pixels (any size), which lets a benchmark score whether
generated images match their captions.

Written by `synthetic_data.py` (the command) and by the tests, the demo and the benchmarks.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import PIL.ImageDraw

HAIR_COLOURS = {
    "black": (25, 22, 20),
    "blond": (236, 204, 120),
    "brown": (118, 70, 36),
    "red": (196, 62, 28),
    "gray": (165, 165, 170),
}
BACKGROUND_COLOURS = {
    "white": (246, 246, 246),
    "blue": (55, 105, 205),
    "green": (60, 165, 80),
    "pink": (235, 145, 190),
    "purple": (120, 60, 160),
}
SKIN_TONES = {
    "pale": (250, 224, 204),
    "tan": (212, 160, 115),
    "dark": (115, 76, 52),
}
EYEGLASSES = (False, True)
ATTRIBUTE_TABLES = {"hair": HAIR_COLOURS, "background": BACKGROUND_COLOURS, "skin": SKIN_TONES}
GLASSES_COLOUR = (10, 10, 10)

# Layout in fractions of the side, so `render` and `read_attributes` agree at every size.
HAIR_BOX = (0.18, 0.08, 0.82, 0.80)
FACE_BOX = (0.30, 0.24, 0.70, 0.86)
EYE_Y = 0.48
EYE_XS = (0.41, 0.59)
LENS_HALF = (0.075, 0.05)
# Patches (x0, y0, x1, y1) read back by read_attributes: all far from region borders.
BACKGROUND_PATCHES = ((0.02, 0.02, 0.12, 0.12), (0.88, 0.02, 0.98, 0.12), (0.02, 0.88, 0.12, 0.98))
HAIR_PATCH = (0.44, 0.12, 0.56, 0.20)
SKIN_PATCH = (0.44, 0.30, 0.56, 0.38)
BRIDGE_PATCH = (0.485, 0.465, 0.515, 0.495)

SUBJECTS = ("The person", "This person", "The individual", "This face", "The portrait subject")
HAIR_PHRASES = ("has {} hair", "has {} colored hair", "wears {} hair", "is a person with {} hair")
SKIN_PHRASES = ("has {} skin", "has a {} complexion", "has a {} skin tone")
BACKGROUND_PHRASES = ("is in front of a {} background", "is pictured against a {} backdrop",
                      "stands before a plain {} background", "is shown on a {} background")
GLASSES_PHRASES = ("wears eyeglasses", "is wearing glasses", "has a pair of glasses on")
NO_GLASSES_PHRASES = ("wears no glasses", "is not wearing eyeglasses", "has no glasses")
# Extra clauses that make a long caption (over CLIP's 77 tokens) without changing what it describes.
FILLER_CLAUSES = ("the picture is a simple drawing", "the face is centered in the frame",
                  "the expression is calm and neutral", "the lighting is flat and even",
                  "the eyes look straight at the viewer", "the head is shown from the front")


def sample_attributes(rng: np.random.Generator) -> dict:
    return {
        "hair": str(rng.choice(list(HAIR_COLOURS))),
        "background": str(rng.choice(list(BACKGROUND_COLOURS))),
        "skin": str(rng.choice(list(SKIN_TONES))),
        "eyeglasses": bool(rng.integers(2)),
    }


def _box(fractions: tuple[float, ...], size: int) -> tuple[int, ...]:
    return tuple(int(round(f * size)) for f in fractions)


def render(attributes: dict, size: int = 256) -> PIL.Image.Image:
    """Draw the face-like picture for `attributes` as a size x size RGB image."""
    image = PIL.Image.new("RGB", (size, size), BACKGROUND_COLOURS[attributes["background"]])
    draw = PIL.ImageDraw.Draw(image)
    draw.ellipse(_box(HAIR_BOX, size), fill=HAIR_COLOURS[attributes["hair"]])
    draw.ellipse(_box(FACE_BOX, size), fill=SKIN_TONES[attributes["skin"]])
    eye_radius = max(1, round(0.018 * size))
    for eye_x in EYE_XS:
        cx, cy = eye_x * size, EYE_Y * size
        draw.ellipse((cx - eye_radius, cy - eye_radius, cx + eye_radius, cy + eye_radius), fill=(40, 30, 30))
        if attributes["eyeglasses"]:
            half_width, half_height = LENS_HALF[0] * size, LENS_HALF[1] * size
            lens = (cx - half_width, cy - half_height, cx + half_width, cy + half_height)
            draw.rectangle(lens, outline=GLASSES_COLOUR, width=max(1, round(0.012 * size)))
    if attributes["eyeglasses"]:
        bridge = _box((EYE_XS[0] + LENS_HALF[0], EYE_Y - 0.02, EYE_XS[1] - LENS_HALF[0], EYE_Y + 0.02), size)
        draw.rectangle(bridge, fill=GLASSES_COLOUR)
    mouth = _box((0.43, 0.70, 0.57, 0.73), size)
    draw.rectangle(mouth, fill=(150, 50, 60))
    return image


def _patch_mean(pixels: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = fractions
    patch = pixels[int(y0 * height):max(int(y1 * height), int(y0 * height) + 1),
                   int(x0 * width):max(int(x1 * width), int(x0 * width) + 1)]
    return patch.reshape(-1, 3).mean(axis=0)


def _nearest(colour: np.ndarray, table: dict) -> str:
    names = list(table)
    distances = [np.sum((colour - np.asarray(table[name], dtype=np.float64)) ** 2) for name in names]
    return names[int(np.argmin(distances))]


def read_attributes(image: PIL.Image.Image | np.ndarray) -> dict:
    """Read the attributes back from a picture (PIL image or [H, W, 3] uint8 array, any size)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.float64)
    background = np.mean([_patch_mean(pixels, patch) for patch in BACKGROUND_PATCHES], axis=0)
    skin = _patch_mean(pixels, SKIN_PATCH)
    bridge = _patch_mean(pixels, BRIDGE_PATCH)
    # Glasses: the bridge patch is much darker than the skin around it.
    return {
        "hair": _nearest(_patch_mean(pixels, HAIR_PATCH), HAIR_COLOURS),
        "background": _nearest(background, BACKGROUND_COLOURS),
        "skin": _nearest(skin, SKIN_TONES),
        "eyeglasses": bool(bridge.mean() < 0.5 * skin.mean()),
    }


def describe(attributes: dict, rng: np.random.Generator, long: bool = False) -> str:
    """One caption naming every attribute in a random paraphrase; `long` makes it exceed 77 CLIP tokens."""
    clauses = [
        str(rng.choice(HAIR_PHRASES)).format(attributes["hair"]),
        str(rng.choice(SKIN_PHRASES)).format(attributes["skin"]),
        str(rng.choice(BACKGROUND_PHRASES)).format(attributes["background"]),
        str(rng.choice(GLASSES_PHRASES if attributes["eyeglasses"] else NO_GLASSES_PHRASES)),
    ]
    rng.shuffle(clauses)
    sentence = f"{rng.choice(SUBJECTS)} {', '.join(clauses[:-1])} and {clauses[-1]}."
    if not long:
        return sentence
    # Several restatements and filler clauses, separated by periods and commas, so the splitter has places to cut.
    fillers = ", ".join(str(f) for f in rng.permutation(FILLER_CLAUSES))
    return " ".join([sentence, fillers.capitalize() + ".", sentence, fillers.capitalize() + "."])


def write_raw_dataset(out_dir: str, num_images: int = 30, num_train: int | None = None, num_test: int | None = None,
                      size: int = 256, seed: int = 0, long_captions: float = 0.0, image_dir: str = "image",
                      caption_dir: str = "celeba-caption", as_folder: bool = False,
                      captions_per_image: int = 10) -> dict:
    """Write the raw dataset into `out_dir`; return the paths and the ground-truth attributes by id.

    Ids are '0'..str(num_images - 1); the split pickles take disjoint random subsets (default 80 % / 20 %).
    """
    num_train = int(round(0.8 * num_images)) if num_train is None else num_train
    num_test = num_images - num_train if num_test is None else num_test
    if num_train + num_test > num_images:
        raise ValueError(f"--num_train {num_train} + --num_test {num_test} exceeds --num_images {num_images}")
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    ids = [str(i) for i in range(num_images)]
    attributes = {image_id: sample_attributes(rng) for image_id in ids}

    source = os.path.join(out_dir, "multimodal_celeba_hq" if as_folder else "multimodal_celeba_hq.zip")
    archive = None if as_folder else zipfile.ZipFile(source, "w", compression=zipfile.ZIP_STORED)

    def put(name: str, data: bytes) -> None:
        if archive is not None:
            archive.writestr(name, data)
            return
        path = os.path.join(source, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    for image_id in ids:
        jpeg = io.BytesIO()
        render(attributes[image_id], size).save(jpeg, format="JPEG", quality=95)
        put(f"{image_dir}/{image_id}.jpg", jpeg.getvalue())
        captions = [describe(attributes[image_id], rng, long=bool(rng.random() < long_captions))
                    for _ in range(captions_per_image)]
        put(f"{caption_dir}/{image_id}.txt", ("\n".join(captions) + "\n").encode())
    if archive is not None:
        archive.close()

    order = [str(i) for i in rng.permutation(num_images)]
    splits = {"train": order[:num_train], "test": order[num_train:num_train + num_test]}
    paths = {"source": source}
    for split, split_ids in splits.items():
        paths[split] = os.path.join(out_dir, f"celeba_filenames_{split}.pickle")
        with open(paths[split], "wb") as f:
            pickle.dump(split_ids, f)
    paths["attributes"] = os.path.join(out_dir, "synthetic_attributes.json")
    with open(paths["attributes"], "w") as f:
        json.dump(attributes, f)
    return {"paths": paths, "attributes": attributes, "splits": splits}
