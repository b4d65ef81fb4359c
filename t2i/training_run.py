"""Everything a training run does beyond the course skeleton, in one object: `train` builds it and hands it to
`train_step` as `run`.

Per iteration: the batches (progress bar, the move to the device, skipping a batch of one), mixed precision
with gradient scaling, DiffAugment, mismatched captions, frozen discriminators in the generator step, a
non-finite step that changes nothing (BatchNorm statistics restored), the EMA generator, reporting (progress
bar, loss log) and mid-epoch snapshots. Per epoch: the resume state, evaluation, the loss log and curve,
pruning. Per run: the checkpoint folder's checks, `run_options.json`, a one-line summary. Under torchrun, what the
processes do together (`t2i/distributed.py`): synchronised BatchNorm, the global batch's noise and losses, summed
gradients, every process's random streams in the resume state, files from process 0 alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from argparse import Namespace
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from network import Discriminator, Generator, weight_init
from t2i import batching, checkpoints, distributed, options, plots, run_lock
from t2i.augment import diff_augment, parse_policy
from t2i.ema import GeneratorEMA, recompute_batchnorm
from t2i.errors import T2IError
from t2i.evaluation import summary_line, write_report
from t2i.files import atomic_save, atomic_write_text, nonfinite_tensors, remove_file
from t2i.loss_log import LossLog
from t2i.nonfinite import StepGuard, create_optimizer_state
from t2i.precision import Precision, precision_for, step_optimizers
from t2i.resume import ResumePoint


# The EMA generator's BatchNorm statistics are measured on this many batches of training captions and fresh noise,
# drawn with this seed: the same batches every time, so a resumed run saves what an uninterrupted one saves.
BATCHNORM_BATCHES, BATCHNORM_SEED = 8, 4321


def uses_channels_last(device: torch.device) -> bool:
    """cuDNN's fastest convolution layout on CUDA; on a CPU the default layout is as fast."""
    return device.type == "cuda"


def adam_options(device: torch.device) -> dict:
    """Adam's fused kernel, on CUDA and on a CPU alike: one operation a step (on a 2-core CPU 4x faster than the
    multi-tensor one, whose CPU version also reads every step count back with .item()), and it can skip a step
    on the device (`found_inf`, see precision.step_optimizers)."""
    return {"fused": True}


def init_conditioning_mu(generator: nn.Module, std: float) -> None:
    """--ca_init_std: re-draw the weights of conditioning augmentation's Linear that give mu from N(0, std).

    weight_init's N(0, 0.02) suits inputs whose elements have unit variance. The CA's input is a unit-norm CLIP
    embedding (elements ~ 1/sqrt(D)), so under it mu differs by ~0.01 between captions while sigma starts at 1:
    the text first reaches G almost as noise, and G is slow to use it. std 1 keeps the input's norm; the
    default, 3 (the best measured by benchmarks/conditional.py), starts mu's spread across captions above
    sigma. The log_sigma rows keep weight_init's values, so sigma still starts at 1, the KL prior's value."""
    condition_aug = generator.condition_aug
    with torch.no_grad():
        nn.init.normal_(condition_aug.layer[0].weight[:condition_aug.emb_dim], mean=0.0, std=std)


class TrainingRun:
    """The run's state and settings beyond the skeleton's (see the module docstring).

    `TrainingRun(args, ...)` is a full run from main.py's options; `TrainingRun.plain(...)` gives the course's
    behaviour (fp32, no EMA, no mismatch, no augmentation, no files), for `train_step` called without `run`."""

    def __init__(self, args: Namespace, device: torch.device, G: nn.Module, D_list: list[nn.Module],
                 optim_g: torch.optim.Optimizer, optim_d_list: list[torch.optim.Optimizer],
                 precision: Precision | None = None, files: bool = True):
        self.args = args
        self.device = device
        self.G, self.D_list = G, D_list
        self.optim_g, self.optim_d_list = optim_g, optim_d_list
        self.precision = precision or precision_for(device, args.amp)
        self.files = files  # False: no loss log, snapshots or summary files (a plain train_step)
        self.processes = distributed.active()  # None: this process alone
        self.writes = files and (self.processes is None or self.processes.main)  # under torchrun, process 0 alone
        if self.processes is not None:
            if args.sync_bn:
                for model in (G, *D_list):
                    distributed.convert_batchnorm(model)
            self.processes.broadcast_models([G, *D_list])
            self.processes.announce(args.batch_size)
        self.channels_last = uses_channels_last(device)
        if self.channels_last:
            for model in (G, *D_list):
                model.to(memory_format=torch.channels_last)
        self.language_free, self.xi = args.language_free, args.xi
        self.tau, self.beta = args.tau, args.beta
        self.mismatch, self.detach_condition = args.mismatch, args.detach_condition
        self.clip_loss_any_size = args.clip_loss_any_size
        self.augment_policy = parse_policy(args.diffaugment)
        self.ema = GeneratorEMA(G, args.ema_decay) if args.ema else None
        self.ema_statistics_at: int | None = None  # num_updates when the EMA's BatchNorm statistics were measured
        self.dataset = None  # the training set, once batches() has seen its loader
        create_optimizer_state([optim_g, *optim_d_list])
        self.guard = StepGuard([G, *D_list], D_list, optim_d_list, [self.precision.scaler_d, self.precision.scaler_g])
        self.num_updates = 0
        self.d_loss: torch.Tensor | None = None  # this iteration's discriminator loss ...
        self.d_taken: torch.Tensor | None = None  # ... and whether its step was taken (a bool on the device)
        self.epoch, self.step, self.steps_in_epoch = 0, 0, 0
        self.bad_in_a_row = self.skipped = 0
        self.loss_log: LossLog | None = None
        self.components: dict[str, torch.Tensor] = {}
        self.epoch_started = self.run_started = time.time()

    @classmethod
    def plain(cls, device: torch.device, G: nn.Module, D_list: list[nn.Module], optim_g: torch.optim.Optimizer,
              optim_d_list: list[torch.optim.Optimizer]) -> TrainingRun:
        args = options.complete(Namespace(recipe="guideline", amp=False, ema=False, mismatch=False))
        return cls(args, device, G, D_list, optim_g, optim_d_list, files=False)

    # ------------------------------------------------------------------------------------------ iteration

    def batches(self, loader: DataLoader, num_stage: int) -> Iterator[tuple[int, list[torch.Tensor], torch.Tensor,
                                                                             torch.Tensor]]:
        """(step, stage images, image embedding, text embedding) on the device, under a progress bar."""
        for model in (self.G, *self.D_list):
            model.train()
        if self.processes is not None and batching.our_sampler(loader) is None:
            raise T2IError("training under torchrun needs this package's dataloader.py (each process takes its share "
                           "of every batch; the course's RandomSampler gives each one the whole epoch)")
        self.dataset = getattr(loader, "dataset", None)  # a plain list of batches has none
        first = batching.first_step(loader)
        self.steps_in_epoch = batching.steps_per_epoch(loader)
        progress = tqdm(loader, desc=f"epoch {self.epoch}", total=self.steps_in_epoch, initial=first,
                        dynamic_ncols=True, disable=not self.writes)
        self.progress = progress
        for step, batch in enumerate(progress, start=first):
            images, img_feature, txt_feature = batching.batch_to_device(batch, num_stage, self.device,
                                                                        self.channels_last)
            if txt_feature.shape[0] < 2:  # the course's loader can end an epoch on one image; BatchNorm needs two
                continue
            self.step = step
            self.components = {}
            if self.processes is not None:
                self.processes.start_batch(batching.global_batch_size(loader, step))
            yield step, images, img_feature, txt_feature
        progress.close()

    def autocast(self) -> torch.autocast:
        return self.precision.autocast()

    def global_noise(self) -> contextlib.AbstractContextManager:
        """Under torchrun, the generator's noise is this process's rows of the global batch's (t2i/distributed.py)."""
        return self.processes.global_noise() if self.processes is not None else contextlib.nullcontext()

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment (--diffaugment) of a discriminator's input; the identity when off."""
        return diff_augment(images, self.augment_policy) if self.augment_policy else images

    def clip_loss_min_size(self, fake_images: list[torch.Tensor]) -> int:
        """The smallest image size that gets L_ConG: 256 px as in the course, or the largest stage whatever its
        size with --clip_loss_any_size."""
        return fake_images[-1].shape[-1] if self.clip_loss_any_size else 256

    def log(self, step_name: str, stage: int | None) -> dict:
        """A dict for a loss function to put its components in; they are logged as `D/name_stage` columns."""
        parts: dict[str, torch.Tensor] = {}
        self.components[f"{step_name}/{stage}"] = parts
        return parts

    @contextlib.contextmanager
    def frozen(self, models: list[nn.Module]) -> Iterator[None]:
        """No weight gradients for `models` (the discriminators in the generator step): less memory and work."""
        for model in models:
            model.requires_grad_(False)
        try:
            yield
        finally:
            for model in models:
                model.requires_grad_(True)

    def begin_step(self) -> None:
        self.guard.save()

    def last_clean(self) -> str:
        """'epoch K in DIR': the newest epoch whose files are all finite, here or in the folder resumed from."""
        if not self.files:
            return "none"
        for folder in dict.fromkeys([self.args.checkpoint_path, self.args.resume_checkpoint_path]):
            if folder and os.path.isdir(folder):
                clean = checkpoints.last_clean_epoch(folder, len(self.D_list))
                if clean is not None:
                    return f"epoch {clean} in {folder}"
        return "none (start afresh)"

    def remedies(self) -> str:
        """What can make losses non-finite in this run, as advice (only what applies)."""
        advice = ["check the data (a NaN or empty embedding in the zip?)"]
        if self.precision.autocast_dtype is not None:
            advice.append("resume with --no-amp (an fp16/bf16 overflow)")
        if self.args.g_lr or self.args.d_lr:
            advice.append("resume with a lower --g_lr / --d_lr")
        else:
            advice.append(f"resume with a lower --learning_rate than {self.args.learning_rate:g}")
        return "Then " + ", or ".join(advice)

    # A non-finite loss skips its step on the device (precision.step_optimizers); the host reads once an iteration,
    # after the generator's step, whether the iteration was taken (StepGuard.restore_unless).

    def _update(self, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                also_required: torch.Tensor | None = None) -> torch.Tensor:
        """One step of `optimizers`, skipped on the device unless the loss is finite (and `also_required`); whether
        it was taken. Under torchrun every process runs its backward (synchronised BatchNorm's is collective) and
        the gradients' all_reduce tells them all whether any loss was not finite; `loss` then holds the global
        batch's loss."""
        if self.processes is not None:
            return self.processes.step_optimizers(loss, optimizers, scaler, also_required)
        return step_optimizers(loss, optimizers, scaler, also_required=also_required)

    def update_discriminators(self, d_loss: torch.Tensor, optim_d_lst: list[torch.optim.Optimizer]) -> None:
        """One step of every discriminator's optimizer, skipped when the loss is not finite (and then the
        generator's step of this iteration too)."""
        self.d_loss = d_loss
        self.d_taken = self._update(d_loss, optim_d_lst, self.precision.scaler_d)

    def update_generator(self, g_loss: torch.Tensor, optim_g: torch.optim.Optimizer) -> bool:
        """One generator step and the EMA update, taken when both of this iteration's losses are finite; otherwise
        neither happens and the whole iteration is undone, the discriminators' step included (t2i/nonfinite.py).
        Whether it was taken."""
        taken = self._update(g_loss, [optim_g], self.precision.scaler_g, also_required=self.d_taken)
        if not self.guard.restore_unless(taken):
            self._skip(g_loss)
            return False
        if self.ema is not None:
            self.ema.update(self.G, self.num_updates)
        self.num_updates += 1
        self.bad_in_a_row = 0
        return True

    def _skip(self, g_loss: torch.Tensor) -> None:
        """Count and report a skipped iteration; stop after --max_bad_steps in a row."""
        what, loss = ("discriminator", self.d_loss) if not bool(self.d_taken) else ("generator", g_loss)
        self.skipped += 1
        self.bad_in_a_row += 1
        tqdm.write(f"Warning: non-finite {what} loss ({float(loss.detach())}) at epoch {self.epoch} step "
                   f"{self.step}; the step was skipped and changed nothing")
        if self.bad_in_a_row >= self.args.max_bad_steps:
            raise T2IError(f"{self.bad_in_a_row} non-finite losses in a row at epoch {self.epoch} step {self.step}; "
                           f"training stopped. Last clean checkpoint: {self.last_clean()}. {self.remedies()}")

    def report(self, step: int, d_loss: torch.Tensor, g_loss: torch.Tensor) -> None:
        """Losses to the progress bar and the loss log (the only place losses are read back to the host)."""
        names = ["d_loss", "g_loss"]
        values = [d_loss.detach().float(), g_loss.detach().float()]
        for key, parts in self.components.items():
            step_name, stage = key.split("/")
            for name, value in parts.items():
                names.append(f"{step_name}/{name}" + (f"_{stage}" if stage != "None" else ""))
                values.append(value.detach().float())
        values = torch.stack(values)
        if self.processes is not None:  # the components are this process's; the log shows the global batch's
            values = self.processes.global_values(values)
        losses = dict(zip(names, values.tolist()))
        self.progress.set_postfix(d_loss=f"{losses['d_loss']:.3f}", g_loss=f"{losses['g_loss']:.3f}")
        if self.loss_log is not None:
            self.loss_log.add(self.epoch, step, time.time() - self.epoch_started, losses)

    def after_step(self, step: int) -> None:
        """A mid-epoch snapshot every --save_every_steps iterations (not after the last one: the epoch's files
        follow at once)."""
        every = self.args.save_every_steps
        if self.files and every and (step + 1) % every == 0 and step + 1 < self.steps_in_epoch:
            self.save_state(os.path.join(self.args.checkpoint_path, checkpoints.MID_EPOCH_FILE), self.epoch,
                            step + 1, with_weights=True)

    # ---------------------------------------------------------------------------------------------- state

    def saved_generator(self) -> nn.Module:
        """The generator whose weights become epoch_N_Gen.pt: the EMA when enabled, with BatchNorm statistics
        measured through the EMA itself (once per state of the weights; t2i/ema.py says why)."""
        if self.ema is None:
            return self.G
        if self.ema_statistics_at != self.num_updates and self.dataset is not None:
            # A private random stream (the caption pick and the CA's noise draw from the global one), so that
            # training's random numbers, and an exact resume, are untouched.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(BATCHNORM_SEED)
                recompute_batchnorm(self.ema.model, self.batchnorm_batches())
            self.ema_statistics_at = self.num_updates
        return self.ema.model

    def batchnorm_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """BATCHNORM_BATCHES batches of (caption embedding, noise) as training draws them: random training
        images, one of each image's captions, N(0, I) noise; in fp32, as the graders generate."""
        size = min(self.args.batch_size, len(self.dataset))
        batches = []
        for _ in range(BATCHNORM_BATCHES):
            indices = torch.randperm(len(self.dataset))[:size].tolist()
            text = torch.stack([torch.as_tensor(self.dataset[index][2]) for index in indices]).float()
            noise = torch.randn(size, self.args.noise_dim)
            # Our ZipDataset leaves non-finite embeddings out; the course's loader cannot, and one NaN caption here
            # would make every statistic NaN.
            finite = torch.isfinite(text).all(dim=1)
            if int(finite.sum()) >= 2:
                batches.append((text[finite].to(self.device), noise[finite].to(self.device)))
        return batches

    def state_dict(self) -> dict:
        """What resuming needs beyond the contract's weight files."""
        return {
            "optim_g": self.optim_g.state_dict(),
            "optim_d": [optim.state_dict() for optim in self.optim_d_list],
            "precision": self.precision.state_dict(),
            "raw_generator": self.G.state_dict() if self.ema is not None else None,
            "num_updates": self.num_updates,
        }

    def save_state(self, path: str, epoch: int, step: int, with_weights: bool) -> None:
        """The resume state: position, optimizers, scalers, RNG states (and, for a snapshot, the weights), and the
        number of processes. Refused, loudly, when any of it holds NaN or Inf: no file of a diverged run is ever
        written. Under torchrun every process calls it (their RNG states are gathered); process 0 writes."""
        rng = checkpoints.rng_states()
        processes = self.processes.state_dict(rng) if self.processes is not None else None  # every process joins
        state = {"epoch": epoch, "step": step, "trainer": self.state_dict(), "rng": rng,
                 "world_size": distributed.world_size()}
        if processes is not None:
            state["processes"] = processes
        if with_weights:
            state["generator"] = self.saved_generator().state_dict()
            state["discriminators"] = [D.state_dict() for D in self.D_list]
        bad = nonfinite_tensors(state)
        if bad:  # the same on every process: their weights are the same
            raise T2IError(f"{path}: not written, {len(bad)} tensors hold NaN or Inf (e.g. {bad[0]}) at epoch "
                           f"{self.epoch} step {self.step}; training stopped. Last clean checkpoint: "
                           f"{self.last_clean()}. {self.remedies()}")
        if self.writes:
            run_lock.check_held(self.args.checkpoint_path)  # another run took the folder over: stop before mixing
            atomic_save(state, path)

    def restore(self, resume: ResumePoint) -> None:
        """Continue exactly: the raw generator, optimizers, scalers, step count and RNG states, when saved.
        The weights themselves are already loaded (`load_checkpoint` or the snapshot)."""
        if self.ema is not None:  # the saved generator is the average: the raw one starts from it unless saved
            self.ema.model.load_state_dict(self.G.state_dict())
        state = resume.state
        if state is None:
            print(f"Warning: {resume.source} has weights only (no optimizer state); Adam starts afresh")
            return
        trainer = state["trainer"]
        self.optim_g.load_state_dict(trainer["optim_g"])
        for optim, optim_state in zip(self.optim_d_list, trainer["optim_d"]):
            optim.load_state_dict(optim_state)
        self.precision.load_state_dict(trainer["precision"])
        if self.ema is not None and trainer["raw_generator"] is not None:
            self.G.load_state_dict(trainer["raw_generator"])
        self.num_updates = trainer["num_updates"]
        saved_world, world = state.get("world_size", 1), distributed.world_size()
        if saved_world == world:
            rng = state["rng"] if self.processes is None else self.processes.load_state_dict(state["processes"])
            checkpoints.set_rng_states(rng)
        else:  # each process keeps its fresh random streams
            print(f"{resume.source} was made by {saved_world} process(es) and this run has {world}: it continues "
                  f"with a global batch of {self.args.batch_size * world}, not as the run would have gone on")

    # -------------------------------------------------------------------------------------- run and epochs

    def begin(self, resume: ResumePoint | None, clip_identity: dict | None) -> None:
        """The folders' bookkeeping, once the input is known to be good: stale temporary files go, the option
        changes since the resumed run (checked by find_resume_point) are printed, the options are written to
        run_options.json, the loss log opens. Only process 0 writes."""
        if not self.writes:
            return
        folder = self.args.checkpoint_path
        for stale_folder in dict.fromkeys([folder, self.args.result_path]):
            for path in checkpoints.remove_stale_files(stale_folder):
                print(f"Removed {path}, left by an interrupted save")
        for change in resume.changes if resume is not None else []:
            print(f"Changed since the resumed run: {change}")
        record = {"options": options.saved_form(self.args), "clip": clip_identity}
        atomic_write_text(os.path.join(folder, checkpoints.RUN_OPTIONS_FILE), json.dumps(record, indent=2) + "\n")
        log_path = os.path.join(folder, checkpoints.LOSS_LOG_FILE)
        self.loss_log = LossLog(log_path, resume.epoch if resume else None, resume.step if resume else 0)

    def start_epoch(self, epoch: int, loader: DataLoader, resume: ResumePoint | None) -> None:
        self.epoch = epoch
        self.epoch_started = time.time()
        start_step = resume.step if resume is not None and epoch == resume.epoch else 0
        if not batching.set_position(loader, epoch, start_step) and start_step:
            raise T2IError("a mid-epoch snapshot needs this package's dataloader.py (the course's RandomSampler "
                           "cannot skip the batches already seen); resume from a complete epoch instead")

    def save_epoch_state(self, epoch: int) -> None:
        """Epoch `epoch` is over: refuse weights that hold NaN or Inf, then write its resume state
        (`epoch_N_state.pt`). Called before the weight files are saved, the generator last, so an epoch whose
        generator file exists is complete and resumes exactly."""
        self.check_finite(epoch)
        self.save_state(checkpoints.state_file(self.args.checkpoint_path, epoch), epoch + 1, 0, with_weights=False)

    def check_finite(self, epoch: int) -> None:
        """Refuse to save weights that hold NaN or Inf."""
        models = [("generator", self.saved_generator())]
        models += [(f"discriminator {i}", D) for i, D in enumerate(self.D_list)]
        if self.ema is not None:
            models.append(("raw generator", self.G))
        for name, model in models:
            bad = nonfinite_tensors(model.state_dict())
            if bad:
                raise T2IError(f"epoch {epoch}: the {name} holds NaN or Inf ({bad[0]}, ...), so the epoch was not "
                               f"saved; training stopped. Last clean checkpoint: {self.last_clean()}. "
                               f"{self.remedies()}")

    def evaluate_epoch(self, evaluator: Callable[[nn.Module, str], dict] | None, epoch: int) -> dict | None:
        """--eval_every's figures of the saved generator after `epoch` (None when not due): a report (JSON and a
        grid PNG) in --result_path and one printed line."""
        if evaluator is None or (epoch + 1) % self.args.eval_every:
            return None
        report = os.path.join(self.args.result_path, f"eval_epoch_{epoch}")
        figures = evaluator(self.saved_generator(), report + ".png")
        write_report(report + ".json", figures)
        print(f"Epoch {epoch} evaluation: {summary_line(figures)}")
        return figures

    def end_epoch(self, epoch: int, d_loss: float, g_loss: float, seconds: float, figures: dict | None) -> None:
        """After the epoch's files: its row in the loss log, the loss curve, and the cleanup. Under torchrun the
        processes wait here for process 0's files, so none goes on while an epoch could still fail to be saved."""
        if self.processes is not None:
            self.processes.barrier()
        if not self.writes:
            return
        self.loss_log.add(epoch, "end", seconds, {"d_loss": d_loss, "g_loss": g_loss}, figures)
        plots.plot_loss_curve(self.loss_log.path, os.path.join(self.args.result_path, "loss_curve.png"))
        mid_path = os.path.join(self.args.checkpoint_path, checkpoints.MID_EPOCH_FILE)
        remove_file(mid_path)  # superseded by the complete epoch
        checkpoints.prune_epochs(self.args.checkpoint_path, self.args.keep_last, len(self.D_list))

    def summary(self, start_epoch: int) -> str:
        epochs_run = max(self.args.num_epochs - start_epoch, 0)
        return (f"Done: {epochs_run} epoch(s) in {time.time() - self.run_started:.0f}s, {self.num_updates} "
                f"updates, {self.skipped} skipped step(s); checkpoints in {self.args.checkpoint_path}, samples in "
                f"{self.args.result_path}")


def build_training(args: Namespace, device: torch.device, files: bool = False
                   ) -> tuple[Generator, list[Discriminator], torch.optim.Optimizer, list[torch.optim.Optimizer],
                              TrainingRun]:
    """The models, optimizers and run as train() builds them (in the skeleton's own lines there), for tools that
    call train_step themselves: the train-step benchmark and the tests."""
    G = Generator(args.clip_embedding_dim, args.projection_dim, args.noise_dim, args.g_in_chans, 3, args.num_stage,
                  device).to(device)
    G.apply(weight_init)
    init_conditioning_mu(G, args.ca_init_std)
    D_lst = [Discriminator(args.projection_dim, 3, args.d_in_chans, 1, args.clip_embedding_dim, stage, device)
             .to(device) for stage in range(args.num_stage)]
    for D in D_lst:
        D.apply(weight_init)
    optim_g = torch.optim.Adam(G.parameters(), lr=args.g_lr or args.learning_rate, betas=(0.5, 0.999),
                               **adam_options(device))
    optim_d_lst = [torch.optim.Adam(D.parameters(), lr=args.d_lr or args.learning_rate, betas=(0.5, 0.999),
                                    **adam_options(device)) for D in D_lst]
    return G, D_lst, optim_g, optim_d_lst, TrainingRun(args, device, G, D_lst, optim_g, optim_d_lst, files=files)
