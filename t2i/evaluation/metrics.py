"""Image-quality figures of a generator: FID, KID and IS through torch-fidelity, and CLIP score.

FID, KID and IS use torch-fidelity's own pieces, so the figures are the reference ones (its InceptionV3 is a
bit-exact port of the TF-Inception graph the papers used): its feature extractor `inception-v3-compat`, and
its metric functions on the extracted features. Only the batching loop is ours, and FID's cross term
tr(sqrtm(sigma_1 sigma_2)), computed from symmetric eigenvalue problems (the same value, seconds sooner).
Features are computed once per image set and returned, so a caller that scores a generator again and again
(training every K epochs) extracts the real images' features once. `tests/test_evaluate.py` checks that the
figures equal those of `torch_fidelity.calculate_metrics` on the same image folders.

Images enter as uint8 [N, 3, H, W] tensors (or any object whose slices are such tensors, so a dataset's images
need not be copied at once), the values a PNG on disk would hold, which is what torch-fidelity measures;
`plots.to_uint8` converts generator outputs in [-1, 1] exactly as `torchvision.utils.save_image` does.

`make_random_inception` writes a random-weight file with torch-fidelity's architecture, for tests and offline
benchmarks (nothing is downloaded), like `clip_utils.make_random_clip` does for CLIP.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_inceptionv3 import (URL_INCEPTION_V3, BasicConv2d, FeatureExtractorInceptionV3,
                                                          InceptionA, InceptionB, InceptionC, InceptionD, InceptionE_1,
                                                          InceptionE_2)
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from tqdm import tqdm

from t2i.data.images import clip_normalize, clip_resize
from t2i.errors import T2IError
from t2i.files import read_torch_file, torch_file_problem

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's registry name for its TF-compatible InceptionV3
FID_LAYER = "2048"  # torch-fidelity's default feature layers for FID/KID and for IS
IS_LAYER = "logits_unbiased"
IS_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
FID_FEATURES = 2048  # below this many images a set's covariance is rank-deficient and FID is biased upwards
FIDELITY_SEED = 2020  # torch-fidelity's default rng_seed: the IS shuffle and the KID subsets depend on it


def inception_layout() -> nn.Module:
    """The module tree `FeatureExtractorInceptionV3` builds (same names, torch-fidelity's own blocks), without
    its weight loading: what a weights file must match, and the shape of `make_random_inception`'s weights."""
    layout = nn.Module()
    layout.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    layout.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    layout.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    layout.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    layout.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    layout.Mixed_5b = InceptionA(192, pool_features=32)
    layout.Mixed_5c = InceptionA(256, pool_features=64)
    layout.Mixed_5d = InceptionA(288, pool_features=64)
    layout.Mixed_6a = InceptionB(288)
    layout.Mixed_6b = InceptionC(768, channels_7x7=128)
    layout.Mixed_6c = InceptionC(768, channels_7x7=160)
    layout.Mixed_6d = InceptionC(768, channels_7x7=160)
    layout.Mixed_6e = InceptionC(768, channels_7x7=192)
    layout.Mixed_7a = InceptionD(768)
    layout.Mixed_7b = InceptionE_1(1280)
    layout.Mixed_7c = InceptionE_2(2048)
    layout.fc = nn.Linear(2048, 1008)
    return layout


def make_random_inception(path: str, seed: int = 0) -> str:
    """Write a random-weight state dict for torch-fidelity's InceptionV3 to `path`; return `path`.

    Convolutions get He initialisation so that activations keep their scale through the ~40 layers (PyTorch's
    default init shrinks them towards zero, which would make every distance vanish)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layout = inception_layout()
        for module in layout.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    finally:
        torch.random.set_rng_state(generator_state)
    torch.save(layout.state_dict(), path)
    return path


def check_inception_weights(path: str) -> None:
    """Raise T2IError (one line) unless `path` is a state dict that torch-fidelity's InceptionV3 loads."""
    state = read_torch_file(path, "Inception weights", "give torch-fidelity's "
                            "weights-inception-2015-12-05-6726825d.pth")
    if not isinstance(state, dict):
        raise T2IError(f"--inception_weights {path}: holds a {type(state).__name__}, not a state dict")
    expected = inception_layout().state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise T2IError(
            f"--inception_weights {path}: not torch-fidelity's InceptionV3 state dict ({len(missing)} keys missing, "
            f"e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); give the file "
            f"weights-inception-2015-12-05-6726825d.pth from torch-fidelity's releases")
    wrong = [key for key, value in expected.items()
             if not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape]
    if wrong:
        raise T2IError(f"--inception_weights {path}: {len(wrong)} tensors have the wrong shape "
                       f"(first: {wrong[0]}); give torch-fidelity's InceptionV3 weights")


def cached_inception_path() -> str:
    """Where torch.hub keeps torch-fidelity's downloaded Inception weights ($TORCH_HOME/hub/checkpoints/...)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(URL_INCEPTION_V3))


def load_inception(weights_path: str | None, device: torch.device | str) -> FeatureExtractorInceptionV3:
    """torch-fidelity's InceptionV3 giving the FID/KID and IS features, on `device`, in eval mode.

    With no `weights_path` torch-fidelity downloads its weights (cached by torch.hub after the first time). A
    damaged cached copy (an interrupted first download leaves an empty or truncated file) is named, with the
    fix: delete it, and it is downloaded again."""
    if weights_path is not None:
        check_inception_weights(weights_path)
    try:
        extractor = FeatureExtractorInceptionV3(INCEPTION_NAME, [FID_LAYER, IS_LAYER],
                                                feature_extractor_weights_path=weights_path)
    except Exception as err:  # torch.hub and torch.load raise many types; each case is named below
        cached = cached_inception_path()
        problem = torch_file_problem(cached) if weights_path is None and os.path.isfile(cached) else None
        if problem is not None:
            raise T2IError(f"{cached}: torch.hub's cached copy of the Inception weights is {problem} (an interrupted "
                           f"download); delete the file and run again: it is downloaded again (or pass a local "
                           f"copy with --inception_weights)") from None
        if isinstance(err, OSError):  # the download failed: offline, or no access to GitHub
            raise T2IError(f"could not download the Inception weights ({type(err).__name__}: {err}); connect to "
                           f"the internet, or pass a local copy with --inception_weights") from None
        raise
    return extractor.to(device).eval()


@torch.no_grad()
def inception_features(extractor: FeatureExtractorInceptionV3, images: Sequence[torch.Tensor], batch_size: int = 64,
                       progress: bool = True, desc: str = "inception") -> dict[str, torch.Tensor]:
    """uint8 [N, 3, H, W] -> {'2048': [N, 2048], 'logits_unbiased': [N, 1008]} float32 on the CPU."""
    device = next(extractor.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {FID_LAYER: [], IS_LAYER: []}
    with tqdm(total=len(images), unit="img", desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
                raise ValueError(f"inception_features: expected uint8 [N, 3, H, W], got {batch.dtype} "
                                 f"{tuple(batch.shape)}")
            for name, features in zip(extractor.features_list, extractor(batch)):
                chunks[name].append(features.cpu())
            bar.update(len(batch))
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def trace_sqrt_product(features_1: torch.Tensor, sigma_1: np.ndarray, sigma_2: np.ndarray) -> float:
    """tr(sqrtm(sigma_1 @ sigma_2)), FID's cross term, for the covariance sigma_1 of `features_1` [N, D].

    torch-fidelity takes the general (non-symmetric) eigenvalues of the D x D product: about a minute at D 2048
    on two CPU cores, at every evaluation. For any factor sigma_1 = B^T B, sigma_1 sigma_2 has the eigenvalues
    of the symmetric B sigma_2 B^T (and zeros), which a symmetric solver finds in seconds: B is the centred
    features / sqrt(N - 1) when N <= D (an N x N problem), else sigma_1's Cholesky factor. A sigma_1 that is
    not positive definite (repeated images) falls back to torch-fidelity's computation."""
    num_images, dim = features_1.shape
    if num_images <= dim:
        features = features_1.double().numpy()
        factor = (features - features.mean(axis=0)) / np.sqrt(num_images - 1)
    else:
        try:
            factor = np.linalg.cholesky(sigma_1).T
        except np.linalg.LinAlgError:
            return float(np.sum(np.sqrt(np.linalg.eigvals(sigma_1 @ sigma_2).astype("complex128")).real))
    eigenvalues = np.linalg.eigvalsh(factor @ sigma_2 @ factor.T)
    # Rounding makes the zero eigenvalues slightly negative; torch-fidelity's complex root gives them 0 too.
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))


def frechet_distance(generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> float:
    """FID between two feature sets: torch-fidelity's statistics and formula, its cross term from
    `trace_sqrt_product`."""
    num_generated, num_real = len(generated[FID_LAYER]), len(real[FID_LAYER])
    if min(num_generated, num_real) < 2:
        raise T2IError(f"FID needs at least 2 images a set, got {num_generated} generated and {num_real} "
                              f"real; raise --num_samples")
    # The smaller set's factor gives the smaller problem (tr sqrtm(AB) = tr sqrtm(BA)).
    first, second = sorted((generated[FID_LAYER], real[FID_LAYER]), key=len)
    stats_1, stats_2 = fid_features_to_statistics(first), fid_features_to_statistics(second)
    mean_difference = stats_1["mu"] - stats_2["mu"]
    return float(mean_difference @ mean_difference + np.trace(stats_1["sigma"]) + np.trace(stats_2["sigma"])
                 - 2 * trace_sqrt_product(first, stats_1["sigma"], stats_2["sigma"]))


def kernel_distance(generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> tuple[float, float, int]:
    """KID (mean, std over 100 subsets, subset size): subsets of 1000 images, or of all images when a set is
    smaller, so quick estimates still run."""
    subset_size = min(KID_SUBSET_SIZE, len(generated[FID_LAYER]), len(real[FID_LAYER]))
    kid = kid_features_to_metric(generated[FID_LAYER], real[FID_LAYER], kid_subsets=KID_SUBSETS,
                                 kid_subset_size=subset_size, rng_seed=FIDELITY_SEED, verbose=False)
    return kid[KEY_METRIC_KID_MEAN], kid[KEY_METRIC_KID_STD], subset_size


def inception_score(generated: dict[str, torch.Tensor], splits: int = IS_SPLITS) -> tuple[float, float]:
    """IS (mean, std over `splits` splits of the shuffled set), as torch-fidelity computes it."""
    count = len(generated[IS_LAYER])
    if count < splits:
        raise T2IError(f"IS with {splits} splits needs at least {splits} generated images, got {count}; "
                              f"raise --num_samples")
    isc = isc_features_to_metric(generated[IS_LAYER], splits=splits, shuffle=True, rng_seed=FIDELITY_SEED)
    return isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD]


def fidelity_metrics(generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor],
                     isc_splits: int = IS_SPLITS) -> dict:
    """FID and KID between two feature sets and IS of the first, with torch-fidelity's defaults, each with the
    sample size it was measured on, and `caveats`: where an estimate is biased or degenerate, in words.

    `kid_std` is None (not measured) when every KID subset is a whole set: the 100 subsets are then the same
    images and their spread is 0 by construction, not a measurement."""
    num_generated, num_real = len(generated[FID_LAYER]), len(real[FID_LAYER])
    is_mean, is_std = inception_score(generated, isc_splits)
    kid_mean, kid_std, kid_subset_size = kernel_distance(generated, real)
    caveats = []
    if min(num_generated, num_real) < FID_FEATURES:
        caveats.append(f"FID from {num_generated} generated and {num_real} real images (under {FID_FEATURES}, its "
                       f"feature count) is biased upwards and depends on the number of images: compare only "
                       f"figures measured on the same number")
    if kid_subset_size >= num_generated and kid_subset_size >= num_real:
        kid_std = None
        caveats.append(f"KID's spread is not measured: its {KID_SUBSETS} subsets of {kid_subset_size} images are "
                       f"the whole sets, so they cannot differ (that needs more than {KID_SUBSET_SIZE} images a set)")
    return {
        "fid": frechet_distance(generated, real),
        "fid_num_generated": num_generated,
        "fid_num_real": num_real,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_subset_size,
        "kid_subsets": KID_SUBSETS,
        "is_mean": is_mean,
        "is_std": is_std,
        "is_splits": isc_splits,
        "is_split_size": num_generated // isc_splits,
        "caveats": caveats,
    }


@torch.no_grad()
def clip_image_embeddings(clip_model: nn.Module, images: Sequence[torch.Tensor], batch_size: int = 64,
                          progress: bool = True) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> L2-normalised CLIP image embeddings [N, D], float32 on the CPU.

    CLIP's standard preprocessing (bicubic resize, centre crop to 224, CLIP normalisation), deterministic."""
    device = clip_model.visual.conv1.weight.device
    dtype = clip_model.visual.conv1.weight.dtype
    resize, normalize = clip_resize(clip_model.visual.input_resolution), clip_normalize()
    embeddings = []
    for start in tqdm(range(0, len(images), batch_size), desc="clip", unit="batch", disable=not progress, leave=False):
        batch = images[start:start + batch_size].to(device).float().div_(255)
        features = clip_model.encode_image(normalize(resize(batch).clamp_(0, 1)).to(dtype)).float()
        embeddings.append(F.normalize(features, dim=-1).cpu())
    return torch.cat(embeddings)


def clip_score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> float:
    """100 x the mean cosine between each image's embedding and its caption's (no clamping at 0)."""
    cosine = (F.normalize(image_embeddings.float(), dim=-1) * F.normalize(text_embeddings.float(), dim=-1)).sum(-1)
    return 100.0 * float(cosine.mean())
