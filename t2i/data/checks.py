"""Checks of a preprocessed train zip against the run that is about to use it: its size, its embeddings, its CLIP."""
from __future__ import annotations

from argparse import Namespace

import torch.nn as nn

from t2i import clip_utils
from t2i.errors import T2IError


def check_training_clips(args: Namespace, data_clip: dict | None, clip_model: nn.Module | None, resume) -> None:
    """Training's checks: the train zip against --clip_model (when CLIP is loaded) and against the CLIP of the
    checkpoints it resumes."""
    clip_utils.check_clip_matches(data_clip, clip_model, f"--train_data {args.train_data}", args.allow_clip_mismatch)
    if resume is not None and resume.record is not None:
        clip_utils.check_same_clip(resume.record.get("clip"), f"the checkpoint folder {args.resume_checkpoint_path}",
                                   data_clip, f"the CLIP of --train_data {args.train_data}", args.allow_clip_mismatch)


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
