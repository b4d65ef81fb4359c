"""Start-up hook for course-harness runs only: `t2i.harness` puts this folder first on PYTHONPATH.

The plain course files do `import clip` and `clip.load("ViT-B/32", device)`. This hook makes both work
offline in the test environment:

* openai-clip 1.0.1 does `from pkg_resources import packaging`, which setuptools >= 70 no longer allows:
  `clip` is imported once here through `t2i.clip_utils.import_clip`, the package's one workaround, so the
  course's own `import clip` finds it imported already.
* When T2I_CLIP_STANDIN names a local CLIP file, `clip.load` is replaced: any model name gives `(model,
  preprocess)` loaded from that file by `t2i.clip_utils.load_clip`, in openai-clip's own layout for the device
  (fp16 weights with fp32 LayerNorms on CUDA, fp32 on the CPU), in eval mode; and openai-clip's downloader
  (which `load_clip` calls for a model name) returns that file. Nothing is downloaded.
"""
import os

from t2i import clip_utils

clip = clip_utils.import_clip()
_STANDIN_PATH = os.environ.get("T2I_CLIP_STANDIN")

if _STANDIN_PATH:
    import torch

    def _load_standin(name, device="cuda" if torch.cuda.is_available() else "cpu", jit=False, download_root=None):
        """`clip.load` replacement: the stand-in weights whatever `name` says."""
        model = clip_utils.load_clip(_STANDIN_PATH, device)
        return model, clip.clip._transform(model.visual.input_resolution)

    clip.load = clip.clip.load = _load_standin
    clip.clip._download = lambda url, root=None: _STANDIN_PATH
