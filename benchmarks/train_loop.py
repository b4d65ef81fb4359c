"""The real training loop, ours against the course's straightforward completion: seconds and host CPU seconds per
iteration of main.py's `train` (data loading, progress and logging included), and an estimate for a Colab T4 epoch.

    python -m benchmarks.train_loop --device cuda                         # the GPU measurement (see the README)
    python -m benchmarks.train_loop --device cpu --batch_size 4 --epoch_iterations 4 --iterations 4

Three programs train on the same synthetic preprocessed zip, each in a fresh process:
  ours       our train.py and network.py under the course's plain main.py, read_dataset.py, dataloader.py,
             train_utils.py and fix_seed.py (`t2i.harness`), as the graders' harness runs a submission;
  course     benchmarks/course_completion/train.py (the skeleton completed the straightforward way) with our
             network.py under the same plain files: the same data loading, main.py and models;
  ours-main  our own main.py and files: the loader that keeps 256 px uint8 images and makes the stage images on
             the device (the course's keeps 64 px float copies and upsamples them on the host).
Each runs one discarded epoch first (warm-up: cuDNN plans, the allocator, CLIP), then `--iterations` timed ones,
in epochs of `--epoch_iterations` (the zip holds epoch_iterations x batch_size images). The programs alternate
(ours, course, ours-main, ours, course, ...) for `--rounds` rounds, so a slow spell of a shared machine hits all.

A child wraps the training module's `train_step` (one epoch) with timers and runs main.py through runpy:
wall time (after a CUDA synchronize), process CPU time (every thread of the process: on a GPU that includes
spinning in synchronisations), the CPU time of each thread group from /proc (main, autograd, others), and
torch.cuda.max_memory_allocated. With `--threads N` (2 by default, Colab's two host cores) each child runs
torch with N threads, pinned to N CPUs (os.sched_setaffinity, Linux). Checkpoint files are written empty: they
come between epochs, outside the timed epochs, and would only cost disk and minutes. `--count_ops` profiles one
more epoch (torch.profiler): aten operators dispatched per iteration, the host time outside them, and on CUDA
the synchronisations per iteration (torch.cuda.set_sync_debug_mode).

The T4 epoch (24000 images, batch 24: 1000 iterations): on a T4 itself, 1000 x the measured s / iteration;
on another GPU the course's own figure for its straightforward code on a T4 (40 to 50 minutes an epoch, CONTRACT.md)
times ours / course measured here. On a GPU ours runs fp16 autocast and the course fp32: a T4's fp16 tensor
cores are 8x its fp32 rate, a larger gap than newer GPUs' (TF32 narrows it there), so the estimate is on the
safe side. On a CPU no estimate is printed: the ratio of CPU times says nothing about a GPU's.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from argparse import Namespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COURSE_TRAIN = os.path.join(ROOT, "benchmarks", "course_completion", "train.py")
VARIANTS = ("ours", "course", "ours-main")
T4_COURSE_EPOCH_MINUTES = (40.0, 50.0)  # the course's straightforward code on a Colab T4 (CONTRACT.md, Grading)
T4_EPOCH_ITERATIONS = 1000  # 24000 training images, batch 24


# ----------------------------------------------------------------------------------------------------------
# The child: main.py with train_step timed
# ----------------------------------------------------------------------------------------------------------

def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by group: the main thread, autograd's device threads, the
    rest (intra-op pool, CUDA driver, ...). Empty where /proc is not available."""
    groups = {"main": 0.0, "autograd": 0.0, "other": 0.0}
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    task_dir = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(task_dir):
        return {}
    for tid in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, tid, "stat")) as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        group = "main" if int(tid) == os.getpid() else "autograd" if name.startswith("pt_autograd") else "other"
        groups[group] += seconds
    return groups


def limit_host(threads: int) -> list[int] | None:
    """torch on `threads` threads, pinned to that many CPUs (Linux): a host like Colab's. The CPUs used."""
    import torch

    torch.set_num_threads(threads)
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def profile_counts(prof, iterations: int, wall: float) -> dict:
    """Operators dispatched per iteration (every aten:: call, and the outermost ones), and the host time per
    iteration outside the outermost operators (Python, autograd's bookkeeping, the loader, the profiler's own)."""
    events = [event for event in prof.events() if event.name.startswith("aten::")]

    def outermost(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    top = [event for event in events if outermost(event)]
    inside = sum(event.time_range.elapsed_us() for event in top) / 1e6
    return {"ops_per_it": len(events) / iterations, "top_ops_per_it": len(top) / iterations,
            "outside_ops_s_per_it": (wall - inside) / iterations, "profiled_s_per_it": wall / iterations}


def child(opts: Namespace, main_argv: list[str]) -> None:
    """Run main.py (from the working directory) with its training module's train_step timed; one JSON line per
    epoch to opts.child."""
    import torch

    cpus = limit_host(opts.threads)
    sys.path.insert(0, os.getcwd())  # the harness's plain files (or our own) before the repository's
    import train as training  # noqa: E402 - the working directory's train.py: ours or the course completion

    def write_empty(obj, f, *args, **kwargs) -> None:
        if isinstance(f, (str, os.PathLike)):
            open(f, "wb").close()

    torch.save = write_empty  # checkpoints: written empty (between epochs, outside the timed epochs)
    original_step, original_train = training.train_step, training.train
    epochs: list[int] = []

    def timed_step(train_loader, *args, **kwargs):
        epoch = len(epochs)
        epochs.append(epoch)
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        profiling = opts.count_ops and epoch == opts.warmup_epochs + opts.timed_epochs
        threads_before = thread_cpu_seconds()
        wall, cpu = time.perf_counter(), time.process_time()
        if profiling:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof, warnings.catch_warnings(record=True) as caught:
                if cuda:  # every synchronising CUDA call warns (each one drains the GPU's queue)
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                result = original_step(train_loader, *args, **kwargs)
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        else:
            result = original_step(train_loader, *args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        threads = {name: seconds - threads_before.get(name, 0.0) for name, seconds in thread_cpu_seconds().items()}
        record = {"epoch": epoch, "iterations": len(train_loader), "wall": wall, "cpu": cpu, "threads": threads,
                  "cuda_peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
                  "device": torch.cuda.get_device_name() if cuda else "cpu", "torch_threads": torch.get_num_threads(),
                  "cpus": cpus, "kind": "profiled" if profiling else "warm-up" if epoch < opts.warmup_epochs
                  else "timed"}
        if profiling:
            record.update(profile_counts(prof, len(train_loader), wall))
            if cuda:
                record["syncs_per_it"] = sum("synchronizing" in str(w.message) for w in caught) / len(train_loader)
        with open(opts.child, "a") as f:
            f.write(json.dumps(record) + "\n")
        return result

    def train_with_widths(args: Namespace) -> None:
        args.g_in_chans, args.d_in_chans = opts.g_in_chans, opts.d_in_chans  # the course's main.py has no flags
        return original_train(args)

    training.train_step, training.train = timed_step, train_with_widths
    sys.argv = ["main.py", *main_argv]
    runpy.run_path("main.py", run_name="__main__")


# ----------------------------------------------------------------------------------------------------------
# The parent: data, the alternated runs, the table
# ----------------------------------------------------------------------------------------------------------

def main_argv(opts: Namespace, data: str, stages: int, out_dir: str, epochs: int) -> list[str]:
    """The notebook's command (course flags only), at the benchmark's batch size and epoch count."""
    argv = ["--train_data", data, "--batch_size", str(opts.batch_size), "--num_epochs", str(epochs),
            "--learning_rate", "2e-4", "--report_interval", str(opts.report_interval), "--noise_dim", "100",
            "--projection_dim", "128", "--clip_embedding_dim", "512", "--checkpoint_path",
            os.path.join(out_dir, "checkpoints"), "--result_path", os.path.join(out_dir, "results"),
            "--num_stage", str(stages), "--resume_epoch", "-1"]
    argv += ["--use_uncond_loss"] if opts.use_uncond_loss else []
    argv += ["--use_contrastive_loss"] if opts.use_contrastive_loss else []
    return argv


def child_argv(opts: Namespace, out: str) -> list[str]:
    argv = ["-m", "benchmarks.train_loop", "--child", out, "--threads", str(opts.threads), "--g_in_chans",
            str(opts.g_in_chans), "--d_in_chans", str(opts.d_in_chans), "--warmup_epochs", str(opts.warmup_epochs),
            "--timed_epochs", str(opts.timed_epochs)]
    return argv + (["--count_ops"] if opts.count_ops else [])


def run_variant(opts: Namespace, variant: str, stages: int, data: str, clip_path: str, work: str,
                workdirs: dict[str, str]) -> list[dict]:
    """One run of one program; its epoch records."""
    from t2i import harness

    out_dir = tempfile.mkdtemp(prefix=f"{variant}_{stages}_", dir=work)
    out = os.path.join(out_dir, "epochs.jsonl")
    epochs = opts.warmup_epochs + opts.timed_epochs + (1 if opts.count_ops else 0)
    argv = main_argv(opts, data, stages, out_dir, epochs)
    env = {"OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    if opts.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the course's train() takes CUDA whenever it sees one
    started = time.time()
    if variant == "ours-main":  # our main.py with our files, from the repository root
        argv += ["--clip_model", clip_path, "--device", opts.device]
        result = subprocess.run([sys.executable, *child_argv(opts, out), "--", *argv], cwd=ROOT,
                                env={**os.environ, **env}, capture_output=True, text=True)
    else:  # python -m puts the working directory first on sys.path, as running its main.py would
        result = harness.run_course_script(workdirs[variant], child_argv(opts, out)[0],
                                           [*child_argv(opts, out)[1:], "--", *argv], clip_standin=clip_path,
                                           extra_env=env)
    if result.returncode != 0:
        raise SystemExit(f"{variant}, {stages} stage(s) failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    with open(out) as f:
        records = [json.loads(line) for line in f]
    shutil.rmtree(out_dir, ignore_errors=True)
    print(f"  {variant:<9} {stages} stage(s): "
          + ", ".join(f"{r['kind']} {r['wall'] / r['iterations']:.3f} s/it" for r in records)
          + f" ({time.time() - started:.0f} s in all)", flush=True)
    return records


def summarize(records: list[list[dict]]) -> dict:
    """Per-iteration figures of one program: timed epochs pooled within a run, the median over runs."""
    runs = []
    for run in records:
        timed = [r for r in run if r["kind"] == "timed"]
        iterations = sum(r["iterations"] for r in timed)
        runs.append({"s_per_it": sum(r["wall"] for r in timed) / iterations,
                     "cpu_per_it": sum(r["cpu"] for r in timed) / iterations,
                     "threads_per_it": {name: sum(r["threads"].get(name, 0.0) for r in timed) / iterations
                                        for name in timed[0]["threads"]},
                     "cuda_peak": max((r["cuda_peak_allocated"] or 0) for r in timed) or None,
                     "profile": next((r for r in run if r["kind"] == "profiled"), None)})
    median = {key: statistics.median(run[key] for run in runs) for key in ("s_per_it", "cpu_per_it")}
    median["threads_per_it"] = {name: statistics.median(run["threads_per_it"][name] for run in runs)
                                for name in runs[0]["threads_per_it"]}
    median["cuda_peak"] = runs[0]["cuda_peak"]
    median["runs_s_per_it"] = [run["s_per_it"] for run in runs]
    median["profile"] = runs[0]["profile"]
    median["device"] = records[0][0]["device"]
    return median


def t4_estimate(figures: dict[str, dict]) -> tuple[float, float, str] | None:
    """(low, high) minutes of a 24000-image T4 epoch for ours, and how they were derived."""
    ours, course = figures.get("ours-main") or figures.get("ours"), figures.get("course")
    if ours is None:
        return None
    if "T4" in ours["device"]:
        minutes = T4_EPOCH_ITERATIONS * ours["s_per_it"] / 60
        return minutes, minutes, f"measured on a T4: {T4_EPOCH_ITERATIONS} x {ours['s_per_it']:.3f} s / iteration"
    if course is None or ours["device"] == "cpu":  # a CPU's ratio says nothing about a GPU's
        return None
    ratio = ours["s_per_it"] / course["s_per_it"]
    low, high = (ratio * minutes for minutes in T4_COURSE_EPOCH_MINUTES)
    return low, high, (f"the course's straightforward code takes {T4_COURSE_EPOCH_MINUTES[0]:.0f}-"
                       f"{T4_COURSE_EPOCH_MINUTES[1]:.0f} min an epoch on a T4; x ours / course measured here "
                       f"on {ours['device']} ({ratio:.3f})")


def report(opts: Namespace, results: dict[int, dict[str, dict]], load: tuple[float, float]) -> None:
    print(f"\nconfig: batch {opts.batch_size}, Ng {opts.g_in_chans}, Nd {opts.d_in_chans}, CLIP {opts.clip} (random "
          f"weights), uncond {'on' if opts.use_uncond_loss else 'off'}, contrastive "
          f"{'on' if opts.use_contrastive_loss else 'off'}, device {opts.device}, {opts.threads} host threads, "
          f"{opts.rounds} round(s), {opts.timed_epochs} timed epoch(s) of {opts.epoch_iterations} iterations after "
          f"{opts.warmup_epochs} discarded; load average {load[0]:.1f} before, {load[1]:.1f} after")
    cuda = opts.device.startswith("cuda")
    header = f"{'stages':>6} {'program':<9} {'s/it':>8} {'CPU s/it':>9} {'main/autograd/other CPU s/it':>29}"
    header += f" {'GPU peak GB':>11}" if cuda else ""
    header += f" {'ops/it':>8} {'top ops/it':>10} {'outside ops s/it':>16}" if opts.count_ops else ""
    header += f" {'syncs/it':>8}" if opts.count_ops and cuda else ""
    print(header)
    for stages, figures in results.items():
        for variant, f in figures.items():
            threads = "/".join(f"{f['threads_per_it'].get(name, 0.0):.3f}" for name in ("main", "autograd", "other"))
            line = f"{stages:>6} {variant:<9} {f['s_per_it']:>8.3f} {f['cpu_per_it']:>9.3f} {threads:>29}"
            line += f" {(f['cuda_peak'] or 0) / 1e9:>11.2f}" if cuda else ""
            if opts.count_ops and f["profile"]:
                p = f["profile"]
                line += f" {p['ops_per_it']:>8.0f} {p['top_ops_per_it']:>10.0f} {p['outside_ops_s_per_it']:>16.4f}"
                line += f" {p['syncs_per_it']:>8.1f}" if cuda else ""
            print(line + f"   runs: {[round(x, 3) for x in f['runs_s_per_it']]}")
        if "ours" in figures and "course" in figures:
            o, c = figures["ours"], figures["course"]
            print(f"{stages:>6} ours/course: s/it {o['s_per_it'] / c['s_per_it']:.3f}, CPU s/it "
                  f"{o['cpu_per_it'] / c['cpu_per_it']:.3f}"
                  + (f", ops/it {o['profile']['ops_per_it'] / c['profile']['ops_per_it']:.3f}"
                     if opts.count_ops and o["profile"] and c["profile"] else ""))
        estimate = t4_estimate(figures)
        if estimate:
            low, high, how = estimate
            print(f"{stages:>6} T4 epoch (24000 images) estimate for ours: {low:.1f}-{high:.1f} min ({how})")
        else:
            print(f"{stages:>6} T4 epoch (24000 images) estimate: needs a run on a GPU (--device cuda)")


def parse_args(argv: list[str] | None = None) -> tuple[Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="1,3", help="comma-separated stage counts")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--batch_size", type=int, default=24)
    p.add_argument("--iterations", type=int, default=200, help="timed iterations per run")
    p.add_argument("--epoch_iterations", type=int, default=100,
                   help="iterations per epoch (the zip holds this x batch_size images); one epoch is discarded")
    p.add_argument("--rounds", type=int, default=2, help="runs of each program, alternated")
    p.add_argument("--g_in_chans", type=int, default=1024, help="Ng")
    p.add_argument("--d_in_chans", type=int, default=64, help="Nd")
    p.add_argument("--clip", default="vit-b-32", help="random CLIP preset (vit-b-32, tiny)")
    p.add_argument("--no_uncond", dest="use_uncond_loss", action="store_false",
                   help="turn the unconditional loss off (on by default, as in the notebook)")
    p.add_argument("--no_contrastive", dest="use_contrastive_loss", action="store_false",
                   help="turn both contrastive losses off (on by default, as in the notebook)")
    p.add_argument("--report_interval", type=int, default=50)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=2, help="host threads (and CPUs) of each run: Colab has two")
    p.add_argument("--count_ops", action="store_true",
                   help="profile one more epoch: operators per iteration and host time outside them")
    p.add_argument("--work_dir", help="where the data and the runs go (default: a temporary folder)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)  # a child: its epoch records go to this file
    p.add_argument("--warmup_epochs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--timed_epochs", type=int, default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.device is None:
        import torch

        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.timed_epochs is None:
        opts.timed_epochs = max(1, -(-opts.iterations // opts.epoch_iterations))
    return opts, rest


def main(argv: list[str] | None = None) -> None:
    opts, rest = parse_args(argv)
    if opts.child:
        child(opts, rest)
        return
    from benchmarks.load import write_zip
    from t2i import clip_utils, harness

    stage_counts = [int(s) for s in opts.stages.split(",")]
    variants = [v for v in opts.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose among {', '.join(VARIANTS)}")
    load_before = os.getloadavg()[0]
    work = opts.work_dir or tempfile.mkdtemp(prefix="train_loop_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        data = os.path.join(work, "train.zip")
        images = opts.epoch_iterations * opts.batch_size
        print(f"writing {images} synthetic 256 px images ...", flush=True)
        write_zip(data, images, 4, 512, 256)
        clip_path = clip_utils.make_random_clip(os.path.join(work, f"clip_{opts.clip}.pt"), opts.clip, 512)
        workdirs = {"ours": harness.prepare_workdir(os.path.join(work, "harness_ours"),
                                                    os.path.join(ROOT, "network.py"), os.path.join(ROOT, "train.py")),
                    "course": harness.prepare_workdir(os.path.join(work, "harness_course"),
                                                      os.path.join(ROOT, "network.py"), COURSE_TRAIN)}
        results: dict[int, dict[str, dict]] = {}
        for stages in stage_counts:
            records: dict[str, list[list[dict]]] = {variant: [] for variant in variants}
            for _ in range(opts.rounds):
                for variant in variants:
                    records[variant].append(run_variant(opts, variant, stages, data, clip_path, work, workdirs))
            results[stages] = {variant: summarize(runs) for variant, runs in records.items()}
    finally:
        if not opts.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report(opts, results, (load_before, os.getloadavg()[0]))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
