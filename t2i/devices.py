"""The one default device choice of every command: `--device`, else CUDA when there is a GPU, else the CPU."""
from __future__ import annotations

import torch

from t2i.errors import T2IError


def resolve_device(name: str | None) -> torch.device:
    """`--device NAME` as a torch.device; None picks cuda when available. Refuses what cannot run here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise T2IError(f"--device {name}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise T2IError(f"--device {name}: this package runs on cpu or cuda only")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise T2IError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise T2IError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device
