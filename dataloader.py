"""The course's loader factory: `get_dataloader(args, dataset, is_train=True)`.

For training it returns a loader whose order `train` can reproduce exactly, so a run resumed mid-epoch sees
the batches the interrupted run had not seen (`t2i/data/batching.py`); the course's RandomSampler cannot. Under torchrun
each process gets its share of every batch (`t2i/training/distributed.py`). Otherwise, the dataset in order.
"""
from argparse import Namespace

from torch.utils.data import DataLoader, Dataset, SequentialSampler

from t2i.data.batching import training_loader
from t2i.devices import resolve_device
from t2i.training.distributed import shard


def get_dataloader(args: Namespace, dataset: Dataset, is_train: bool = True) -> DataLoader:
    num_workers = getattr(args, "num_workers", 0)
    # Page-locked batches copy to the GPU asynchronously (non_blocking); on a CPU run pinning is a waste.
    pin_memory = resolve_device(getattr(args, "device", None)).type == "cuda"
    if is_train:  # under torchrun, this process's share of every batch
        return training_loader(dataset, args.batch_size, num_workers, pin_memory, *shard())
    return DataLoader(dataset, batch_size=args.batch_size, sampler=SequentialSampler(dataset),
                      num_workers=num_workers, pin_memory=pin_memory)
