"""Our re-creation of the graders' plain `dataloader.py`, written from ../shared/CONTRACT.md.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time. Everything but the sampler and the batch size is DataLoader's
default: no workers, no pinned memory, drop_last False (an epoch can end on a batch of one image), the default
collate, and a RandomSampler drawing from the global torch RNG.
"""
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler


def get_dataloader(args, dataset, is_train=True):
    sampler = RandomSampler(dataset) if is_train else SequentialSampler(dataset)
    return DataLoader(dataset=dataset, sampler=sampler, batch_size=args.batch_size)
