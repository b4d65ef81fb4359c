"""GALIP's part of a training run (`--arch galip`, or `network.py` being `network_galip.py`): its models, optimizers
and epoch, which `train.train`, the one training driver, runs.

The same run as the course model's: the checks, `hyperparameter.pt`, `epoch_N_Gen.pt` / `epoch_N_Dis_i.pt`, the
resume state, mixed precision, the EMA generator, non-finite steps that change nothing, the loss log and the
per-epoch sample grid all come from the driver. What differs is the model (`network_galip`), the optimizers (the
paper's Adam, betas (0, 0.9), lr 1e-4 for G and 4e-4 for D, the --g_lr / --d_lr defaults of `--arch galip`) and
the step (`train_step` below, losses in `galip_losses`):

    D step: L_D = hinge(D(CLIP(x), s)) + [hinge(-D(CLIP(G(z, s)), s)) + hinge(-D(CLIP(x), s'))] / 2 + MA-GP
    G step: L_G = -D(CLIP(G(z, s)), s) - 4 cos(CLIP_embedding(G(z, s)), s)

s is the caption's CLIP embedding (with --language_free LAFITE's perturbed image embedding), s' another image's
(--no-mismatch drops that term), CLIP the frozen image encoder whose tokens after blocks 2, 5 and 9 D reads.
DiffAugment (--diffaugment) applies to the images CLIP sees in both steps. The course's loss flags
(--use_uncond_loss, --use_contrastive_loss) and the StackGAN losses' weights (--gamma, --lam, --beta, --tau)
do not apply: GALIP's objective is its own.

Only stage 0's discriminator has weights (the later ones are placeholders, network_galip), so there is one
discriminator optimizer.
"""
from __future__ import annotations

from argparse import Namespace

import torch
import torch.nn as nn
from torch.optim import Adam

import galip_losses as gl
import network_galip
from t2i.data.batching import steps_per_epoch
from t2i.errors import T2IError
from t2i.training import options
from t2i.training.ema import GeneratorEMA
from t2i.training.log import TrainingLog
from t2i.training.precision import adam_options, step_if_finite
from t2i.training.state import RunState
from t2i.training.step import StepSettings, frozen
from train import RunHelpers, pseudo_text_feature

BETAS = (0.0, 0.9)  # GALIP's (and DF-GAN's) Adam betas
G_OUT_CHANS, D_OUT_CHANS = 3, 1


def clip_token_width(clip_model: nn.Module) -> int:
    """The width of the CLIP image encoder's tokens: what D reads (d_in_chans)."""
    return clip_model.visual.conv1.out_channels


def fit_clip_width(args: Namespace, clip_model: nn.Module) -> None:
    """--d_in_chans is the CLIP's token width: taken from the CLIP when not given, refused when given otherwise."""
    width = clip_token_width(clip_model)
    if args.d_in_chans == width:
        return
    if "d_in_chans" in getattr(args, options.EXPLICIT, ()):
        raise T2IError(f"--d_in_chans {args.d_in_chans}: with --arch galip it is the width of --clip_model's image "
                       f"tokens, {width}; leave it out or give {width}")
    args.d_in_chans = width


def train_step(train_loader, noise_dim: int, device: torch.device, model_G: nn.Module, model_D_lst: list[nn.Module],
               optim_g: torch.optim.Optimizer, optim_d_lst: list[torch.optim.Optimizer], clip_model: nn.Module,
               num_stage: int, report_interval: int, *, language_free: bool = False, xi: float = 0.1,
               step: StepSettings, log: TrainingLog, ema: GeneratorEMA | None = None,
               state: RunState | None = None) -> tuple[float, float]:
    """One epoch of GALIP: the mean D and G losses of its steps."""
    model_D = model_D_lst[0]
    steps_in_epoch = steps_per_epoch(train_loader) if state is not None else 0
    model_G.train()
    for D in model_D_lst:
        D.train()
    d_loss_train, g_loss_train, num_steps = 0.0, 0.0, 0
    for iter, real_imgs, img_feature, txt_feature in step.batches(train_loader, num_stage, log):
        if language_free:  # LAFITE's pseudo text feature, as in train.train_step (Problem 4-(f))
            txt_feature = pseudo_text_feature(img_feature, xi)
        batch_size = txt_feature.shape[0]
        step.guard.save()  # a non-finite loss skips the iteration and changes nothing

        # D step. The fakes' CLIP features keep their graph into G: the G step below reuses them.
        with step.autocast():
            noise, _ = step.draw_noise(batch_size, noise_dim)  # torchrun: this process's rows of the global draw
            fake_image = model_G(txt_feature, noise)[0][-1]
            with torch.no_grad():
                real_layers, _ = gl.clip_image_features(clip_model, step.augment(real_imgs[-1]), with_embedding=False)
            fake_layers, fake_embedding = gl.clip_image_features(clip_model, step.augment(fake_image))
            d_loss, parts = gl.discriminator_loss(model_D, real_layers, fake_layers, txt_feature,
                                                  scaler=step.scaler_d, mismatch=step.mismatch)
        log.components("D", 0).update(parts)
        for optim_d in optim_d_lst:
            optim_d.zero_grad(set_to_none=True)
        step.scaled(d_loss, step.scaler_d).backward()
        d_taken = step_if_finite(optim_d_lst, step.scaler_d, d_loss, processes=step.processes)

        # G step, judged by the updated D.
        with frozen(model_D_lst), step.autocast():
            g_loss, parts = gl.generator_loss(model_D, fake_layers, fake_embedding, txt_feature)
        log.components("G", 0).update(parts)
        optim_g.zero_grad(set_to_none=True)
        step.scaled(g_loss, step.scaler_g).backward()
        taken = step_if_finite([optim_g], step.scaler_g, g_loss, also_required=d_taken,
                               processes=step.processes)
        if not step.guard.restore_unless(taken):  # the whole iteration undone, D's step included
            what, loss = ("discriminator", d_loss) if not bool(d_taken) else ("generator", g_loss)
            step.count_skip(what, loss, log.epoch, iter, state.advice if state is not None else lambda: "")
            continue
        if ema is not None:
            ema.update(model_G, step.num_updates)
        step.count_update()
        d_loss_train += d_loss.detach()
        g_loss_train += g_loss.detach()
        num_steps += 1
        if iter % report_interval == 0:
            log.report(iter, d_loss, g_loss)
        if state is not None:
            state.after_step(iter, steps_in_epoch)

    d_loss_train = float(d_loss_train) / num_steps if num_steps else float("nan")
    g_loss_train = float(g_loss_train) / num_steps if num_steps else float("nan")
    return d_loss_train, g_loss_train


class GALIP:
    """GALIP as the training driver (`train.train`) uses it, like train.CourseModel for the course's model."""

    g_out_chans, d_out_chans = G_OUT_CHANS, D_OUT_CHANS

    def __init__(self, args: Namespace):
        self.args = args

    @property
    def g_in_chans(self) -> int:
        return self.args.g_in_chans

    @property
    def d_in_chans(self) -> int:
        return self.args.d_in_chans

    def needs_clip(self) -> bool:
        """D reads CLIP's tokens in every step."""
        return True

    def fit_to_clip(self, clip_model: nn.Module) -> None:
        """D's width is the CLIP's token width (checked on resume, so set before the resume point is found)."""
        fit_clip_width(self.args, clip_model)

    def build(self, device: torch.device) -> tuple[nn.Module, list[nn.Module], torch.optim.Optimizer,
                                                   list[torch.optim.Optimizer]]:
        """G, the per-stage discriminators (stage 0 alone has weights) and their optimizers, initialised."""
        args = self.args
        G = network_galip.Generator(args.clip_embedding_dim, args.projection_dim, args.noise_dim, args.g_in_chans,
                                    G_OUT_CHANS, args.num_stage, device).to(device)
        D_lst = [network_galip.Discriminator(args.projection_dim, G_OUT_CHANS, args.d_in_chans, D_OUT_CHANS,
                                             args.clip_embedding_dim, stage, device).to(device)
                 for stage in range(args.num_stage)]
        for model in (G, *D_lst):
            model.apply(network_galip.weight_init)
        optim_g = Adam(G.parameters(), lr=args.g_lr or args.learning_rate, betas=BETAS, **adam_options(device))
        optim_d_lst = [Adam(D_lst[0].parameters(), lr=args.d_lr or args.learning_rate, betas=BETAS,
                            **adam_options(device))]
        return G, D_lst, optim_g, optim_d_lst

    def train_epoch(self, train_loader, G: nn.Module, D_lst: list[nn.Module], optim_g: torch.optim.Optimizer,
                    optim_d_lst: list[torch.optim.Optimizer], clip_model: nn.Module, device: torch.device,
                    helpers: RunHelpers) -> tuple[float, float]:
        args = self.args
        return train_step(train_loader, args.noise_dim, device, G, D_lst, optim_g, optim_d_lst, clip_model,
                          args.num_stage, args.report_interval, language_free=args.language_free, xi=args.xi,
                          **helpers._asdict())
