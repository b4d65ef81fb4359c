"""Our re-creation of the graders' plain `fix_seed.py`, written from ../shared/CONTRACT.md.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time. The parameter is literally named `int`, as in the course.
"""
import random

import numpy as np
import torch


def seed_fix(int):  # noqa: A002  (the course's parameter name)
    torch.manual_seed(int)
    torch.cuda.manual_seed(int)
    torch.cuda.manual_seed_all(int)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    np.random.seed(int)
    random.seed(int)
