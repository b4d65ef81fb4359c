"""Training on several processes (torchrun): seconds per iteration and images per second for 1, 2, ... processes.

    python -m benchmarks.ddp_scaling                        # 1 and 2 processes, the course's model, cuda if any
    python -m benchmarks.ddp_scaling --device cpu --num_stage 2 --g_in_chans 256 --d_in_chans 32 --clip tiny
    python -m benchmarks.ddp_scaling --processes 1,2,4,8     # a machine with 8 GPUs: one process per GPU

Each count of processes runs as its own torchrun job (`python -m torch.distributed.run --standalone
--nproc_per_node N`), exactly as `torchrun main.py` trains: `train.train_step` over this package's sharded loader,
`--batch_size` images per process (the global batch grows with N), synchronised BatchNorm, gathered contrastive
negatives, one gradient all_reduce per optimizer step. The data are synthetic batches in memory, so the figures are
the training step's. Every process times its iterations after `--warmup` untimed ones; the slowest process's median
counts. On a CPU each process computes with one thread (`--threads`), as each would have one GPU: N processes use N
cores. Efficiency is images/s against N times one process's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_DIM = 512


def parse_args(argv: list[str] | None = None) -> Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", default="1,2", help="comma-separated process counts")
    p.add_argument("--batch_size", type=int, default=8, help="images per process")
    p.add_argument("--num_stage", type=int, default=3)
    p.add_argument("--g_in_chans", type=int, default=1024, help="Ng")
    p.add_argument("--d_in_chans", type=int, default=64, help="Nd")
    p.add_argument("--clip", default="vit-b-32", help="random CLIP preset for L_ConG (vit-b-32, tiny)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=1, help="threads per process on a CPU")
    p.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="synchronised BatchNorm among the processes (main.py's default)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--clip_path", help=argparse.SUPPRESS)  # set by the parent for the torchrun jobs
    p.add_argument("--worker_out", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.device is None:
        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    return opts


# ----------------------------------------------------------------------------------------------------------
# One process of a torchrun job
# ----------------------------------------------------------------------------------------------------------

def synthetic_dataset(opts: Namespace, size: int) -> list:
    """(stage images, image embedding, text embedding) items, as the course's loader gives them."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(size):
        images = [torch.rand(3, 64 * 2 ** s, 64 * 2 ** s, generator=generator) * 2 - 1 for s in range(opts.num_stage)]
        embedding = torch.nn.functional.normalize(torch.randn(CLIP_DIM, generator=generator), dim=0)
        items.append((images, embedding, embedding))
    return items


def worker(opts: Namespace) -> None:
    import train
    from t2i import clip_utils
    from t2i.data import batching
    from t2i.training import distributed, options

    with distributed.launched() as processes:
        world_size = processes.world_size
        device = processes.device(opts.device)
        threads = opts.threads
        if device.type == "cpu":
            torch.set_num_threads(threads)
        args = options.complete(options.parse([
            "--batch_size", str(opts.batch_size), "--num_stage", str(opts.num_stage), "--g_in_chans",
            str(opts.g_in_chans), "--d_in_chans", str(opts.d_in_chans), "--use_uncond_loss",
            "--use_contrastive_loss", "--device", str(device), "--sync_bn" if opts.sync_bn else "--no-sync_bn"],
            "benchmark"))
        torch.manual_seed(0)
        G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(device)
        run = train.run_helpers(args, device, G, D_lst, optim_g, optim_d_lst)
        clip_model = clip_utils.load_clip(opts.clip_path, device)
        steps = opts.warmup + opts.iters
        loader = batching.training_loader(synthetic_dataset(opts, steps * opts.batch_size * world_size),
                                          opts.batch_size, 0, device.type == "cuda", *distributed.shard())
        stamps: list[float] = []
        after_step = run.state.after_step

        def timed_after_step(step: int, steps_in_epoch: int) -> None:  # the end of every iteration
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())
            after_step(step, steps_in_epoch)

        run.state.after_step = timed_after_step
        started = time.perf_counter()
        train.train_step(loader, args.noise_dim, device, G, D_lst, optim_g, optim_d_lst,
                         torch.nn.BCEWithLogitsLoss(), args.num_stage, True, True, 10 ** 9, clip_model, args.gamma,
                         args.lam, **run._asdict())
        times = [b - a for a, b in zip([started, *stamps], stamps)][opts.warmup:]
        figures = {"rank": processes.rank, "median": statistics.median(times), "times": times, "threads": threads,
                   "device": str(device)}
        every = processes.gather_objects(figures) if world_size > 1 else [figures]
        if processes.main:
            with open(opts.worker_out, "w") as f:
                json.dump({"processes": world_size, "backend": torch.distributed.get_backend() if world_size > 1
                           else "none", "ranks": every}, f)


# ----------------------------------------------------------------------------------------------------------
# The parent: one torchrun job per count, then the table
# ----------------------------------------------------------------------------------------------------------

def job_argv(opts: Namespace, count: int, clip_path: str, out_path: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count),
            "-m", "benchmarks.ddp_scaling", "--worker_out", out_path, "--clip_path", clip_path,
            "--batch_size", str(opts.batch_size), "--num_stage", str(opts.num_stage),
            "--g_in_chans", str(opts.g_in_chans), "--d_in_chans", str(opts.d_in_chans), "--iters", str(opts.iters),
            "--warmup", str(opts.warmup), "--device", opts.device, "--threads", str(opts.threads),
            "--sync_bn" if opts.sync_bn else "--no-sync_bn"]


def report(opts: Namespace, results: list[dict]) -> None:
    print(f"\nconfig: {opts.batch_size} images per process, {opts.num_stage} stages, Ng {opts.g_in_chans}, "
          f"Nd {opts.d_in_chans}, CLIP {opts.clip} (random weights), both optional losses, sync BN "
          f"{'on' if opts.sync_bn else 'off'}, device {opts.device}, "
          f"fp32 on a CPU / fp16 AMP on CUDA, torch {torch.__version__}, {opts.iters} timed iterations after "
          f"{opts.warmup}")
    print(f"{'processes':>9} {'backend':>18} {'threads/proc':>12} {'global batch':>12} {'s/it':>7} {'images/s':>9} "
          f"{'efficiency':>10}")
    base = None
    for result in results:
        count = result["processes"]
        seconds = max(rank["median"] for rank in result["ranks"])
        images = opts.batch_size * count / seconds
        base = base or images / count
        print(f"{count:>9} {result['backend']:>18} {result['ranks'][0]['threads']:>12} {opts.batch_size * count:>12} "
              f"{seconds:>7.2f} {images:>9.2f} {images / (count * base):>10.2f}")
        result.update(seconds_per_iteration=seconds, images_per_second=images)
    for result in results:
        print(f"  {result['processes']} process(es): timed s/it per process "
              f"{[[round(t, 2) for t in rank['times']] for rank in result['ranks']]}")


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if opts.worker_out:  # one process of a torchrun job
        worker(opts)
        return
    counts = [int(count) for count in opts.processes.split(",")]
    if opts.device.startswith("cuda") and max(counts) > torch.cuda.device_count():
        sys.exit(f"error: --processes {opts.processes}: this machine has {torch.cuda.device_count()} GPU(s); "
                 f"one process per GPU")
    with tempfile.TemporaryDirectory(prefix="ddp_scaling_") as tmp:
        from t2i import clip_utils

        clip_path = clip_utils.make_random_clip(os.path.join(tmp, f"clip_{opts.clip}.pt"), opts.clip, CLIP_DIM)
        results = []
        for count in counts:
            out_path = os.path.join(tmp, f"{count}.json")
            print(f"running {count} process(es) ...", flush=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads))
            subprocess.run(job_argv(opts, count, clip_path, out_path), check=True, cwd=ROOT, env=env)
            with open(out_path) as f:
                results.append(json.load(f))
    report(opts, results)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"config": {k: v for k, v in vars(opts).items() if k not in ("clip_path", "worker_out")},
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
