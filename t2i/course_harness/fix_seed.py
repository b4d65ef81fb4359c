"""Our re-creation of the course's plain `fix_seed.py`, written from the contract.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time.
"""
import random

import numpy as np
import torch


def seed_fix(n: int) -> None:
    torch.manual_seed(n)
    torch.cuda.manual_seed(n)
    torch.cuda.manual_seed_all(n)
    np.random.seed(n)
    random.seed(n)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
