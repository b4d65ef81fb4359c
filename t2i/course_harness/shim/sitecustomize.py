"""Start-up hook for course-harness runs only: `t2i.harness` puts this folder first on PYTHONPATH.

The plain course files do `import clip` and `clip.load("ViT-B/32", device)`. This hook makes both work
offline in the test environment:

* openai-clip 1.0.1 does `from pkg_resources import packaging`, which setuptools >= 70 no longer allows.
  `clip` is imported here while a stand-in `pkg_resources` holding the real `packaging` library sits in
  `sys.modules`; the stand-in is removed right after, so nothing else sees it.
* When T2I_CLIP_STANDIN names a local CLIP state-dict file, `clip.load` is replaced: any model name gives
  `(model, preprocess)` built from that file, in openai-clip's own layout for the device (fp16 weights with
  fp32 LayerNorms on CUDA, as `clip.model.build_model` leaves them; fp32 on the CPU), in eval mode; and
  openai-clip's downloader (which the package's own loader, `t2i.clip_utils`, calls for a model name) returns
  that file. Nothing is downloaded.
"""
import os
import sys
import types

import packaging.version  # the real library that `pkg_resources.packaging` used to re-export

_stand_in = types.ModuleType("pkg_resources")
_stand_in.packaging = packaging
_previous = sys.modules.get("pkg_resources")
sys.modules["pkg_resources"] = _stand_in
try:
    import clip
finally:
    if _previous is None:
        del sys.modules["pkg_resources"]
    else:
        sys.modules["pkg_resources"] = _previous

_STANDIN_PATH = os.environ.get("T2I_CLIP_STANDIN")

if _STANDIN_PATH:
    import torch

    def _load_standin(name, device="cuda" if torch.cuda.is_available() else "cpu", jit=False, download_root=None):
        """`clip.load` replacement: the stand-in weights whatever `name` says."""
        state_dict = torch.load(_STANDIN_PATH, map_location="cpu", weights_only=True)
        model = clip.model.build_model(state_dict).to(device)  # build_model applies convert_weights (fp16)
        if torch.device(device).type == "cpu":
            model.float()
        return model.eval(), clip.clip._transform(model.visual.input_resolution)

    clip.load = clip.clip.load = _load_standin
    clip.clip._download = lambda url, root=None: _STANDIN_PATH
