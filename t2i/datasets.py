"""Checks of a preprocessed zip against the run that is about to use it, and of the CLIP behind every artefact.

Every artefact records the CLIP that made it (`clip_utils.clip_identity`: name, weight fingerprint, embedding
size): a preprocessed zip in its settings, a checkpoint folder in run_options.json, an evaluation report in its
JSON. Every consumer compares what it is given with `check_same_clip`: a train zip against --clip_model and the
checkpoints it resumes, a test zip against the checkpoint, a checkpoint against the CLIP that encodes prompts.
A mismatch stops with one line; `--allow_clip_mismatch` accepts it on purpose.
"""
from __future__ import annotations

from argparse import Namespace

import torch.nn as nn

from t2i import clip_utils
from t2i.errors import T2IError

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


def check_clip_matches(data_clip: dict | None, clip_model: nn.Module | None, what: str, allow: bool) -> None:
    """`check_same_clip` of an artefact against a loaded CLIP model (given by --clip_model)."""
    if clip_model is not None:
        used = clip_utils.clip_identity_of(clip_model)
        check_same_clip(data_clip, what, used, f"--clip_model {used['name']}", allow)


def check_training_clips(args: Namespace, data_clip: dict | None, clip_model: nn.Module | None, resume) -> None:
    """Training's checks: the train zip against --clip_model (when CLIP is loaded) and against the CLIP of the
    checkpoints it resumes."""
    check_clip_matches(data_clip, clip_model, f"--train_data {args.train_data}", args.allow_clip_mismatch)
    if resume is not None and resume.record is not None:
        check_same_clip(resume.record.get("clip"), f"the checkpoint folder {args.resume_checkpoint_path}", data_clip,
                        f"the CLIP of --train_data {args.train_data}", args.allow_clip_mismatch)


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
