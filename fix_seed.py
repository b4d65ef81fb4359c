"""Seeding for reproducible runs (the course always uses seed 0)."""
import random

import numpy as np
import torch


def seed_fix(n: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and random; make cuDNN deterministic."""
    torch.manual_seed(n)
    torch.cuda.manual_seed_all(n)
    np.random.seed(n)
    random.seed(n)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
