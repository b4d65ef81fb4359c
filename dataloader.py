"""The course's loader factory: random order for training, dataset order otherwise."""
from argparse import Namespace

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler


def get_dataloader(args: Namespace, dataset: Dataset, is_train: bool = True) -> DataLoader:
    sampler = RandomSampler(dataset) if is_train else SequentialSampler(dataset)
    num_workers = getattr(args, "num_workers", 0)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
