"""Does a generated picture show what its caption asks for? Scoring by the pixel reader of the synthetic world.

`synthetic.read_attributes` reads hair, background, skin and eyeglasses back from the pixels of any size; the
share of attribute values drawn as asked, on captions of held-out combinations (`t2i.synthetic.held_out`), is the figure
the demo prints and the conditional benchmark reports. Diversity (mean pairwise RMS pixel distance between the
samples of one caption) tells a generator that follows the text apart from one that draws a single picture.
"""
from __future__ import annotations

import itertools

import numpy as np
import PIL.Image
import torch

from t2i import plots
from t2i.generation import generate
from t2i.synthetic import world as sd
from t2i.synthetic.held_out import ATTRIBUTES, VALUES, render_varied

CHANCE = {name: 1 / len(values) for name, values in VALUES.items()}
CHANCE["overall"] = float(np.mean(list(CHANCE.values())))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8, the pixels the saved PNGs hold."""
    return plots.to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()


def score_images(images: np.ndarray, targets: list[dict]) -> dict[str, float]:
    """Share of images whose attribute read from pixels equals the target, per attribute and overall."""
    read = [sd.read_attributes(image) for image in images]
    scores = {name: float(np.mean([r[name] == t[name] for r, t in zip(read, targets)])) for name in ATTRIBUTES}
    scores["overall"] = float(np.mean([scores[name] for name in ATTRIBUTES]))
    scores["all_four"] = float(np.mean([all(r[n] == t[n] for n in ATTRIBUTES) for r, t in zip(read, targets)]))
    return scores


def diversity(groups: list[np.ndarray]) -> float:
    """Mean pairwise RMS pixel distance (0..255 scale) between images of one group, averaged over groups."""
    distances = []
    for group in groups:
        flat = group.reshape(len(group), -1).astype(np.float64)
        for i, j in itertools.combinations(range(len(flat)), 2):
            distances.append(np.sqrt(np.mean((flat[i] - flat[j]) ** 2)))
    return float(np.mean(distances))


def real_diversity(combos: list[dict], per_combo: int, seed: int, size: int) -> float:
    """The diversity of real `size` px images of one combination: the figure a faithful generator approaches."""
    rng = np.random.default_rng(seed + 2)
    groups = [np.stack([np.asarray(render_varied(combo, rng).resize((size, size), PIL.Image.LANCZOS))
                        for _ in range(per_combo)]) for combo in combos]
    return diversity(groups)


@torch.no_grad()
def evaluate_generator(generator: torch.nn.Module, txt_features: torch.Tensor, targets: list[dict], noise_dim: int,
                       samples: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Generate `samples` images per text feature as `generate_image.py` does; score every stage's images and
    measure their diversity. One figures dict per stage (64 px first)."""
    torch.manual_seed(seed)
    per_feature = [generate(generator, feature[None].to(device), noise_dim, samples, device)
                   for feature in txt_features]
    repeated = [target for target in targets for _ in range(samples)]
    figures = []
    for stage in range(len(per_feature[0])):
        groups = [to_uint8(images[stage]) for images in per_feature]
        stage_figures = score_images(np.concatenate(groups), repeated)
        stage_figures["diversity"] = diversity(groups)
        figures.append(stage_figures)
    return figures
