"""Training on several processes launched by torchrun (several GPUs, or machines): the same training as one
process whose batch is all of theirs together.

    torchrun --nproc_per_node N main.py <the same flags>

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `launched()` (entered by `train`) reads them, and without them, or
with one process, changes nothing: no process group, no collective, no extra work. With N > 1 processes:

* Data: `get_dataloader` gives process r the rows r, r+N, ... of every global batch of `--batch_size * N`
  (`t2i/data/batching.py`), so an epoch still shows every image once, in the exact, resumable order.
* Gradients: this module sums them itself, with one all_reduce of one flat buffer per optimizer step, after the
  backward, rather than through DistributedDataParallel. The discriminators run through `trunk`/`heads`, several
  times per backward (real, fake, mismatched), frozen in the generator's step; DDP's hooks want one `forward` per
  backward and every parameter used the same way each time. The buffer also carries each process's loss and whether
  it is finite, so every process skips a non-finite step or none, and the loss becomes the global batch's, at no
  extra collective (`sum_gradients`, called by `precision.step_if_finite` between the backward and the step). Each
  process backpropagates its loss weighted by its share of the global batch (`weight`, `StepSettings.scaled`) and
  the gradients are summed: the gradient of the global batch's loss, also when the last batch splits unevenly.
* BatchNorm: `SyncBatchNorm` normalises with the global batch's statistics (`--sync_bn`, on by default), in
  the forward and the backward; torch.nn.SyncBatchNorm runs on CUDA only (its kernels have no CPU version), this
  one on both.
* Contrastive losses: `gather_negatives` gives every process the features and texts of the global batch, its own
  rows keeping their graph, so each text's negatives are every process's images (as CLIP trains). The course's
  loss is a sum over texts, which every process then computes whole for the global batch; its gradient reaches each
  process only through its own rows, scaled by 1 / weight, so that the weighted sum over processes is that sum's.
* Noise: z and the conditioning augmentation's eps are this process's rows of the global batch's draw from a
  generator all processes share (`global_draw`, which train_step calls through `StepSettings.draw_noise` and hands to
  the generator). With these, N processes at batch B compute what one process
  computes at batch N*B with the same noise, to float rounding. Each process draws everything else (the loader's
  caption choice, DiffAugment, LAFITE's perturbations, CLIP's crop) from its own random streams; mismatched
  captions pair within a process's rows.
* Files: process 0 alone writes and prints; every process loads the same resume state, which holds the world size,
  the shared noise generator and every process's random streams (gathered to process 0).
* Failures: a process that fails ends with one line `error: process R of N: cause`; torchrun then stops the others
  (one that loses contact first says so in one line), before any of them could write the epoch as complete.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import traceback
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from t2i.devices import resolve_device
from t2i.errors import T2IError

NOISE_SEED = 0  # the course's seed: the shared noise generator starts from it
# Process 0 may evaluate (--eval_every) while the others wait at the end of the epoch: longer than the backends'
# defaults (10 minutes for NCCL). A process that dies is noticed at once: torchrun stops the others.
TIMEOUT = timedelta(minutes=60)

_active: Processes | None = None  # the process group of this run when it has several processes


class Processes:
    """This process's place among torchrun's processes (`rank` of `world_size`), and what they do together."""

    def __init__(self, rank: int, world_size: int, local_rank: int):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.noise_generator: torch.Generator | None = None  # made with the device
        self.shares: list[int] = []  # images of each process in the current global batch
        self.weight = 1.0  # this process's share of the current global batch

    @property
    def main(self) -> bool:
        """Process 0: the one that writes files and prints."""
        return self.rank == 0

    def describe(self) -> str:
        return f"process {self.rank} of {self.world_size}"

    def device(self, name: str | None) -> torch.device:
        """--device for this process (on CUDA, GPU LOCAL_RANK of its machine), and among several the process group
        on it: NCCL between GPUs, Gloo between CPUs."""
        device = resolve_device(name)
        if self.world_size == 1:
            return device
        if device.type == "cuda":
            if device.index is not None:
                raise T2IError(f"--device {name}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                               f"pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")
            if self.local_rank >= torch.cuda.device_count():
                raise T2IError(f"LOCAL_RANK {self.local_rank}, but this machine has {torch.cuda.device_count()} "
                               f"GPU(s): start at most that many processes per machine (--nproc_per_node)")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        self.noise_generator = torch.Generator(device).manual_seed(NOISE_SEED)
        return device

    # ------------------------------------------------------------------------------------ start of the run

    def seed_own_streams(self) -> None:
        """Give each process its own random streams (the loader's caption choice, DiffAugment, ...): identical
        streams would draw the same choices for the i-th image of every process. Process 0 keeps the course's."""
        if self.rank:
            torch.manual_seed(NOISE_SEED + self.rank)
            np.random.seed(NOISE_SEED + self.rank)
            random.seed(NOISE_SEED + self.rank)

    def broadcast_models(self, models: list[nn.Module]) -> None:
        """Process 0's weights and buffers everywhere (each process initialised its own), once, as DDP does."""
        for model in models:
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    def announce(self, batch_size: int) -> None:
        print(f"torchrun: {self.world_size} processes ({dist.get_backend()}), {batch_size} images each: a global "
              f"batch of {batch_size * self.world_size}")

    # ------------------------------------------------------------------------------------------ each batch

    def start_batch(self, global_size: int) -> None:
        """The split of the next global batch of `global_size` images: process r has its rows r, r+N, ..."""
        self.shares = [len(range(rank, global_size, self.world_size)) for rank in range(self.world_size)]
        self.weight = self.shares[self.rank] / global_size

    def global_draw(self, local_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """This process's rows of a standard normal draw for the global batch, from the generator all processes
        share: the generator's z and the conditioning augmentation's eps (see the module docstring)."""
        drawn = torch.randn((sum(self.shares), *local_shape[1:]), generator=self.noise_generator, device=device)
        return drawn[self.rank::self.world_size].contiguous()

    def gather_batch(self, features: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's features and texts (in fp32), in one all_gather; this process's features keep their
        graph, and their gradient is scaled by 1 / weight (see the module docstring)."""
        width = features.shape[1]
        local = torch.cat([features.detach().float(), texts.detach().float()], dim=1)
        padded = nn.functional.pad(local, (0, 0, 0, max(self.shares) - local.shape[0]))  # all_gather: equal sizes
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        rows = [part[:count] for part, count in zip(gathered, self.shares)]
        all_features = [part[:, :width] for part in rows]
        all_features[self.rank] = _ScaleGradient.apply(features.float(), 1 / self.weight)
        return torch.cat(all_features), torch.cat([part[:, width:] for part in rows])

    def sum_gradients(self, optimizers: list[torch.optim.Optimizer], loss: torch.Tensor,
                      finite: torch.Tensor) -> torch.Tensor:
        """After each process's backward of its loss weighted by its share of the global batch (`weight`, see
        `StepSettings.scaled`): the global batch's gradients in every process (summed), `loss` set to the global
        batch's, and whether every process's loss was finite; in one all_reduce of one flat buffer."""
        # The parameters with a gradient are the same in every process: the same code builds the same graph.
        grads = [param.grad for optimizer in optimizers for group in optimizer.param_groups
                 for param in group["params"] if param.grad is not None]
        value = (loss.detach() * self.weight).float().reshape(1)
        bucket = torch.cat([*(grad.reshape(-1) for grad in grads), value, (~finite).float().reshape(1)])
        dist.all_reduce(bucket)
        torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(bucket[:-2], grads))
        loss.detach().copy_(bucket[-2])
        return bucket[-1] == 0

    def global_values(self, values: torch.Tensor) -> torch.Tensor:
        """Per-process loss values (batch means, or global sums alike in every process) -> the global batch's."""
        values = values * self.weight
        dist.all_reduce(values)
        return values

    # ---------------------------------------------------------------------------------------- files, state

    def gather_objects(self, obj: object) -> list:
        """`obj` of every process, in rank order, in every process."""
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        dist.barrier()

    def state_dict(self, rng_states: dict) -> dict:
        """What the resume state needs to continue these processes exactly: every process's random streams
        (`rng_states` is this process's) and the shared noise generator."""
        return {"rng": self.gather_objects(rng_states), "noise_generator": self.noise_generator.get_state()}

    def load_state_dict(self, state: dict) -> dict:
        """Restore the shared noise generator; return this process's saved random streams."""
        self.noise_generator.set_state(state["noise_generator"])
        return state["rng"][self.rank]


class _ScaleGradient(torch.autograd.Function):
    """The identity, whose backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


# ----------------------------------------------------------------------------------------------------------
# Synchronised BatchNorm
# ----------------------------------------------------------------------------------------------------------

class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm that, training among several processes, normalises with the statistics of the global batch
    (every process's rows) and backpropagates through them; otherwise plain BatchNorm. Same parameters, buffers
    and state-dict keys as the BatchNorm1d/2d it replaces (`convert_batchnorm`)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active is not None):
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as BatchNorm's momentum=None
                momentum = 1.0 / float(self.num_batches_tracked)
        return _GlobalBatchNorm.apply(input, self.weight, self.bias, self.running_mean, self.running_var, momentum,
                                      self.eps)


def convert_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm1d/2d inside `module` by a SyncBatchNorm holding the same parameters and buffers (the
    optimizers and the non-finite guard keep working on them)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            synced = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=None)
            synced.weight, synced.bias = child.weight, child.bias
            synced.running_mean, synced.running_var = child.running_mean, child.running_var
            synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_batchnorm(child)


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation over every process's rows. Forward: each process's count, mean and sum of squared
    deviations, gathered and combined exactly (Chan et al.'s parallel variance, no cancellation). Backward: the two
    per-channel sums the input gradient needs, summed over processes; the weight and bias gradients stay local (the
    gradient all_reduce sums them). In fp32 whatever the input's dtype."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
                eps: float) -> torch.Tensor:
        dims, shape = _channel_dims(input)
        x = input.float()
        channels = x.shape[1]
        mean = x.mean(dims)
        stats = torch.cat([mean.new_full((1,), x.numel() / channels), mean, (x - mean.view(shape)).square().sum(dims)])
        gathered = [torch.empty_like(stats) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, stats)
        counts, means, squares = torch.stack(gathered).split([1, channels, channels], dim=1)
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        sum_squares = squares.sum(0) + (counts * (means - global_mean).square()).sum(0)
        invstd = torch.rsqrt(sum_squares / total + eps)
        if running_mean is not None:
            running_mean.lerp_(global_mean.to(running_mean.dtype), momentum)
            running_var.lerp_((sum_squares / (total - 1)).to(running_var.dtype), momentum)
        scale = invstd if weight is None else invstd * weight.float()
        shift = -global_mean * scale if bias is None else bias.float() - global_mean * scale
        ctx.save_for_backward(input, weight, global_mean, invstd)
        ctx.total = total
        return (x * scale.view(shape) + shift.view(shape)).to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple:
        input, weight, mean, invstd = ctx.saved_tensors
        dims, shape = _channel_dims(input)
        grad = grad_output.float()
        centred = input.float() - mean.view(shape)
        sum_grad, sum_grad_centred = grad.sum(dims), (grad * centred).sum(dims)
        grad_input = None
        if ctx.needs_input_grad[0]:  # the same in every process, so all of them join this all_reduce
            sums = torch.cat([sum_grad, sum_grad_centred])
            dist.all_reduce(sums)
            global_grad, global_grad_centred = (sums / ctx.total).chunk(2)
            scale = invstd if weight is None else invstd * weight.float()
            centred_term = centred * (invstd.square() * global_grad_centred).view(shape)
            grad_input = ((grad - global_grad.view(shape) - centred_term) * scale.view(shape)).to(input.dtype)
        grad_weight = (sum_grad_centred * invstd).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_grad.to(weight.dtype) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _channel_dims(input: torch.Tensor) -> tuple[list[int], list[int]]:
    """The dimensions BatchNorm reduces over ([N, C, ...]: all but C), and the shape that broadcasts [C]."""
    return [0, *range(2, input.dim())], [1, -1] + [1] * (input.dim() - 2)


# ----------------------------------------------------------------------------------------------------------
# The run's processes
# ----------------------------------------------------------------------------------------------------------

def active() -> Processes | None:
    """The processes of this run when there are several (inside `launched()`), else None."""
    return _active


def world_size() -> int:
    """How many processes this run has."""
    return _active.world_size if _active is not None else 1


def shard() -> tuple[int, int]:
    """(rank, world_size) of this process for the data loader: (0, 1) alone."""
    return (_active.rank, _active.world_size) if _active is not None else (0, 1)


def gather_negatives(features: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrastive losses' hook: the global batch's features and texts among several processes (see
    `Processes.gather_batch`); the arguments themselves otherwise."""
    return (features, texts) if _active is None else _active.gather_batch(features, texts)


@contextlib.contextmanager
def launched() -> Iterator[Processes]:
    """This process's place among those torchrun started (WORLD_SIZE, RANK, LOCAL_RANK); one process alone
    without them. Among several: each process's own random streams, standard output from process 0 only, and a
    failure as one line naming the process. The process group starts with the device (`Processes.device`)."""
    global _active
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Processes(0, 1, 0)
        return
    processes = Processes(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    try:
        with contextlib.ExitStack() as stack:
            if not processes.main:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            _active = processes
            processes.seed_own_streams()
            yield processes
            if dist.is_initialized():
                processes.barrier()  # nobody leaves before process 0's last files are written
                dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001 - every failure becomes one line naming the process
        # Said at once, before this process's connections close: the others notice then, and torchrun stops them.
        # On a line of its own: process 0's progress bar may hold the terminal's current line.
        start = "" if processes.main else "\n"
        print(f"{start}error: {processes.describe()}: {cause(err)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        _active = None


def cause(err: Exception) -> str:
    """One line for a failure: the message of ours; for a bug, its type and first line (the traceback printed)."""
    if isinstance(err, T2IError):
        return str(err)
    if lost_contact(err):
        return "stopped: another process stopped first (its own line says why)"
    traceback.print_exc(file=sys.stderr)
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def lost_contact(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another process is gone (NCCL: DistError; Gloo: a
    RuntimeError about the closed connection) or did not answer in time."""
    message = str(err)
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and (
        "Connection closed by peer" in message or "Connection reset by peer" in message or "Timed out" in message))
