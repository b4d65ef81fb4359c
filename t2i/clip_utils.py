"""The one place that loads OpenAI CLIP, for every command (preprocessing, training, generation, evaluation).

Three things are handled here and nowhere else:

* `openai-clip` 1.0.1 from PyPI does `from pkg_resources import packaging`, which fails with setuptools >= 70
  (and setuptools >= 81 has no `pkg_resources` at all). `import_clip()` imports the package while a tiny
  stand-in `pkg_resources` module, holding only the real `packaging` library, sits in `sys.modules`; the
  stand-in is removed again at once, so nothing else ever sees it.
* `clip.load(path)` cannot read a plain state-dict file with current torch. `load_clip()` reads every file
  itself: a plain state dict (read with `weights_only=True`, which runs nothing), or OpenAI's own download, a
  TorchScript archive (a zip with a `code/` folder), read with `torch.jit.load`. TorchScript loads the code the
  archive holds, so a TorchScript file is as trusted as a program: give only files from OpenAI (only the
  weights are used). A CLIP name such as `ViT-B/32` is downloaded by openai-clip into its cache
  (`~/.cache/clip`, checked against its SHA256) and read the same way; a damaged cached file is named.
* The dtype layout: on CUDA, openai-clip's own half layout (`clip.model.convert_weights`: convolutions, linear
  layers, attention and the two projections in fp16; LayerNorms stay fp32, since CLIP's LayerNorm computes in
  fp32). A model cast whole with `.half()` fails in both encoders outside autocast ("expected scalar type
  Float but found Half"). Elsewhere, fp32. `uses_half_layout` is that rule, in one place.

`clip_identity` names a loaded CLIP and fingerprints its weights, so that a zip, a checkpoint or an evaluation
can tell which CLIP made it. `make_random_clip()` writes a random-weight CLIP with the real architecture, for
tests, benchmarks and the offline demo: nothing is downloaded, and timings stay representative.
"""
from __future__ import annotations

import hashlib
import os
import sys
import types
import warnings
import zipfile
from types import ModuleType

import torch

from t2i.errors import T2IError
from t2i.files import read_torch_file

_clip_module: ModuleType | None = None

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77
# The course's short names (generate_image.py --clip_model), beside full CLIP names and local files.
SHORT_NAMES = {"B/32": "ViT-B/32", "L/14": "ViT-L/14", "B/16": "ViT-B/16"}
# Weights that differ between any two CLIP models and are small enough to hash at every load.
FINGERPRINT_KEYS = ("text_projection", "visual.proj", "positional_embedding", "visual.class_embedding",
                    "ln_final.weight")

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


def uses_half_layout(device: torch.device) -> bool:
    """openai-clip's rule: fp16 weights (LayerNorms excepted) on CUDA, fp32 elsewhere."""
    return device.type == "cuda"


def _is_torchscript(path: str) -> bool:
    """OpenAI's downloads are TorchScript zip archives, recognisable by their `code/` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def read_clip_weights(path: str) -> dict:
    """The CLIP state dict in a local file: a plain state dict, or OpenAI's TorchScript archive."""
    remedy = "give a CLIP state dict or OpenAI's ViT-B-32.pt"
    if _is_torchscript(path):
        try:
            state = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception as err:
            raise T2IError(f"{path}: a TorchScript archive that cannot be read ({type(err).__name__}); "
                           f"{remedy}") from None
    else:
        state = read_torch_file(path, "CLIP weights", remedy)
    if not isinstance(state, dict) or "text_projection" not in state:
        raise T2IError(f"{path}: holds no CLIP weights (no 'text_projection' key); {remedy}")
    return state


def clip_cache_path(name: str) -> str:
    """Where openai-clip keeps the download of CLIP model `name`."""
    clip = import_clip()
    return os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(clip.clip._MODELS[name]))


def _download(name: str) -> str:
    """The cached file of CLIP model `name`, downloaded by openai-clip (with its SHA256 check) when missing or
    damaged (an interrupted download leaves a short file, which the check catches and downloads again)."""
    clip = import_clip()
    cached = clip_cache_path(name)
    damaged = os.path.isfile(cached)  # a good cached file is returned without a download attempt
    try:
        with warnings.catch_warnings():  # openai-clip warns about a bad checksum; the error below says it
            warnings.simplefilter("ignore")
            return clip.clip._download(clip.clip._MODELS[name], os.path.dirname(cached))
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if damaged and os.path.isfile(cached):
            raise T2IError(f"{cached}: the cached CLIP {name} is damaged (its SHA256 does not match: an "
                           f"interrupted download) and could not be downloaded again ({reason}); delete it and run "
                           f"again online, or pass a local CLIP file as --clip_model") from None
        raise T2IError(f"--clip_model {name}: not in the cache {os.path.dirname(cached)} and could not be "
                       f"downloaded ({reason}); connect to the internet, or pass a local CLIP file") from None


def load_clip(name_or_path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """CLIP in eval mode with frozen weights, in openai-clip's dtype layout for `device`.

    `name_or_path` is a CLIP model name (`ViT-B/32`, or a short name such as `B/32`), or a local file."""
    clip = import_clip()
    device = torch.device(device)
    name = SHORT_NAMES.get(name_or_path, name_or_path)
    if os.path.exists(name):
        path = name
    elif name in clip.available_models():
        path = _download(name)
    else:
        raise T2IError(f"--clip_model {name_or_path}: no such file, and not one of {clip.available_models()}")
    try:
        model = clip.model.build_model(read_clip_weights(path))
    except (KeyError, RuntimeError, ValueError) as err:
        raise T2IError(f"{path}: CLIP weights of an architecture openai-clip cannot build "
                       f"({type(err).__name__}: {err})") from None
    model = model.float().to(device)
    if uses_half_layout(device):
        clip.model.convert_weights(model)
    model.eval().requires_grad_(False)
    model.t2i_identity = clip_identity(model, name)  # read by clip_identity_of: what made an artefact
    return model


def load_clip_checked(name_or_path: str, device: torch.device | str, embedding_dim: int, expected_by: str
                      ) -> torch.nn.Module:
    """`load_clip`, refusing a CLIP whose embeddings are not `embedding_dim`-d (what `expected_by` needs)."""
    model = load_clip(name_or_path, device)
    dim = clip_embedding_dim(model)
    if dim != embedding_dim:
        raise T2IError(f"--clip_model {name_or_path} gives {dim}-d embeddings but {expected_by} needs "
                       f"{embedding_dim}-d; use the CLIP that made the data")
    return model


def clip_identity(model: torch.nn.Module, name: str) -> dict:
    """{'name', 'fingerprint', 'embedding_dim'}: a short hash of a few of the weights (rounded to fp16, so
    the same CLIP gives the same fingerprint on the CPU and on CUDA)."""
    state = model.state_dict()
    digest = hashlib.sha256()
    for key in FINGERPRINT_KEYS:
        digest.update(state[key].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    label = os.path.basename(name) if os.path.exists(name) else name
    return {"name": label, "fingerprint": digest.hexdigest()[:16], "embedding_dim": clip_embedding_dim(model)}


def clip_identity_of(model: torch.nn.Module) -> dict:
    return model.t2i_identity


def clip_embedding_dim(model: torch.nn.Module) -> int:
    return model.text_projection.shape[1]


def clip_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype CLIP's image encoder takes (fp16 in the CUDA layout)."""
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


# Every artefact records the CLIP that made it (`clip_identity`: name, weight fingerprint, embedding size): a
# preprocessed zip in its settings, a checkpoint folder in run_options.json, an evaluation report in its JSON.
# Every consumer compares what it is given with `check_same_clip`: a train zip against --clip_model and the
# checkpoints it resumes, a test zip against the checkpoint, a checkpoint against the CLIP that encodes prompts.
# A mismatch stops with one line; `--allow_clip_mismatch` accepts it on purpose.
ALLOW_FLAG = "--allow_clip_mismatch"


def describe_clip(identity: dict) -> str:
    return (f"CLIP {identity.get('name')} (fingerprint {identity.get('fingerprint')}, "
            f"{identity.get('embedding_dim')}-d)")


def clip_mismatch(made: dict | None, made_what: str, used: dict | None, used_what: str) -> str | None:
    """The one-line reason why `used` is not the CLIP that made `made_what`, or None when they agree or one of
    them is unknown (an artefact of the course's code records none)."""
    if not made or not used or not made.get("fingerprint") or not used.get("fingerprint"):
        return None
    if made["fingerprint"] == used["fingerprint"]:
        return None
    return (f"{made_what} was made with {describe_clip(made)} but {used_what} is {describe_clip(used)}: their "
            f"embeddings live in different spaces; give the same CLIP, or pass {ALLOW_FLAG} if this is on purpose")


def check_same_clip(made: dict | None, made_what: str, used: dict | None, used_what: str, allow: bool) -> None:
    """Refuse (unless `allow`) a CLIP other than the one that made an artefact: nothing else would notice."""
    reason = clip_mismatch(made, made_what, used, used_what)
    if reason is not None and not allow:
        raise T2IError(reason)


def check_clip_matches(data_clip: dict | None, clip_model: torch.nn.Module | None, what: str, allow: bool) -> None:
    """`check_same_clip` of an artefact against a loaded CLIP model (given by --clip_model)."""
    if clip_model is not None:
        used = clip_identity_of(clip_model)
        check_same_clip(data_clip, what, used, f"--clip_model {used['name']}", allow)
