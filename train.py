"""Training: the guideline's losses and the loop, top to bottom.

One iteration:
  1. G runs once: fake images at every stage, and mu / log_sigma of conditioning augmentation.
  2. D step: each discriminator's trunk runs once on the real batch and once on the detached fake batch;
     its heads share those features. L'_D = L_D + gamma * L_ConD, one backward for all stages.
  3. G step: the discriminators (frozen) score the same fake images, CLIP scores the largest stage.
     L'_G = L_G + gamma * L_ConD + lambda * L_ConG + beta * L_CA.

`train(args)` also runs with the course's own main.py, whose Namespace holds only the course flags: every
other option is read through `option(args, name)` with the defaults in OPTION_DEFAULTS.
"""
from __future__ import annotations

import copy
import csv
import os
import time
from argparse import Namespace
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

import checkpoints
import clip_utils
import plots
from augment import diff_augment, parse_policy
from image_ops import clip_view, stage_images_from_uint8
from evaluate import Evaluator, load_test_dataset, summary_line, write_report
from metrics import EvaluationError
from network import (Discriminator, DiscriminatorLogits, Generator, check_num_stage, init_conditioning_mu,
                     weight_init)
from read_dataset import ZipDataset
from checkpoints import atomic_save
from train_utils import (KL_divergence, clip_preprocess, denormalize_image, gather_all, normalize, save_hyp,
                         save_model)

# Options beyond the course's flags, with their defaults (main.py builds its parser from these too).
OPTION_DEFAULTS = {
    "clip_model": "ViT-B/32",   # CLIP name, or a local state-dict file
    "g_in_chans": 1024,         # Ng
    "d_in_chans": 64,           # Nd
    "device": None,             # None: cuda if available, else cpu
    "num_workers": 0,
    "amp": None,                # None: on for CUDA (fp16 + gradient scaling), off on CPU (True there: bf16)
    "gamma": 5.0,               # weight of L_ConD
    "lam": 10.0,                # weight of L_ConG
    "beta": 1.0,                # weight of L_CA (KL)
    "ca_init_std": 3.0,         # init std of the CA weights that give mu (0.02: weight_init's, the course's)
    "tau": 0.5,                 # contrastive temperature
    "language_free": False,     # LAFITE fixed perturbations of the image embedding replace captions
    "xi": 0.1,                  # perturbation size for language-free training
    "g_lr": None,               # None: --learning_rate
    "d_lr": None,               # None: --learning_rate
    "ema": True,                # save an exponential moving average of G as epoch_N_Gen.pt
    "ema_decay": 0.999,
    "diffaugment": "",          # e.g. "color,translation,cutout"
    "mismatch": True,           # real image + another caption's mu, labelled fake, for the conditional head
    "detach_condition": False,  # G's step feeds D's conditional heads mu.detach() (off: the course's graph)
    "save_every_steps": 0,      # mid-epoch snapshots (0: off)
    "keep_last": 0,             # keep only this many newest epochs (0: keep all)
    "max_bad_steps": 5,         # consecutive non-finite losses before training stops
    "overwrite": False,         # allow a fresh run into a folder that already holds epochs
    "eval_every": 0,            # run evaluate.evaluate_generator every K epochs (0: off)
    "eval_data": None,          # preprocessed test zip for that evaluation
    "eval_samples": 1000,
    "inception_weights": None,
}
SEED = 0  # the course fixes the seed at 0: data order and evaluation draw from it
SAMPLE_ROWS, SAMPLE_COLS = 8, 4  # the per-epoch grid: 8 fixed captions x 4 fixed noises (+ the real image)
SAMPLE_SEED = 1234
EVAL_FIELDS = ["fid", "kid_mean", "is_mean", "clip_score"]  # evaluation figures logged with the losses


class TrainingError(Exception):
    """Bad input or a diverged run; the message is one line that says what to do."""


def option(args: Namespace, name: str):
    value = getattr(args, name, None)
    return OPTION_DEFAULTS[name] if value is None else value


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------

def bce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE of sigmoid(logits) against the label, computed from the logits in fp32 (the stable form)."""
    return F.binary_cross_entropy_with_logits(logits.float(), label)


def contrastive_loss(features: torch.Tensor, txt_embedding: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """-tau * sum_i log( exp(sim(f_i, h_i)/tau) / sum_j exp(sim(f_j, h_i)/tau) ), sim = cosine similarity."""
    logits = normalize(txt_embedding.float()) @ normalize(features.float()).t() / tau  # [text i, image j]
    return -tau * torch.diagonal(torch.log_softmax(logits, dim=1)).sum()


def contrastive_loss_G(fake_image: torch.Tensor, clip_model: nn.Module, txt_embedding: torch.Tensor,
                       device: torch.device | str, tau: float = 0.5) -> torch.Tensor:
    """L_ConG: CLIP image features of the generated images against the text embeddings.

    denormalise -> resize/centre-crop to 224 -> random crop (ratio 0.99) back to 224 -> CLIP-normalise.
    The two resizes run as `image_ops.clip_view` (the same chain as clip_transform + custom_reshape, as
    matmuls). CLIP's weights are frozen; the gradient flows through it into the generator.
    """
    image = clip_preprocess()(clip_view(denormalize_image(fake_image.float())))
    image_features = clip_model.encode_image(image.to(device, clip_utils.clip_dtype(clip_model)))
    return contrastive_loss(image_features, txt_embedding, tau)


def contrastive_loss_D(g_out_align: torch.Tensor, txt_embedding: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """L_ConD: the align head's features f_s against the text embeddings."""
    return contrastive_loss(g_out_align, txt_embedding, tau)


def D_loss(real: DiscriminatorLogits, fake: DiscriminatorLogits, txt_feature: torch.Tensor,
           real_label: torch.Tensor, fake_label: torch.Tensor, use_uncond_loss: bool, use_contrastive_loss: bool,
           gamma: float, tau: float = 0.5, wrong: DiscriminatorLogits | None = None) -> dict[str, torch.Tensor]:
    """One stage's L'_D = L_D + gamma * L_ConD as named components (sum them with gather_all).

    `wrong` (optional): the conditional head on real images with mismatched captions, labelled fake; it
    shares the fake term's weight with the generated images so the loss keeps its scale.
    """
    parts = {"d_real_cond": bce(real.cond, real_label)}
    if wrong is None:
        parts["d_fake_cond"] = bce(fake.cond, fake_label)
    else:
        parts["d_fake_cond"] = 0.5 * bce(fake.cond, fake_label)
        parts["d_wrong_cond"] = 0.5 * bce(wrong.cond, fake_label)
    if use_uncond_loss:
        parts["d_real_uncond"] = bce(real.uncond, real_label)
        parts["d_fake_uncond"] = bce(fake.uncond, fake_label)
    if use_contrastive_loss:  # the course applies it to the real and the fake align outputs
        parts["d_real_contrastive"] = gamma * contrastive_loss_D(real.align, txt_feature, tau)
        parts["d_fake_contrastive"] = gamma * contrastive_loss_D(fake.align, txt_feature, tau)
    return parts


def G_loss(fake: DiscriminatorLogits, txt_feature: torch.Tensor, g_label: torch.Tensor, use_uncond_loss: bool,
           use_contrastive_loss: bool, gamma: float, tau: float = 0.5) -> dict[str, torch.Tensor]:
    """One stage's adversarial part of L'_G: L_G (+ gamma * L_ConD). L_ConG and L_CA are added once."""
    parts = {"g_cond": bce(fake.cond, g_label)}
    if use_uncond_loss:
        parts["g_uncond"] = bce(fake.uncond, g_label)
    if use_contrastive_loss:
        parts["g_d_contrastive"] = gamma * contrastive_loss_D(fake.align, txt_feature, tau)
    return parts


def pseudo_text_features(img_feature: torch.Tensor, xi: float) -> torch.Tensor:
    """LAFITE fixed perturbations: h' = normalize(f + xi * eps * ||f|| / ||eps||), eps ~ N(0, I)."""
    eps = torch.randn_like(img_feature)
    perturbed = img_feature + xi * eps * img_feature.norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True)
    return normalize(perturbed)


# ----------------------------------------------------------------------------------------------------------
# The models and one iteration
# ----------------------------------------------------------------------------------------------------------

class GeneratorEMA:
    """Exponential moving average of G's weights (BatchNorm statistics are copied, not averaged)."""

    def __init__(self, generator: Generator, decay: float):
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, generator: Generator, num_updates: int) -> None:
        # Short warm-up so the average is not dominated by the random initialisation in short runs.
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in generator.parameters()], 1 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), generator.buffers()):
            ema_buffer.copy_(buffer)


@dataclass
class StepResult:
    d_loss: float
    g_loss: float
    parts: dict[str, float]
    skipped: bool


@dataclass
class Trainer:
    """Everything one iteration touches; `step()` is the whole training step."""
    G: Generator
    D_list: list[Discriminator]
    optim_g: torch.optim.Optimizer
    optim_d_list: list[torch.optim.Optimizer]
    clip_model: nn.Module | None
    device: torch.device
    noise_dim: int
    use_uncond_loss: bool
    use_contrastive_loss: bool
    gamma: float
    lam: float
    beta: float
    tau: float
    amp: bool
    language_free: bool = False
    xi: float = 0.1
    augment_policy: tuple[str, ...] = ()
    mismatch: bool = True
    detach_condition: bool = False
    ema: GeneratorEMA | None = None
    num_updates: int = 0
    scaler_d: torch.amp.GradScaler = field(init=False)
    scaler_g: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        scaling = self.amp and self.device.type == "cuda"  # fp16 needs loss scaling; CPU bf16 does not
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=scaling)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=scaling)

    def autocast(self) -> torch.autocast:
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, self.augment_policy) if self.augment_policy else images

    def step(self, real_images: list[torch.Tensor], img_feature: torch.Tensor, txt_feature: torch.Tensor
             ) -> StepResult:
        """One iteration on a batch already on the device (real_images: one [-1, 1] batch per stage)."""
        if self.language_free:
            txt_feature = pseudo_text_features(img_feature, self.xi)
        batch_size = txt_feature.shape[0]
        real_label = torch.ones(batch_size, dtype=torch.float32, device=self.device)
        fake_label = torch.zeros(batch_size, dtype=torch.float32, device=self.device)
        g_label = torch.ones(batch_size, dtype=torch.float32, device=self.device)
        noise = torch.randn(batch_size, self.noise_dim, device=self.device)
        heads = dict(uncond=self.use_uncond_loss, align=self.use_contrastive_loss)

        with self.autocast():
            fake_images, mu, log_sigma = self.G(txt_feature, noise)

        # D step: detached fakes, one trunk pass per image batch, one backward for every stage.
        for D in self.D_list:
            D.requires_grad_(True)
        d_parts: dict[str, torch.Tensor] = {}
        mu_detached = mu.detach()
        with self.autocast():
            for stage, D in enumerate(self.D_list):
                real_features = D.trunk(self.augment(real_images[stage]))
                fake_features = D.trunk(self.augment(fake_images[stage].detach()))
                real_out = D.heads(real_features, mu_detached, **heads)
                fake_out = D.heads(fake_features, mu_detached, **heads)
                wrong_out = (D.heads(real_features, mu_detached.roll(1, dims=0), uncond=False, align=False)
                             if self.mismatch and batch_size > 1 else None)
                stage_parts = D_loss(real_out, fake_out, txt_feature, real_label, fake_label,
                                     self.use_uncond_loss, self.use_contrastive_loss, self.gamma, self.tau,
                                     wrong_out)
                for name, value in stage_parts.items():
                    d_parts[f"{name}_{stage}"] = value
        d_loss = gather_all(d_parts)
        d_finite = bool(torch.isfinite(d_loss))
        if d_finite:
            for optim_d in self.optim_d_list:
                optim_d.zero_grad(set_to_none=True)
            self.scaler_d.scale(d_loss).backward()
            for optim_d in self.optim_d_list:
                self.scaler_d.step(optim_d)
            self.scaler_d.update()

        # G step: frozen discriminators (no weight gradients), the same fake images.
        for D in self.D_list:
            D.requires_grad_(False)
        # With mu attached (the course's graph) G can also satisfy D's conditional heads by moving mu, the
        # condition D judges the image against; detached, only the image can answer. Which trains better depends
        # on lambda (README, "Does the text control the image?").
        condition = mu_detached if self.detach_condition else mu
        g_parts: dict[str, torch.Tensor] = {}
        with self.autocast():
            for stage, D in enumerate(self.D_list):
                fake_out = D.heads(D.trunk(self.augment(fake_images[stage])), condition, **heads)
                for name, value in G_loss(fake_out, txt_feature, g_label, self.use_uncond_loss,
                                          self.use_contrastive_loss, self.gamma, self.tau).items():
                    g_parts[f"{name}_{stage}"] = value
            if self.use_contrastive_loss and self.lam:  # lam 0 skips CLIP's forward and backward
                g_parts["g_clip_contrastive"] = self.lam * contrastive_loss_G(
                    fake_images[-1], self.clip_model, txt_feature, self.device, self.tau)
        g_parts["kl"] = self.beta * KL_divergence(mu.float(), log_sigma.float())
        g_loss = gather_all(g_parts)
        g_finite = bool(torch.isfinite(g_loss))
        if g_finite:
            self.optim_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(g_loss).backward()
            self.scaler_g.step(self.optim_g)
            self.scaler_g.update()
            if self.ema is not None:
                self.ema.update(self.G, self.num_updates)
            self.num_updates += 1

        named = {**d_parts, **g_parts}
        values = torch.stack([d_loss.float(), g_loss.float(), *(v.float() for v in named.values())]).tolist()
        parts = dict(zip(named, values[2:]))
        return StepResult(values[0], values[1], parts, skipped=not (d_finite and g_finite))

    def saved_generator(self) -> Generator:
        """The generator whose weights become epoch_N_Gen.pt: the EMA when enabled."""
        return self.ema.model if self.ema is not None else self.G

    def state_dict(self) -> dict:
        """What resuming needs beyond the contract's weight files."""
        return {
            "optim_g": self.optim_g.state_dict(),
            "optim_d": [optim.state_dict() for optim in self.optim_d_list],
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "raw_generator": self.G.state_dict() if self.ema is not None else None,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optim_g.load_state_dict(state["optim_g"])
        for optim, optim_state in zip(self.optim_d_list, state["optim_d"]):
            optim.load_state_dict(optim_state)
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        if self.ema is not None and state["raw_generator"] is not None:
            self.G.load_state_dict(state["raw_generator"])
        self.num_updates = state["num_updates"]


def resolve_device(args: Namespace) -> torch.device:
    name = option(args, "device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def build_trainer(args: Namespace, device: torch.device, clip_model: nn.Module | None) -> Trainer:
    """Models (initialised as the course does), optimizers and loss settings from the arguments."""
    check_num_stage(args.num_stage)
    g_in_chans, d_in_chans = option(args, "g_in_chans"), option(args, "d_in_chans")
    G = Generator(args.clip_embedding_dim, args.projection_dim, args.noise_dim, g_in_chans, 3, args.num_stage,
                  device)
    D_list = [Discriminator(args.projection_dim, 3, d_in_chans, 1, args.clip_embedding_dim, stage, device)
              for stage in range(args.num_stage)]
    for model in [G, *D_list]:
        model.apply(weight_init)
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
    init_conditioning_mu(G.condition_aug, option(args, "ca_init_std"))
    g_lr = option(args, "g_lr") or args.learning_rate
    d_lr = option(args, "d_lr") or args.learning_rate
    amp = option(args, "amp")
    # One fused kernel per step on CUDA, multi-tensor ops on CPU: not a Python loop over parameters.
    adam = dict(betas=(0.5, 0.999), fused=True) if device.type == "cuda" else dict(betas=(0.5, 0.999), foreach=True)
    return Trainer(
        G=G, D_list=D_list,
        optim_g=torch.optim.Adam(G.parameters(), lr=g_lr, **adam),
        optim_d_list=[torch.optim.Adam(D.parameters(), lr=d_lr, **adam) for D in D_list],
        clip_model=clip_model, device=device, noise_dim=args.noise_dim,
        use_uncond_loss=bool(args.use_uncond_loss), use_contrastive_loss=bool(args.use_contrastive_loss),
        gamma=option(args, "gamma"), lam=option(args, "lam"), beta=option(args, "beta"), tau=option(args, "tau"),
        amp=(device.type == "cuda") if amp is None else bool(amp),
        language_free=bool(option(args, "language_free")), xi=option(args, "xi"),
        augment_policy=parse_policy(option(args, "diffaugment")), mismatch=bool(option(args, "mismatch")),
        detach_condition=bool(option(args, "detach_condition")),
        ema=GeneratorEMA(G, option(args, "ema_decay")) if option(args, "ema") else None,
    )


# ----------------------------------------------------------------------------------------------------------
# Data order that a resumed run can reproduce
# ----------------------------------------------------------------------------------------------------------

class EpochBatchSampler(Sampler[list[int]]):
    """A random order per epoch drawn from (seed, epoch) alone, starting at batch `start_step`.

    A run resumed mid-epoch therefore sees exactly the batches the interrupted run had not seen yet. The
    last batch is kept when it holds at least two images (BatchNorm needs two).
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, epoch: int, start_step: int = 0):
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        batches = [order[i:i + batch_size].tolist() for i in range(0, dataset_size, batch_size)]
        self.batches = [batch for batch in batches if len(batch) >= 2][start_step:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def steps_per_epoch(dataset_size: int, batch_size: int) -> int:
    return dataset_size // batch_size + (dataset_size % batch_size >= 2)


def make_loader(dataset, args: Namespace, epoch: int, start_step: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), args.batch_size, SEED, epoch, start_step),
        num_workers=option(args, "num_workers"),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(SEED * 100_003 + epoch),  # worker seeds, per epoch
        persistent_workers=False,
    )


def batch_to_device(batch, num_stage: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                          torch.Tensor]:
    """Move a batch to the device; a uint8 256 px batch is turned into stage images there (area downsampling
    on the GPU rather than per sample on the CPU)."""
    images, img_feature, txt_feature = batch
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if isinstance(images, torch.Tensor):
        images = stage_images_from_uint8(images.to(device, non_blocking=True), num_stage)
    else:
        images = [image.to(device, non_blocking=True) for image in images]
    images = [image.contiguous(memory_format=memory_format) for image in images]
    return images, img_feature.to(device, non_blocking=True).float(), txt_feature.to(device, non_blocking=True).float()


# ----------------------------------------------------------------------------------------------------------
# train(args)
# ----------------------------------------------------------------------------------------------------------

def load_dataset(args: Namespace) -> ZipDataset:
    if not os.path.isfile(args.train_data):
        raise TrainingError(f"--train_data {args.train_data}: no such file; give the preprocessed train zip")
    try:
        dataset = ZipDataset(args.train_data, args.num_stage)
    except Exception as err:
        raise TrainingError(f"--train_data {args.train_data}: cannot read it as a preprocessed zip ({err})") from None
    embedding_dim = getattr(dataset, "embedding_dim", None) or dataset[0][2].shape[-1]
    if embedding_dim != args.clip_embedding_dim:
        raise TrainingError(f"--train_data {args.train_data} holds {embedding_dim}-d CLIP embeddings but "
                            f"--clip_embedding_dim is {args.clip_embedding_dim}; make them agree")
    if len(dataset) < 2:
        raise TrainingError(f"--train_data {args.train_data}: needs at least 2 images, has {len(dataset)}")
    if hasattr(dataset, "return_uint8"):
        dataset.return_uint8 = True  # our loader's fast path: stage images are made on the device
    return dataset


def load_clip_for_training(args: Namespace, device: torch.device) -> nn.Module | None:
    if not args.use_contrastive_loss:
        return None  # only L_ConG needs CLIP
    try:
        clip_model = clip_utils.load_clip(option(args, "clip_model"), device)
    except Exception as err:
        raise TrainingError(f"--clip_model {option(args, 'clip_model')}: cannot load CLIP ({err})") from None
    if clip_utils.clip_embedding_dim(clip_model) != args.clip_embedding_dim:
        raise TrainingError(f"--clip_model gives {clip_utils.clip_embedding_dim(clip_model)}-d embeddings but "
                            f"--clip_embedding_dim is {args.clip_embedding_dim}")
    return clip_model


@dataclass
class ResumePoint:
    epoch: int       # the epoch to run next
    step: int        # the first batch of that epoch still to run
    state: dict | None
    source: str


def find_resume_point(args: Namespace) -> ResumePoint | None:
    """Where to continue: None for a fresh run. Checks the folder and epoch before anything is written."""
    path, requested = args.resume_checkpoint_path, args.resume_epoch
    if path is None or requested in (-1, "-1"):
        return None
    if not os.path.isdir(path):
        raise TrainingError(f"--resume_checkpoint_path {path}: no such folder")
    epochs = checkpoints.complete_epochs(path, args.num_stage)
    mid_path = os.path.join(path, checkpoints.MID_EPOCH_FILE)
    if requested == "latest":
        mid_state = checkpoints.load_training_state(mid_path) if os.path.isfile(mid_path) else None
        if mid_state is not None and (not epochs or mid_state["epoch"] > epochs[-1]):
            return ResumePoint(mid_state["epoch"], mid_state["step"], mid_state, mid_path)
        if not epochs:
            print(f"No checkpoint in {path} yet: starting from scratch")
            return None
        requested = epochs[-1]
    epoch = int(requested)
    if epoch not in epochs:
        raise TrainingError(f"--resume_epoch {epoch}: {path} has no complete epoch {epoch} "
                            f"(complete epochs: {epochs or 'none'})")
    state_path = checkpoints.state_file(path, epoch)
    state = checkpoints.load_training_state(state_path) if os.path.isfile(state_path) else None
    return ResumePoint(epoch + 1, 0, state, f"epoch {epoch} in {path}")


def restore(trainer: Trainer, args: Namespace, resume: ResumePoint) -> None:
    """Load weights (and, when saved, optimizer, scaler and RNG states) to continue exactly."""
    state = resume.state
    if state is not None and "generator" in state:  # a mid-epoch snapshot carries the weights itself
        trainer.saved_generator().load_state_dict(state["generator"])
        for D, weights in zip(trainer.D_list, state["discriminators"]):
            D.load_state_dict(weights)
    else:
        checkpoints.load_weights(trainer.saved_generator(), trainer.D_list, args.resume_checkpoint_path,
                                 resume.epoch - 1)
    if trainer.ema is not None:  # the raw generator starts from the average unless the state holds it
        trainer.G.load_state_dict(trainer.ema.model.state_dict())
    trainer.G.train()
    for D in trainer.D_list:
        D.train()
    if state is None:
        print(f"Warning: {resume.source} has weights only (no optimizer state); Adam starts fresh")
        return
    trainer.load_state_dict(state["trainer"])
    checkpoints.set_rng_states(state["rng"])


class LossLog:
    """loss_log.csv beside the checkpoints: one row per report interval, and one per epoch (step = 'end') that
    also holds the evaluation figures of the epochs that were evaluated."""

    FIELDS = ["epoch", "step", "d_loss", "g_loss", "seconds", *EVAL_FIELDS]

    def __init__(self, path: str, resume: ResumePoint | None):
        self.path = path
        kept = []
        if resume is not None and os.path.isfile(path):  # drop the rows of the part that will be redone
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if self._before(row, resume)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    @staticmethod
    def _before(row: dict, resume: ResumePoint) -> bool:
        epoch = int(row["epoch"])
        if epoch != resume.epoch:
            return epoch < resume.epoch
        return row["step"] != "end" and int(row["step"]) < resume.step

    def add(self, epoch: int, step: int | str, d_loss: float, g_loss: float, seconds: float,
            figures: dict | None = None) -> None:
        row = {"epoch": epoch, "step": step, "d_loss": f"{d_loss:.6f}", "g_loss": f"{g_loss:.6f}",
               "seconds": f"{seconds:.2f}"}
        row.update({name: figures[name] for name in EVAL_FIELDS if figures and figures.get(name) is not None})
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)


def sample_conditions(dataset, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """Fixed captions for the per-epoch grid: the first caption of the first `count` images, those images
    (from uint8 [count, 3, 256, 256] or [-1, 1] tensors of the largest stage), and the caption texts when the
    zip holds them."""
    count = min(count, len(dataset))
    with torch.random.fork_rng(devices=[]):  # the course's loader picks a caption at random
        torch.manual_seed(SAMPLE_SEED)
        items = [dataset[i] for i in range(count)]
    if hasattr(dataset, "txt_embeddings_of"):
        txt = torch.stack([torch.as_tensor(dataset.txt_embeddings_of(i)[0]) for i in range(count)])
    else:
        txt = torch.stack([item[2] for item in items])
    first = items[0][0]
    if isinstance(first, torch.Tensor):
        real = torch.stack([item[0] for item in items]).float() / 127.5 - 1
    else:
        real = torch.stack([item[0][-1] for item in items])
    texts = [dataset.captions_of(i)[0] for i in range(count)] if hasattr(dataset, "captions_of") else None
    return normalize(txt.float()), real, texts if texts and any(texts) else None


@torch.no_grad()
def save_sample_grid(generator: Generator, txt: torch.Tensor, real: torch.Tensor, texts: list[str] | None,
                     noise_dim: int, path: str, device: torch.device) -> None:
    """Rows: fixed captions (printed under the real image); first column the real image, then SAMPLE_COLS
    fixed noises."""
    was_training = generator.training
    generator.eval()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        torch.manual_seed(SAMPLE_SEED)  # the same noise (and CA samples) every epoch, so epochs compare
        noise = torch.randn(SAMPLE_COLS, txt.shape[0], noise_dim).to(device)
        columns = [generator(txt.to(device), noise[c])[0][-1].float().cpu() for c in range(SAMPLE_COLS)]
    generator.train(was_training)
    size = columns[0].shape[-1]
    real = F.interpolate(real.float(), size=(size, size), mode="area")
    captions = [text if column == 0 else "" for text in texts for column in range(SAMPLE_COLS + 1)] if texts else None
    plots.save_image_grid(torch.stack([real, *columns], dim=1).flatten(0, 1), path, ncol=SAMPLE_COLS + 1,
                          captions=captions)


def save_training_state(path: str, trainer: Trainer, epoch: int, step: int, with_weights: bool) -> None:
    state = {"epoch": epoch, "step": step, "trainer": trainer.state_dict(), "rng": checkpoints.rng_states()}
    if with_weights:
        state["generator"] = trainer.saved_generator().state_dict()
        state["discriminators"] = [D.state_dict() for D in trainer.D_list]
    atomic_save(state, path)


def check_output_folder(args: Namespace, resume: ResumePoint | None) -> None:
    """Refuse to mix a fresh run into a folder that holds another run's epochs, unless --overwrite."""
    existing = checkpoints.complete_epochs(args.checkpoint_path, args.num_stage)
    resuming_here = resume is not None and os.path.abspath(args.resume_checkpoint_path) == os.path.abspath(
        args.checkpoint_path)
    if existing and not resuming_here and not option(args, "overwrite"):
        raise TrainingError(f"--checkpoint_path {args.checkpoint_path} already holds epochs {existing}; resume "
                            f"with --resume_checkpoint_path {args.checkpoint_path} --resume_epoch latest, choose "
                            f"another folder, or pass --overwrite")


def make_evaluator(args: Namespace, clip_model: nn.Module | None, device: torch.device):
    """The test-split evaluator for --eval_every, built once: the test zip, Inception and the real images'
    features are loaded a single time for the whole run."""
    dataset = load_test_dataset(option(args, "eval_data"), args.clip_embedding_dim)
    return Evaluator(dataset, num_samples=option(args, "eval_samples"), batch_size=args.batch_size,
                              device=device, clip_model=clip_model, inception_weights=option(args, "inception_weights"),
                              seed=SEED)


def train(args: Namespace) -> None:
    """Train from `args` (the course's flags plus OPTION_DEFAULTS); one-line error on bad input."""
    try:
        run_training(args)
    except (TrainingError, checkpoints.CheckpointError, EvaluationError) as err:
        raise SystemExit(f"Error: {err}") from None


def validate_options(args: Namespace) -> None:
    try:
        check_num_stage(args.num_stage)
        parse_policy(option(args, "diffaugment"))
    except ValueError as err:
        raise TrainingError(str(err)) from None
    if option(args, "eval_every") and not option(args, "eval_data"):
        raise TrainingError("--eval_every needs --eval_data (a preprocessed test zip)")


def run_training(args: Namespace) -> None:
    device = resolve_device(args)
    validate_options(args)
    # Everything that can be wrong with the input is checked before the first file is written.
    resume = find_resume_point(args)
    dataset = load_dataset(args)
    os.makedirs(args.checkpoint_path, exist_ok=True)
    os.makedirs(args.result_path, exist_ok=True)
    check_output_folder(args, resume)
    clip_model = load_clip_for_training(args, device)
    evaluator = make_evaluator(args, clip_model, device) if option(args, "eval_every") else None
    try:
        trainer = build_trainer(args, device, clip_model)
    except ValueError as err:  # a width the stages cannot halve, for instance
        raise TrainingError(str(err)) from None
    if resume is not None:
        restore(trainer, args, resume)
        print(f"Resuming from {resume.source}: epoch {resume.epoch}, step {resume.step}")
    save_hyp(args, option(args, "g_in_chans"), 3, option(args, "d_in_chans"), 1)

    start_epoch, start_step = (resume.epoch, resume.step) if resume else (0, 0)
    per_epoch = steps_per_epoch(len(dataset), args.batch_size)
    sample_txt, sample_real, sample_texts = sample_conditions(dataset, SAMPLE_ROWS)
    loss_log = LossLog(os.path.join(args.checkpoint_path, "loss_log.csv"), resume)
    save_every, max_bad = option(args, "save_every_steps"), option(args, "max_bad_steps")
    bad_in_a_row, skipped_total, started = 0, 0, time.time()
    last_d = last_g = float("nan")

    for epoch in range(start_epoch, args.num_epochs):
        epoch_started = time.time()
        loader = make_loader(dataset, args, epoch, start_step if epoch == start_epoch else 0, device)
        first_step = per_epoch - len(loader)
        sums, counted = [0.0, 0.0], 0
        progress = tqdm(loader, desc=f"epoch {epoch}", total=per_epoch, initial=first_step, dynamic_ncols=True)
        for step, batch in enumerate(progress, start=first_step):
            result = trainer.step(*batch_to_device(batch, args.num_stage, device))
            if result.skipped:
                skipped_total += 1
                bad_in_a_row += 1
                tqdm.write(f"Warning: non-finite loss at epoch {epoch} step {step} "
                           f"(d_loss {result.d_loss}, g_loss {result.g_loss}); that update was skipped")
                if bad_in_a_row >= max_bad:
                    done = checkpoints.complete_epochs(args.checkpoint_path, args.num_stage)
                    raise TrainingError(f"{bad_in_a_row} non-finite losses in a row at epoch {epoch} step {step}; "
                                        f"training stopped. Last good checkpoint: "
                                        f"{f'epoch {done[-1]} in {args.checkpoint_path}' if done else 'none'}; "
                                        f"resume from it with a lower --learning_rate")
                continue
            bad_in_a_row = 0
            sums[0] += result.d_loss
            sums[1] += result.g_loss
            counted += 1
            last_d, last_g = result.d_loss, result.g_loss
            if step % args.report_interval == 0:
                progress.set_postfix(d_loss=f"{result.d_loss:.3f}", g_loss=f"{result.g_loss:.3f}")
                loss_log.add(epoch, step, result.d_loss, result.g_loss, time.time() - epoch_started)
            if save_every and (step + 1) % save_every == 0 and step + 1 < per_epoch:
                save_training_state(os.path.join(args.checkpoint_path, checkpoints.MID_EPOCH_FILE), trainer,
                                    epoch, step + 1, with_weights=True)
        progress.close()

        seconds = time.time() - epoch_started
        mean_d, mean_g = (sums[0] / counted, sums[1] / counted) if counted else (float("nan"), float("nan"))
        # The resume state first, the generator file last: an epoch counts as complete once its generator file
        # exists, and by then everything an exact resume needs is on disk.
        save_training_state(checkpoints.state_file(args.checkpoint_path, epoch), trainer, epoch + 1, 0,
                            with_weights=False)
        save_model(args, trainer.saved_generator(), trainer.D_list, epoch, args.num_stage)
        save_sample_grid(trainer.saved_generator(), sample_txt, sample_real, sample_texts, args.noise_dim,
                         os.path.join(args.result_path, f"epoch_{epoch}.png"), device)
        figures = {}
        if evaluator is not None and (epoch + 1) % option(args, "eval_every") == 0:
            report = os.path.join(args.result_path, f"eval_epoch_{epoch}")
            figures = evaluator(trainer.saved_generator(), report + ".png")
            write_report(report + ".json", figures)
            tqdm.write(f"Epoch {epoch} evaluation: {summary_line(figures)}")
        loss_log.add(epoch, "end", mean_d, mean_g, seconds, figures)
        plots.plot_loss_curve(loss_log.path, os.path.join(args.result_path, "loss_curve.png"))
        mid_path = os.path.join(args.checkpoint_path, checkpoints.MID_EPOCH_FILE)
        if os.path.isfile(mid_path):
            os.remove(mid_path)  # superseded by the complete epoch
        checkpoints.prune_epochs(args.checkpoint_path, option(args, "keep_last"), args.num_stage)
        tqdm.write(f"Epoch: {epoch} \t d_loss: {mean_d:.4f} \t g_loss: {mean_g:.4f} \t time: {seconds:.1f}s")

    epochs_run = args.num_epochs - start_epoch
    print(f"Done: {max(epochs_run, 0)} epoch(s) in {time.time() - started:.0f}s, last d_loss {last_d:.4f} "
          f"g_loss {last_g:.4f}, {skipped_total} skipped step(s); checkpoints in {args.checkpoint_path}, "
          f"samples in {args.result_path}")
