"""Shared fixtures: small stand-ins that the tests build themselves (nothing is downloaded)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import clip_utils  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> str:
    """A random-weight CLIP with the real tokenizer and 224 px input, 512-d embeddings, a few MB."""
    return clip_utils.make_random_clip(str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt"), "tiny", 512)
