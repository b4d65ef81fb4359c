"""The one place that loads OpenAI CLIP, for every entry point (training, preprocessing, generation, evaluation).

Two problems of `openai-clip` 1.0.1 from PyPI are handled here and nowhere else:

* `clip/clip.py` does `from pkg_resources import packaging`, which fails with setuptools >= 70 (and
  setuptools >= 81 has no `pkg_resources` at all). `import_clip()` imports the package while a tiny stand-in
  `pkg_resources` module, holding only the real `packaging` library, sits in `sys.modules`; the stand-in is
  removed again at once, so nothing else ever sees it.
* `clip.load(path)` cannot read a plain state-dict file with current torch. `load_clip()` reads local files
  itself (a plain state dict, or OpenAI's TorchScript archive) and builds the model with
  `clip.model.build_model`; only CLIP names such as `ViT-B/32` go through `clip.load` (which downloads).

`make_random_clip()` writes a random-weight CLIP state dict with the real architecture, for tests, benchmarks
and the offline demo: nothing is downloaded, and timings stay representative.
"""
from __future__ import annotations

import os
import sys
import types
from types import ModuleType

import torch

_clip_module: ModuleType | None = None

# CLIP's input normalisation (also in train_utils.clip_preprocess).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77

# Architectures for make_random_clip: the keyword arguments of clip.model.CLIP.
CLIP_PRESETS = {
    # The real ViT-B/32 layout (about 151 M parameters).
    "vit-b-32": dict(image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    # A small stand-in for unit tests: same tokenizer, same input size, far fewer weights.
    "tiny": dict(image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=1),
}


def import_clip() -> ModuleType:
    """Import the `clip` package (openai-clip), working around its `pkg_resources` import."""
    global _clip_module
    if _clip_module is not None:
        return _clip_module
    import packaging.version  # the real library that `pkg_resources.packaging` used to re-export

    shim = types.ModuleType("pkg_resources")
    shim.packaging = packaging
    previous = sys.modules.get("pkg_resources")
    sys.modules["pkg_resources"] = shim
    try:
        import clip
    finally:
        if previous is None:
            del sys.modules["pkg_resources"]
        else:
            sys.modules["pkg_resources"] = previous
    _clip_module = clip
    return clip


def _read_state_dict(path: str) -> dict:
    """A local CLIP file: a plain state dict, or OpenAI's TorchScript archive (the downloaded `.pt`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as plain_error:
        try:
            state = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception:
            raise ValueError(f"--clip_model {path}: not a CLIP state dict or TorchScript file ({plain_error})") from None
    if not isinstance(state, dict) or "text_projection" not in state:
        raise ValueError(f"--clip_model {path}: the file holds no CLIP weights (no 'text_projection' key)")
    return state


def load_clip(name_or_path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """CLIP in eval mode with frozen weights: fp16 on CUDA, fp32 elsewhere.

    `name_or_path` is a CLIP model name (`ViT-B/32`, downloaded by openai-clip) or a local file.
    """
    clip = import_clip()
    device = torch.device(device)
    if os.path.isfile(name_or_path):
        model = clip.model.build_model(_read_state_dict(name_or_path))
    elif name_or_path in clip.available_models():
        model, _ = clip.load(name_or_path, device="cpu", jit=False)
    else:
        raise ValueError(f"--clip_model {name_or_path!r}: no such file, and not one of {clip.available_models()}")
    model = model.to(device)
    model = model.half() if device.type == "cuda" else model.float()
    model.eval().requires_grad_(False)
    return model


def clip_embedding_dim(model: torch.nn.Module) -> int:
    return model.text_projection.shape[1]


def clip_dtype(model: torch.nn.Module) -> torch.dtype:
    return model.visual.conv1.weight.dtype


def tokenize(texts: list[str] | str, truncate: bool = False) -> torch.Tensor:
    """`clip.tokenize`, raising ValueError (not RuntimeError) for a text over 77 tokens."""
    clip = import_clip()
    try:
        return clip.tokenize(texts, context_length=CONTEXT_LENGTH, truncate=truncate)
    except RuntimeError as err:
        raise ValueError(str(err)) from None


def make_random_clip(path: str, preset: str = "tiny", embed_dim: int = 512, seed: int = 0) -> str:
    """Write a random-weight CLIP state dict (real architecture of `preset`) to `path`; return `path`."""
    clip = import_clip()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = clip.model.CLIP(embed_dim=embed_dim, **CLIP_PRESETS[preset])
        model.initialize_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    torch.save(model.state_dict(), path)
    return path
