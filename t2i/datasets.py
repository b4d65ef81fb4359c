"""Checks of a preprocessed zip against the run that is about to use it."""
from __future__ import annotations

from argparse import Namespace

import torch.nn as nn

from t2i import clip_utils
from t2i.errors import T2IError


def check_clip_matches(data_clip: dict | None, clip_model: nn.Module | None, what: str, allow: bool) -> None:
    """Refuse (unless `allow`) a CLIP other than the one that made `what`: its image and text features would
    live in another embedding space, and nothing else would notice."""
    if data_clip is None or clip_model is None or allow:
        return
    ours = clip_utils.clip_identity_of(clip_model)
    if data_clip.get("fingerprint") != ours["fingerprint"]:
        raise T2IError(f"{what} was made with CLIP {data_clip.get('name')} (fingerprint {data_clip.get('fingerprint')}) "
                       f"but --clip_model {ours['name']} has fingerprint {ours['fingerprint']}; give the same CLIP, "
                       f"or pass --allow_clip_mismatch if this is on purpose")


def check_train_dataset(dataset, args: Namespace) -> dict | None:
    """Refuse a train zip that does not fit the run (embedding size, size); switch our dataset to uint8 batches
    (the stage images are then made on the device). Returns the identity of the CLIP that made the data, when
    the zip records it."""
    embedding_dim = getattr(dataset, "embedding_dim", None) or dataset[0][2].shape[-1]
    if embedding_dim != args.clip_embedding_dim:
        raise T2IError(f"--train_data {args.train_data} holds {embedding_dim}-d CLIP embeddings but "
                       f"--clip_embedding_dim is {args.clip_embedding_dim}; make them agree")
    if len(dataset) < 2:
        raise T2IError(f"--train_data {args.train_data}: needs at least 2 images, has {len(dataset)}")
    if hasattr(dataset, "return_uint8"):
        dataset.return_uint8 = True
    return getattr(dataset, "settings", {}).get("clip")
