"""Training batches: an order a resumed run can reproduce exactly, and the move to the device.

`EpochBatchSampler` draws each epoch's order from (seed, epoch) alone, so a run resumed mid-epoch sees exactly
the batches the interrupted run had not seen yet. `dataloader.get_dataloader` builds the training loader on it;
`train` positions it at each epoch (and at the first unseen batch of a resumed one) with `position_loader`.
With several processes each one takes a disjoint share of every batch position (`rank`, `world_size`).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from t2i.data.images import stage_images_from_uint8
from t2i.errors import T2IError

SEED = 0  # the course fixes the seed at 0: the data order draws from it


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a random order drawn from (seed, epoch), starting at batch `start_step`.

    The last batch is kept when it holds at least two images (BatchNorm needs two). With `world_size` > 1 the
    epoch's order is cut into global batches of `batch_size * world_size` and process `rank` takes its slice
    of each, so together the processes see every image of the epoch once.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int = SEED, rank: int = 0, world_size: int = 1):
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

    def batches(self) -> list[list[int]]:
        """Every batch of this process in the current epoch, from batch 0."""
        order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(
            self.seed * 100_003 + self.epoch)).tolist()
        step = self.batch_size * self.world_size
        batches = []
        for start in range(0, self.dataset_size, step):
            global_batch = order[start:start + step]
            if len(global_batch) >= 2 * self.world_size:  # every process gets at least two images
                batches.append(global_batch[self.rank::self.world_size])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.start_step:])

    def __len__(self) -> int:
        return len(self.batches()) - self.start_step

    def steps_per_epoch(self) -> int:
        return len(self.batches())

    def global_batch_size(self, step: int) -> int:
        """Images in batch `step` of all the processes together: full batches, then what is left."""
        size = self.batch_size * self.world_size
        return min(size, self.dataset_size - step * size)


def training_loader(dataset, batch_size: int, num_workers: int, pin_memory: bool, rank: int = 0,
                    world_size: int = 1) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), batch_size, SEED, rank, world_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(SEED + rank),  # worker seeds: each process's workers their own
    )


def our_sampler(loader) -> EpochBatchSampler | None:
    """The EpochBatchSampler behind `loader`; None for another loader (the course's plain RandomSampler one, or
    any iterable of batches)."""
    sampler = getattr(loader, "batch_sampler", None)
    return sampler if isinstance(sampler, EpochBatchSampler) else None


def position_loader(loader: DataLoader, epoch: int, start_step: int = 0) -> None:
    """Position our loader at `epoch`, batch `start_step`. Another loader (the course's RandomSampler) draws its
    own order and cannot skip batches: fine at an epoch's start, refused in its middle."""
    sampler = our_sampler(loader)
    if sampler is not None:
        sampler.set_position(epoch, start_step)
    elif start_step:
        raise T2IError("a mid-epoch snapshot needs this package's dataloader.py (the course's RandomSampler cannot "
                       "skip the batches already seen); resume from a complete epoch instead")


def first_step(loader) -> int:
    sampler = our_sampler(loader)
    return sampler.start_step if sampler is not None else 0


def steps_per_epoch(loader) -> int:
    sampler = our_sampler(loader)
    return sampler.steps_per_epoch() if sampler is not None else len(loader)


def global_batch_size(loader: DataLoader, step: int) -> int:
    """Images in batch `step` of all the processes together (our loader only: several processes need it)."""
    return our_sampler(loader).global_batch_size(step)


def batch_to_device(batch, num_stage: int, device: torch.device, channels_last: bool = False
                    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(stage images, image embedding, text embedding) on the device.

    Our ZipDataset gives uint8 256 px images: they cross to the device as uint8 (a quarter of the bytes) and
    become the stage images there. The course's loader gives a list of float stage images."""
    images, img_feature, txt_feature = batch
    if isinstance(images, torch.Tensor):
        images = stage_images_from_uint8(images.to(device, non_blocking=True), num_stage)
    else:
        images = [image.to(device, non_blocking=True).float() for image in images]
    if channels_last:
        images = [image.contiguous(memory_format=torch.channels_last) for image in images]
    return (images, img_feature.to(device, non_blocking=True).float(),
            txt_feature.to(device, non_blocking=True).float())
