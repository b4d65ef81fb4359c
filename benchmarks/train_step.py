"""Seconds, peak memory and FLOPs per training iteration: our `train.train_step` against the course's
straightforward completion of the skeleton, on synthetic batches, on the same machine in the same run.

    python -m benchmarks.train_step                          # batch 8, 3 stages, Ng 1024, Nd 64, both impls
    python -m benchmarks.train_step --impl ours --batch_size 24 --iters 3
    python -m benchmarks.train_step --amp                    # fp16 + GradScaler on CUDA (bf16 on a CPU with bf16)
    python -m benchmarks.train_step --impl ours --breakdown --profile   # where the FLOPs and the time go
    python -m benchmarks.train_step --arch galip             # GALIP's step (train_galip.py) beside the course's

With `--arch galip` the implementations are "course" (below) and "galip": `train_galip.train_step` with the models,
optimizers and run `--arch galip` trains with (Ng 256 unless --g_in_chans says otherwise; D on the CLIP's
768-wide tokens). For each implementation the report adds an estimate of a T4 epoch (--epoch_images, 24000: the
training split with its captions' images) from the FLOP count at an assumed sustained fp16 rate (--t4_tflops);
a GPU measurement replaces it when there is one.

Each implementation runs in its own subprocess (this script re-invokes itself), so its peak RSS is its own.
The ViT-B/32-sized CLIP with random weights is written once by the parent into a temporary folder
(`t2i.clip_utils.make_random_clip`) and loaded by each child with `load_clip`, as training loads it.

Per implementation: one iteration under `torch.utils.flop_counter.FlopCounterMode` (it also serves as a
warm-up; the count includes forward and backward of every model and CLIP), `--warmup` more untimed
iterations, then `--iters` timed ones. Ours runs the untimed and timed iterations as one epoch of train_step
(as training does: the epoch's own work, its report at step 0 and the losses read back at its end, falls in
the first and last iterations, so give `--warmup 1`); each iteration is timed at its boundaries, after a CUDA
synchronize. (min / median / mean reported; the machine may be shared, so look at the
minimum and the median; the process CPU time per iteration, also reported, suffers less from a shared
machine, and with N threads is up to N times the wall time). Peak RSS is
`resource.getrusage(RUSAGE_SELF).ru_maxrss` of the child, reported once
after setup (models, optimizers, CLIP) and once at the end; on CUDA also `torch.cuda.max_memory_allocated`
and `max_memory_reserved` of the training iterations.

"course" is a re-implementation, inside this file, of the straightforward completion of the course skeleton:
  * G runs twice per iteration: once for the D step, once again for the G step;
  * D step per stage on the non-detached fakes: `d_loss.backward(retain_graph=True)`, so every stage's
    backward also runs through G (G's gradients are computed and thrown away by the G step's zero_grad);
  * one full D call per head: `D(img)` for the unconditional head and `D(img, mu)` for the conditional and
    align heads (the contract's forward runs both), for the real and the fake batch separately: the trunk
    runs 4 times per stage in the D step (2 without the unconditional loss);
  * G step: again one D call per head on the fakes (D's weights still require grad, as in the skeleton, so
    the backward also computes D weight gradients that the next D step zeroes); L_ConG on the 256 px stage
    through CLIP (frozen weights, gradient to the image); KL; BCELoss on the sigmoid outputs.
Both use the models of network.py, Adam(lr 2e-4, betas (0.5, 0.999)) and the guideline's loss weights.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLIP_DIM, PROJECTION_DIM, NOISE_DIM, LEARNING_RATE = 512, 128, 100, 2e-4
G_IN_CHANS = {"course": 1024, "ours": 1024, "galip": 256}  # --g_in_chans when not given
GAMMA, LAM, BETA, TAU = 5.0, 10.0, 1.0, 0.5  # the guideline's loss weights


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports kilobytes


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# The course's straightforward completion (the reference the issue measured)
# ----------------------------------------------------------------------------------------------------------

def course_contrastive(features: torch.Tensor, txt: torch.Tensor, tau: float) -> torch.Tensor:
    """-tau * sum_i log softmax_j(sim(f_j, h_i) / tau)[i], cosine similarity."""
    f = features.float() / features.float().norm(dim=-1, keepdim=True)
    h = txt.float() / txt.float().norm(dim=-1, keepdim=True)
    logits = h @ f.t() / tau
    return -tau * torch.diagonal(torch.log_softmax(logits, dim=1)).sum()


class CourseTrainer:
    def __init__(self, opts: Namespace, device: torch.device, clip_model: nn.Module | None):
        from network import Discriminator, Generator, weight_init

        self.device, self.opts, self.clip_model = device, opts, clip_model
        self.G = Generator(CLIP_DIM, PROJECTION_DIM, NOISE_DIM, opts.g_in_chans, 3, opts.num_stage, device)
        self.D_list = [Discriminator(PROJECTION_DIM, 3, opts.d_in_chans, 1, CLIP_DIM, stage, device)
                       for stage in range(opts.num_stage)]
        for model in [self.G, *self.D_list]:
            model.apply(weight_init)
            model.to(device)
        self.optim_g = torch.optim.Adam(self.G.parameters(), lr=LEARNING_RATE, betas=(0.5, 0.999))
        self.optim_d_list = [torch.optim.Adam(D.parameters(), lr=LEARNING_RATE, betas=(0.5, 0.999))
                             for D in self.D_list]
        self.bce = nn.BCELoss()
        scaling = opts.amp and device.type == "cuda"
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scaling)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scaling)

    def autocast(self) -> torch.autocast:
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.opts.amp)

    def loss(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # BCELoss refuses fp16 under CUDA autocast: computed in fp32 outside it (no effect without AMP).
        with torch.autocast(self.device.type, enabled=False):
            return self.bce(out.float().view(-1), label)

    def D_loss(self, D, real_img, fake_img, mu, txt, real_label, fake_label) -> torch.Tensor:
        real_cond, real_align = D(real_img, mu)
        fake_cond, fake_align = D(fake_img, mu)
        loss = self.loss(real_cond, real_label) + self.loss(fake_cond, fake_label)
        if self.opts.use_uncond_loss:
            real_uncond, _ = D(real_img)
            fake_uncond, _ = D(fake_img)
            loss = loss + self.loss(real_uncond, real_label) + self.loss(fake_uncond, fake_label)
        if self.opts.use_contrastive_loss:
            loss = loss + GAMMA * course_contrastive(real_align, txt, TAU) + GAMMA * course_contrastive(
                fake_align, txt, TAU)
        return loss

    def G_loss(self, D, fake_img, mu, txt, g_label) -> torch.Tensor:
        fake_cond, fake_align = D(fake_img, mu)
        loss = self.loss(fake_cond, g_label)
        if self.opts.use_uncond_loss:
            fake_uncond, _ = D(fake_img)
            loss = loss + self.loss(fake_uncond, g_label)
        if self.opts.use_contrastive_loss:
            loss = loss + GAMMA * course_contrastive(fake_align, txt, TAU)
        return loss

    def contrastive_loss_G(self, fake_image: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        from t2i import clip_utils
        from train_utils import clip_preprocess, clip_transform, custom_reshape, denormalize_image

        image = clip_preprocess()(custom_reshape(clip_transform(224)(denormalize_image(fake_image.float()))))
        features = self.clip_model.encode_image(image.to(self.device, clip_utils.clip_dtype(self.clip_model)))
        return course_contrastive(features, txt, TAU)

    def step(self, real_images: list[torch.Tensor], img_feature: torch.Tensor, txt_feature: torch.Tensor) -> float:
        from train_utils import KL_divergence

        batch_size = txt_feature.shape[0]
        real_label = torch.ones(batch_size, device=self.device)
        fake_label = torch.zeros(batch_size, device=self.device)
        g_label = torch.ones(batch_size, device=self.device)
        noise = torch.randn(batch_size, NOISE_DIM, device=self.device)

        # D step: fakes not detached, backward per stage through G with retain_graph.
        with self.autocast():
            fake_images, mu, log_sigma = self.G(txt_feature, noise)
        d_total = 0.0
        for stage, D in enumerate(self.D_list):
            self.optim_d_list[stage].zero_grad()
            with self.autocast():
                d_loss = self.D_loss(D, real_images[stage], fake_images[stage], mu, txt_feature, real_label,
                                     fake_label)
            self.scaler_d.scale(d_loss).backward(retain_graph=True)
            self.scaler_d.step(self.optim_d_list[stage])
            d_total += d_loss.item()
        self.scaler_d.update()

        # G step: a second G forward, one D call per head, CLIP on the last stage.
        self.optim_g.zero_grad()
        with self.autocast():
            fake_images, mu, log_sigma = self.G(txt_feature, noise)
            g_loss = 0.0
            for stage, D in enumerate(self.D_list):
                g_loss = g_loss + self.G_loss(D, fake_images[stage], mu, txt_feature, g_label)
            if self.opts.use_contrastive_loss and fake_images[-1].shape[-1] >= 256:
                g_loss = g_loss + LAM * self.contrastive_loss_G(fake_images[-1], txt_feature)
        g_loss = g_loss + BETA * KL_divergence(mu.float(), log_sigma.float())
        self.scaler_g.scale(g_loss).backward()
        self.scaler_g.step(self.optim_g)
        self.scaler_g.update()
        return d_total + g_loss.item()


# ----------------------------------------------------------------------------------------------------------
# One implementation, measured (runs in a child process)
# ----------------------------------------------------------------------------------------------------------

Batch = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]
Iterate = Callable[[list[Batch]], list[tuple[float, float]]]


def build(opts: Namespace, device: torch.device) -> Iterate:
    """A function that trains the chosen implementation on a list of batches and returns the (wall, process
    CPU) seconds of each iteration."""
    from t2i import clip_utils

    clip_model = None
    if opts.use_contrastive_loss or opts.impl == "galip":  # GALIP's D reads CLIP in every step
        clip_model = clip_utils.load_clip(opts.clip_path, device)
    if opts.impl == "course":
        return course_iterate(CourseTrainer(opts, device, clip_model).step, device)
    if opts.impl == "galip":
        return galip_iterate(opts, device, clip_model)
    return ours_iterate(opts, device, clip_model)


def course_iterate(step: Callable[..., float], device: torch.device) -> Iterate:
    def iterate(batches: list[Batch]) -> list[tuple[float, float]]:
        times = []
        for batch in batches:
            synchronize(device)
            started, cpu_started = time.perf_counter(), time.process_time()
            step(*batch)
            synchronize(device)
            times.append((time.perf_counter() - started, time.process_time() - cpu_started))
        return times
    return iterate


class TimedBatches:
    """Batches as a training loader that times each iteration at its boundaries (after a CUDA synchronize):
    the batches go through train_step as one epoch, so the epoch's own work (the progress bar, the report at
    step 0, reading the losses back at the end) is not counted against each iteration as one-batch epochs
    would."""

    def __init__(self, batches: list[Batch], device: torch.device):
        self.batches, self.device = batches, device
        self.times: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            synchronize(self.device)
            started, cpu_started = time.perf_counter(), time.process_time()
            yield batch
            synchronize(self.device)
            self.times.append((time.perf_counter() - started, time.process_time() - cpu_started))


def galip_iterate(opts: Namespace, device: torch.device, clip_model: nn.Module) -> Iterate:
    """train_galip.train_step, with the models, optimizers and run --arch galip builds."""
    import train_galip
    from t2i.training import options

    args = options.complete(Namespace(
        arch="galip", amp=opts.amp, num_stage=opts.num_stage, g_in_chans=opts.g_in_chans,
        clip_embedding_dim=CLIP_DIM, projection_dim=PROJECTION_DIM, noise_dim=NOISE_DIM, learning_rate=LEARNING_RATE))
    import train

    model = train_galip.GALIP(args)
    model.fit_to_clip(clip_model)
    G, D_lst, optim_g, optim_d_lst = model.build(device)
    run = train.run_helpers(args, device, G, D_lst, optim_g, optim_d_lst)

    def iterate(batches: list[Batch]) -> list[tuple[float, float]]:
        loader = TimedBatches(batches, device)
        train_galip.train_step(loader, NOISE_DIM, device, G, D_lst, optim_g, optim_d_lst, clip_model, opts.num_stage,
                               10 ** 9, **run._asdict())
        return loader.times
    return iterate


def ours_iterate(opts: Namespace, device: torch.device, clip_model: nn.Module | None) -> Iterate:
    """train.train_step, with the models, optimizers and run that train() builds."""
    import train
    from t2i.training import options

    args = options.complete(Namespace(
        amp=opts.amp, use_uncond_loss=opts.use_uncond_loss, use_contrastive_loss=opts.use_contrastive_loss,
        num_stage=opts.num_stage, g_in_chans=opts.g_in_chans, d_in_chans=opts.d_in_chans,
        clip_embedding_dim=CLIP_DIM, projection_dim=PROJECTION_DIM, noise_dim=NOISE_DIM, learning_rate=LEARNING_RATE))
    G, D_lst, optim_g, optim_d_lst = train.CourseModel(args).build(device)
    run = train.run_helpers(args, device, G, D_lst, optim_g, optim_d_lst)
    loss_fn = nn.BCEWithLogitsLoss()

    def iterate(batches: list[Batch]) -> list[tuple[float, float]]:
        loader = TimedBatches(batches, device)
        train.train_step(loader, NOISE_DIM, device, G, D_lst, optim_g, optim_d_lst, loss_fn, opts.num_stage,
                         opts.use_uncond_loss, opts.use_contrastive_loss, 10 ** 9, clip_model, GAMMA, LAM,
                         **run._asdict())
        return loader.times
    return iterate


def synthetic_batch(opts: Namespace, device: torch.device, seed: int):
    from torch.nn.functional import normalize

    g = torch.Generator().manual_seed(seed)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = [(torch.rand(opts.batch_size, 3, 64 * 2 ** s, 64 * 2 ** s, generator=g) * 2 - 1)
              .to(device).contiguous(memory_format=memory_format) for s in range(opts.num_stage)]
    img_feature = normalize(torch.randn(opts.batch_size, CLIP_DIM, generator=g), dim=-1).to(device)
    txt_feature = normalize(torch.randn(opts.batch_size, CLIP_DIM, generator=g), dim=-1).to(device)
    return images, img_feature, txt_feature


def measure(opts: Namespace) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(opts.device)
    torch.manual_seed(0)
    iterate = build(opts, device)
    batches = [synthetic_batch(opts, device, seed) for seed in range(2)]
    setup_rss = peak_rss_bytes()

    # One counted iteration (forward + backward of everything); it also warms up.
    counter = FlopCounterMode(display=False)
    started = time.perf_counter()
    with counter:
        iterate(batches[:1])
    synchronize(device)
    flop_iteration_s = time.perf_counter() - started
    flops = counter.get_total_flops()
    breakdown = None
    if opts.breakdown:
        counts = counter.get_flop_counts()
        # Per aten op (exact), then per module (FlopCounterMode attributes backward ops by module hooks, and
        # calls that bypass forward (D.trunk / D.heads) appear under their submodules' class names).
        breakdown = {f"op {op}": n for op, n in counts.get("Global", {}).items()}
        breakdown.update({f"module {name}": sum(per_op.values()) for name, per_op in counts.items()
                          if name != "Global" and name.count(".") < opts.breakdown_depth})

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = iterate([batches[i % 2] for i in range(opts.warmup + opts.iters)])[opts.warmup:]
    times, cpu_times = [wall for wall, _ in timed], [cpu for _, cpu in timed]

    result = {
        "impl": opts.impl, "flops": flops, "times": times, "cpu_times": cpu_times,
        "flop_iteration_s": flop_iteration_s,
        "setup_rss": setup_rss, "peak_rss": peak_rss_bytes(), "breakdown": breakdown,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)
        result["cuda_peak_reserved"] = torch.cuda.max_memory_reserved(device)

    if opts.profile:  # after the measured run, so it does not disturb the figures
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=False) as prof:
            iterate(batches[:1])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"--- torch.profiler, impl {opts.impl}: one iteration, top ops by self time ---", file=sys.stderr)
        print(prof.key_averages().table(sort_by=sort, row_limit=opts.profile_rows), file=sys.stderr)
    return result


# ----------------------------------------------------------------------------------------------------------
# The parent: one child per implementation, then the table
# ----------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_stage", type=int, default=3)
    p.add_argument("--arch", choices=["stackgan", "galip"], default="stackgan",
                   help="galip: measure train_galip's step (impl galip) beside the course's")
    p.add_argument("--g_in_chans", type=int, default=None, help="Ng (default: 1024; galip: 256)")
    p.add_argument("--d_in_chans", type=int, default=64, help="Nd")
    p.add_argument("--clip", default="vit-b-32", help="make_random_clip preset (vit-b-32, tiny)")
    p.add_argument("--no_uncond", dest="use_uncond_loss", action="store_false",
                   help="turn the unconditional loss off (on by default)")
    p.add_argument("--no_contrastive", dest="use_contrastive_loss", action="store_false",
                   help="turn both contrastive losses off, and CLIP with them (on by default)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed iterations after the FLOP-counted one (which already warms up)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision: fp16 autocast + GradScaler on CUDA; bf16 autocast on a CPU with bf16 "
                        "instructions, refused on a CPU without them (as main.py --amp)")
    p.add_argument("--impl", choices=["ours", "course", "galip", "both"], default="both",
                   help="both: course and ours (--arch galip: course and galip)")
    p.add_argument("--epoch_images", type=int, default=24000, help="images per epoch, for the T4 estimate")
    p.add_argument("--t4_tflops", type=float, default=20.0,
                   help="assumed sustained fp16 TFLOP/s of a T4 for the epoch estimate (its peak is 65)")
    p.add_argument("--breakdown", action="store_true", help="print FLOPs per module (FlopCounterMode)")
    p.add_argument("--breakdown_depth", type=int, default=0, help="also per module, to this depth")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one extra iteration")
    p.add_argument("--profile_rows", type=int, default=25)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--clip_path", help=argparse.SUPPRESS)   # set by the parent for its children
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.device is None:
        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    return opts


def child_argv(opts: Namespace, impl: str, clip_path: str | None, out_path: str) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.train_step", "--impl", impl, "--child_out", out_path,
            "--batch_size", str(opts.batch_size), "--num_stage", str(opts.num_stage),
            "--g_in_chans", str(opts.g_in_chans or G_IN_CHANS[impl]), "--d_in_chans", str(opts.d_in_chans),
            "--clip", opts.clip,
            "--iters", str(opts.iters), "--warmup", str(opts.warmup), "--device", opts.device,
            "--amp" if opts.amp else "--no-amp", "--breakdown_depth", str(opts.breakdown_depth),
            "--profile_rows", str(opts.profile_rows), "--threads", str(opts.threads)]
    argv += [] if opts.use_uncond_loss else ["--no_uncond"]
    argv += [] if opts.use_contrastive_loss else ["--no_contrastive"]
    argv += ["--breakdown"] if opts.breakdown else []
    argv += ["--profile"] if opts.profile else []
    argv += ["--clip_path", clip_path] if clip_path else []
    return argv


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def report(opts: Namespace, results: list[dict]) -> None:
    amp = ("fp16+GradScaler" if opts.device.startswith("cuda") else "bf16") if opts.amp else "off"
    widths = ", ".join(f"Ng {opts.g_in_chans or G_IN_CHANS[r['impl']]} ({r['impl']})" for r in results)
    print(f"\nconfig: batch {opts.batch_size}, {opts.num_stage} stages, {widths}, Nd {opts.d_in_chans} "
          f"(galip: the CLIP's token width), "
          f"CLIP {opts.clip if opts.use_contrastive_loss else 'none'} (random weights), "
          f"uncond {'on' if opts.use_uncond_loss else 'off'}, "
          f"contrastive {'on' if opts.use_contrastive_loss else 'off'}, "
          f"device {opts.device}, AMP {amp}, torch {torch.__version__}, {results[0]['threads']} threads, "
          f"{opts.iters} timed iterations")
    cuda = "cuda_peak_allocated" in results[0]
    header = (f"{'impl':<7} {'GFLOP/it':>9} {'s/it min':>9} {'median':>8} {'mean':>8} {'CPU s/it med':>13} "
              f"{'setup RSS GB':>13} {'peak RSS GB':>12}")
    header += f" {'CUDA alloc GB':>14} {'reserved GB':>12}" if cuda else ""
    print(header)
    for r in results:
        t = r["times"]
        line = (f"{r['impl']:<7} {r['flops'] / 1e9:>9.1f} {min(t):>9.2f} {statistics.median(t):>8.2f} "
                f"{statistics.mean(t):>8.2f} {statistics.median(r['cpu_times']):>13.2f} "
                f"{gb(r['setup_rss']):>13} {gb(r['peak_rss']):>12}")
        if cuda:
            line += f" {gb(r['cuda_peak_allocated']):>14} {gb(r['cuda_peak_reserved']):>12}"
        print(line)
    for r in results:
        print(f"  {r['impl']}: all timed s/it {[round(x, 2) for x in r['times']]}, process CPU s/it "
              f"{[round(x, 2) for x in r['cpu_times']]}; "
              f"FLOP-counted iteration {r['flop_iteration_s']:.2f} s")
        if r.get("breakdown"):
            by_module = f" and module (depth {opts.breakdown_depth})" if opts.breakdown_depth else ""
            print(f"  {r['impl']} GFLOP by aten op{by_module}:")
            for name, value in sorted(r["breakdown"].items(), key=lambda kv: -kv[1]):
                if value:
                    print(f"    {value / 1e9:>9.1f}  {name}")
    iterations = -(-opts.epoch_images // opts.batch_size)
    for r in results:
        minutes = r["flops"] * iterations / (opts.t4_tflops * 1e12) / 60
        print(f"  {r['impl']}: T4 epoch estimate ({opts.epoch_images} images, {iterations} iterations at "
              f"{opts.t4_tflops:g} TFLOP/s sustained fp16, from the FLOP count): {minutes:.1f} min")
    by_impl = {r["impl"]: r for r in results}
    other = "galip" if "galip" in by_impl else "ours"
    if other in by_impl and "course" in by_impl:
        o, c = by_impl[other], by_impl["course"]
        print(f"{other}/course:", end=" ")
        line = (f"FLOPs {o['flops'] / c['flops']:.3f}, s/it {min(o['times']) / min(c['times']):.3f} "
                f"(min) {statistics.median(o['times']) / statistics.median(c['times']):.3f} (median), "
                f"CPU s/it {statistics.median(o['cpu_times']) / statistics.median(c['cpu_times']):.3f} (median), "
                f"peak RSS {o['peak_rss'] / c['peak_rss']:.3f}")
        if cuda:
            line += f", peak CUDA allocated {o['cuda_peak_allocated'] / c['cuda_peak_allocated']:.3f}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.child_out:  # a child: measure one implementation, write the figures as JSON
        result = measure(opts)
        with open(opts.child_out, "w") as f:
            json.dump(result, f)
        return

    if opts.amp and opts.device == "cpu":  # refused on a CPU without bf16 instructions, in one line
        from t2i.errors import one_line_errors
        from t2i.training.precision import precision_for

        with one_line_errors():
            precision_for(torch.device("cpu"), True)
    galip = "galip" if opts.arch == "galip" else "ours"
    impls = ["course", galip] if opts.impl == "both" else [opts.impl]
    with tempfile.TemporaryDirectory(prefix="train_step_bench_") as tmp:
        clip_path = None
        if opts.use_contrastive_loss or "galip" in impls:
            from t2i import clip_utils
            clip_path = clip_utils.make_random_clip(os.path.join(tmp, f"clip_{opts.clip}.pt"), opts.clip, CLIP_DIM)
        results = []
        for impl in impls:
            out_path = os.path.join(tmp, f"{impl}.json")
            print(f"running {impl} ...", flush=True)
            subprocess.run(child_argv(opts, impl, clip_path, out_path), check=True, cwd=ROOT)
            with open(out_path) as f:
                results.append(json.load(f))
    report(opts, results)


if __name__ == "__main__":
    main()
