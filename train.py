"""The course skeleton's train.py, completed: the guideline's losses, one epoch, and the training loop.

Top to bottom as the guideline: the contrastive losses (Problems 4-(c), 4-(d)), one stage's D and G losses (4-(b),
4-(a)), one epoch (`train_step`: 4-(f), 4-(e), then phase 1 with each discriminator's zero_grad / backward / step,
phase 2 with the generator's, phase 3 the report), the course's model as the loop uses it (`CourseModel`), and
`train(args)`, the one training loop of both models (GALIP, Problem 5, brings its part: train_galip.GALIP). Under
the course's own main.py every option beyond its flags takes its default: the guideline's (t2i/training/options.py).

What the skeleton does not have is called where it happens, each from a module with one job (t2i/training/):
`StepSettings` (precision, the non-finite skip, torchrun's global batch, the recipe's switches), `TrainingLog`,
`GeneratorEMA`, `RunState` (exact resume). Where a line the skeleton gives had to change, a comment says why. A step
costs half the course's: one generator forward per iteration, the discriminators' step on detached fakes, each
discriminator's trunk run once per image batch and shared by its heads, frozen discriminators in the G step.
"""
from __future__ import annotations

import contextlib
import os
import time
from argparse import Namespace

import torch
import torch.nn as nn
from PIL import Image
from torch.nn import BCEWithLogitsLoss
from torch.optim import Adam

from dataloader import get_dataloader
from network import Discriminator, Generator, weight_init
from read_dataset import ZipDataset
from t2i import clip_utils
from t2i.data.batching import position_loader, steps_per_epoch
from t2i.data.checks import check_train_dataset, check_training_clips
from t2i.data.images import clip_view
from t2i.errors import T2IError, one_line_errors
from t2i.evaluation.evaluator import evaluate_epoch, make_training_evaluator
from t2i.training import distributed, options
from t2i.training import lock
from t2i.training.ema import GeneratorEMA
from t2i.training.log import TrainingLog
from t2i.training.precision import adam_options, step_if_finite
from t2i.training.resume import check_output_folder, explain_stop, find_resume_point
from t2i.training.samples import sample_conditions, save_sample_grid
from t2i.training.run import RunHelpers, init_conditioning_mu, run_helpers
from t2i.training.state import RunState
from t2i.training.step import StepSettings, frozen
from train_utils import (KL_divergence, clip_preprocess, denormalize_image, gather_all, load_checkpoint, normalize,
                         save_hyp, save_model)

# The course's ZipDataset indexes the zip through PIL.Image.EXTENSION, which stays empty until PIL registers its
# plugins: registered here, at import, since the graders' main.py imports this file before it builds the dataset.
Image.init()


def contrastive_loss(features: torch.Tensor, txt_embedding: torch.Tensor, tau: float) -> torch.Tensor:
    """-tau * sum_i log( exp(sim(f_i, h_i)/tau) / sum_j exp(sim(f_j, h_i)/tau) ), sim the cosine similarity:
    each text should pick its own image out of the batch. Computed in fp32 (exp / tau overflows fp16)."""
    # torchrun hook: the batch is the global one, every process's images and texts (t2i/training/distributed.py).
    features, txt_embedding = distributed.gather_negatives(features, txt_embedding)
    logits = normalize(txt_embedding.float()) @ normalize(features.float()).t() / tau  # [text i, image j]
    return -tau * torch.diagonal(torch.log_softmax(logits, dim=1)).sum()


def contrastive_loss_G(fake_image: torch.Tensor, clip_model: nn.Module, txt_embedding: torch.Tensor,
                       device: torch.device | str, tau: float = 0.5) -> torch.Tensor:
    ################# Problem 4-(c) #################
    # L_ConG: CLIP's image features of the generated images against the texts, through the given chain denormalize
    # -> clip_transform(224) -> custom_reshape -> clip_preprocess, its two resizes as two small matrix products
    # (clip_view, t2i/data/images.py: the same result and crop, a far cheaper backward) into the frozen CLIP.
    image = clip_preprocess()(clip_view(denormalize_image(fake_image.float())))
    image_features = clip_model.encode_image(image.to(device, clip_utils.clip_dtype(clip_model)))
    L_cont = contrastive_loss(image_features, txt_embedding, tau)
    return L_cont


def contrastive_loss_D(g_out_align: torch.Tensor, txt_embedding: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    ################# Problem 4-(d) #################
    # L_ConD: the align head's features f_s against the text embeddings.
    L_cont = contrastive_loss(g_out_align, txt_embedding, tau)
    return L_cont


def D_loss(real_image: torch.Tensor, fake_image: torch.Tensor, model_D: Discriminator, loss_fn: nn.Module,
           use_uncond_loss: bool, use_contrastive_loss: bool, gamma: float, mu: torch.Tensor,
           txt_feature: torch.Tensor, d_fake_label: torch.Tensor, d_real_label: torch.Tensor, *, tau: float = 0.5,
           wrong_mu: torch.Tensor | None = None, augment=None, components: dict | None = None) -> torch.Tensor:
    """One stage's L'_D = L_D + gamma * L_ConD. `wrong_mu` (--mismatch): the conditional head also sees the real
    images with other captions' mu, labelled fake, sharing the fake term's weight with the generated images (the loss
    keeps its scale). `augment`: DiffAugment of D's inputs. `components` receives loss_d_comp for the loss log."""
    ################# Problem 4-(b) #################
    augment = augment or (lambda images: images)
    loss_d_comp = {}
    # Each image batch goes through D's trunk once and its heads share the features (the skeleton calls D once
    # per head); the heads give logits, see loss_fn in train().
    real_features = model_D.trunk(augment(real_image))
    real_uncond, real_cond, real_align = model_D.heads(real_features, mu, uncond=use_uncond_loss,
                                                       align=use_contrastive_loss)
    fake_uncond, fake_cond, fake_align = model_D.heads(model_D.trunk(augment(fake_image)), mu,
                                                       uncond=use_uncond_loss, align=use_contrastive_loss)
    if use_uncond_loss:
        loss_d_comp["d_loss_fake_uncond"] = loss_fn(fake_uncond, d_fake_label)
        loss_d_comp["d_loss_real_uncond"] = loss_fn(real_uncond, d_real_label)
    loss_d_comp["d_loss_real_cond"] = loss_fn(real_cond, d_real_label)
    if wrong_mu is None:
        loss_d_comp["d_loss_fake_cond"] = loss_fn(fake_cond, d_fake_label)
    else:
        _, wrong_cond, _ = model_D.heads(real_features, wrong_mu, uncond=False, align=False)
        loss_d_comp["d_loss_fake_cond"] = 0.5 * loss_fn(fake_cond, d_fake_label)
        loss_d_comp["d_loss_wrong_cond"] = 0.5 * loss_fn(wrong_cond, d_fake_label)
    if use_contrastive_loss:  # the course applies gamma * L_ConD to the real and the fake align outputs
        loss_d_comp["d_loss_fake_cond_contrastive"] = gamma * contrastive_loss_D(fake_align, txt_feature, tau)
        loss_d_comp["d_loss_real_cond_contrastive"] = gamma * contrastive_loss_D(real_align, txt_feature, tau)
    if components is not None:
        components.update(loss_d_comp)
    d_loss = gather_all(loss_d_comp)
    return d_loss


def G_loss(fake_image: torch.Tensor, model_D: Discriminator, loss_fn: nn.Module, use_uncond_loss: bool,
           use_contrastive_loss: bool, clip_model: nn.Module | None, gamma: float, lam: float,
           device: torch.device | str, mu: torch.Tensor, txt_feature: torch.Tensor, g_label: torch.Tensor, *,
           tau: float = 0.5, augment=None, clip_loss_min_size: int = 256, components: dict | None = None
           ) -> torch.Tensor:
    """One stage's part of L'_G: L_G + gamma * L_ConD (+ lambda * L_ConG at 256 px). The KL term is added once,
    in train_step. `clip_loss_min_size`: --clip_loss_any_size lowers it to the largest stage's size."""
    ################# Problem 4-(a) #################
    augment = augment or (lambda images: images)
    loss_g_comp = {}
    uncond, cond, align = model_D.heads(model_D.trunk(augment(fake_image)), mu, uncond=use_uncond_loss,
                                        align=use_contrastive_loss)
    if use_uncond_loss:
        loss_g_comp["g_loss_uncond"] = loss_fn(uncond, g_label)
    loss_g_comp["g_loss_cond"] = loss_fn(cond, g_label)
    if use_contrastive_loss:
        # lam 0 skips CLIP's forward and backward altogether.
        if fake_image.shape[-1] >= clip_loss_min_size and lam:
            loss_g_comp["g_loss_cond_contrastive"] = lam * contrastive_loss_G(fake_image, clip_model, txt_feature,
                                                                              device, tau)
        loss_g_comp["d_loss_cond_contrastive"] = gamma * contrastive_loss_D(align, txt_feature, tau)
    if components is not None:
        components.update(loss_g_comp)
    g_loss = gather_all(loss_g_comp)
    return g_loss


def pseudo_text_feature(img_feature: torch.Tensor, xi: float) -> torch.Tensor:
    """LAFITE's fixed perturbations of the normalised image feature f, for language-free training (Problem 4-(f)):
    h' = normalize(f + xi * eps * ||f|| / ||eps||), eps ~ N(0, I)."""
    eps = torch.randn_like(img_feature)
    return normalize(img_feature + xi * eps * img_feature.norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True))


def train_step(train_loader, noise_dim: int, device: torch.device, model_G: Generator,
               model_D_lst: list[Discriminator], optim_g: torch.optim.Optimizer,
               optim_d_lst: list[torch.optim.Optimizer], loss_fn: nn.Module, num_stage: int, use_uncond_loss: bool,
               use_contrastive_loss: bool, report_interval: int, clip_model: nn.Module | None, gamma: float,
               lam: float, *, tau: float = 0.5, beta: float = 1.0, language_free: bool = False, xi: float = 0.1,
               step: StepSettings | None = None, log: TrainingLog | None = None, ema: GeneratorEMA | None = None,
               state: RunState | None = None) -> tuple[float, float, torch.Tensor]:
    """One epoch: the mean D and G losses of its steps, and the first batch's text features. The guideline's
    hyperparameters are arguments (gamma, lam, tau, beta, xi). Without `step` the epoch runs as the course's code
    would: fp32, nothing switched on; `log`, `ema` (--ema) and `state` (mid-epoch snapshots) are optional."""
    step = step or StepSettings.plain(torch.device(device), model_G, model_D_lst, optim_g, optim_d_lst)
    log = log or TrainingLog()
    steps_in_epoch = steps_per_epoch(train_loader) if state is not None else 0
    model_G.train()
    for model_D in model_D_lst:
        model_D.train()
    d_loss_train, g_loss_train, num_steps = 0.0, 0.0, 0
    save_txt_feature = None
    for iter, real_imgs, img_feature, txt_feature in step.batches(train_loader, num_stage, log):
        if save_txt_feature is None:
            save_txt_feature = txt_feature
        BATCH_SIZE = txt_feature.shape[0]

        ################# Problem 4-(f) #################
        # Language-free training (--language_free): the pseudo text feature replaces the caption's.
        if language_free:
            txt_feature = pseudo_text_feature(img_feature, xi)

        ################# Problem 4-(e) #################
        d_fake_label = torch.zeros(BATCH_SIZE, dtype=torch.float32, device=device)
        d_real_label = torch.ones(BATCH_SIZE, dtype=torch.float32, device=device)
        g_label = torch.ones(BATCH_SIZE, dtype=torch.float32, device=device)

        # A non-finite loss skips the iteration and changes nothing: what it could change is copied first.
        step.guard.save()

        # Phase 1. Optimize Discriminator
        with step.autocast():
            # One generator forward per iteration: phase 2 scores these same images (the skeleton draws anew).
            # torchrun: z and the conditioning augmentation's eps are this process's rows of the global batch's.
            noise, condition_noise = step.draw_noise(BATCH_SIZE, noise_dim, model_G.condition_dim)
            fake_images, mu, log_sigma = model_G(txt_feature, noise, condition_noise)
            # Detached fakes and mu: D's loss does not reach G, so no backward through G and no retain_graph.
            wrong_mu = mu.detach().roll(1, dims=0) if step.mismatch else None
            d_loss = 0
            for i in range(num_stage):
                d_loss = d_loss + D_loss(real_imgs[i], fake_images[i].detach(), model_D_lst[i], loss_fn,
                                         use_uncond_loss, use_contrastive_loss, gamma, mu.detach(), txt_feature,
                                         d_fake_label, d_real_label, tau=tau, wrong_mu=wrong_mu,
                                         augment=step.augment, components=log.components("D", i))
        for optim_d in optim_d_lst:
            optim_d.zero_grad(set_to_none=True)
        step.scaled(d_loss, step.scaler_d).backward()
        # Skipped on the device when d_loss is not finite (and then the generator's step too).
        d_taken = step_if_finite(optim_d_lst, step.scaler_d, d_loss, processes=step.processes)

        # Phase 2. Optimize Generator
        with frozen(model_D_lst), step.autocast():
            # --detach_condition: D judges the image against a detached mu, so only the image can satisfy it.
            condition = mu.detach() if step.detach_condition else mu
            g_loss = 0
            for i in range(num_stage):
                g_loss = g_loss + G_loss(fake_images[i], model_D_lst[i], loss_fn, use_uncond_loss,
                                         use_contrastive_loss, clip_model, gamma, lam, device, condition, txt_feature,
                                         g_label, tau=tau, augment=step.augment,
                                         clip_loss_min_size=step.clip_loss_min_size(fake_images),
                                         components=log.components("G", i))

        # Calculation of L_CA. Do NOT modify. (Its weight is beta, 1.0 in the guideline; in fp32, since
        # exp(2 log_sigma) overflows fp16.)
        aug_loss = KL_divergence(mu.float(), log_sigma.float())
        g_loss += (beta) * aug_loss
        log.components("G", None)["kl"] = aug_loss
        optim_g.zero_grad(set_to_none=True)
        step.scaled(g_loss, step.scaler_g).backward()
        taken = step_if_finite([optim_g], step.scaler_g, g_loss, also_required=d_taken,
                               processes=step.processes)
        # The one point of the iteration where the host reads from the device: was it taken? If not, the
        # discriminators' step, the BatchNorm statistics and the scalers are put back as they were.
        if not step.guard.restore_unless(taken):
            what, loss = ("discriminator", d_loss) if not bool(d_taken) else ("generator", g_loss)
            step.count_skip(what, loss, log.epoch, iter, state.advice if state is not None else lambda: "")
            continue
        if ema is not None:
            ema.update(model_G, step.num_updates)
        step.count_update()
        d_loss_train += d_loss.detach()  # summed on the device: read once, after the epoch
        g_loss_train += g_loss.detach()
        num_steps += 1

        # Phase 3. Report
        if iter % report_interval == 0:
            log.report(iter, d_loss, g_loss)
        if state is not None:
            state.after_step(iter, steps_in_epoch)

    d_loss_train = float(d_loss_train) / num_steps if num_steps else float("nan")
    g_loss_train = float(g_loss_train) / num_steps if num_steps else float("nan")
    return d_loss_train, g_loss_train, save_txt_feature


class CourseModel:
    """The course's StackGAN++ as the training driver (`train` below) uses it: what differs between the models a
    run can train. GALIP brings the same (train_galip.GALIP), as stylegan2-ada's loss objects do."""

    g_out_chans, d_out_chans = 3, 1  # Fixed

    def __init__(self, args: Namespace):
        self.args = args
        self.g_in_chans = args.g_in_chans  # Ng: 1024 in the course (--g_in_chans)
        self.d_in_chans = args.d_in_chans  # Nd: 64 in the course (--d_in_chans)
        # Logits and BCEWithLogitsLoss rather than the skeleton's sigmoid outputs and BCELoss: autocast refuses
        # BCELoss in fp16, and the logits form is the numerically stable one.
        self.loss_fn = BCEWithLogitsLoss()

    def needs_clip(self) -> bool:
        """Only L_ConG needs CLIP (the skeleton: clip.load("ViT-B/32"))."""
        return self.args.use_contrastive_loss

    def fit_to_clip(self, clip_model: nn.Module) -> None:
        """Nothing of this model depends on the CLIP beyond its embedding size (checked by `train`)."""

    def build(self, device: torch.device) -> tuple[Generator, list[Discriminator], torch.optim.Optimizer,
                                                   list[torch.optim.Optimizer]]:
        """The models with the course's weight_init and their Adam optimizers, as the skeleton's train() builds them."""
        args = self.args
        G = Generator(args.clip_embedding_dim, args.projection_dim, args.noise_dim, self.g_in_chans, self.g_out_chans,
                      args.num_stage, device).to(device)
        G.apply(weight_init)
        if args.ca_init_std is not None:
            init_conditioning_mu(G, args.ca_init_std)
        D_lst = [Discriminator(args.projection_dim, self.g_out_chans, self.d_in_chans, self.d_out_chans,
                               args.clip_embedding_dim, curr_stage, device).to(device)
                 for curr_stage in range(args.num_stage)]
        for D in D_lst:
            D.apply(weight_init)
        optim_g = Adam(G.parameters(), lr=args.g_lr or args.learning_rate, betas=(0.5, 0.999), **adam_options(device))
        optim_d_lst = [Adam(D_lst[curr_stage].parameters(), lr=args.d_lr or args.learning_rate, betas=(0.5, 0.999),
                            **adam_options(device)) for curr_stage in range(args.num_stage)]
        return G, D_lst, optim_g, optim_d_lst

    def train_epoch(self, train_loader, G: Generator, D_lst: list[Discriminator], optim_g: torch.optim.Optimizer,
                    optim_d_lst: list[torch.optim.Optimizer], clip_model: nn.Module | None, device: torch.device,
                    helpers: RunHelpers) -> tuple[float, float]:
        args = self.args
        # The skeleton samples from the first batch's captions (the third value); the driver's grid uses fixed
        # captions and noises instead, so that epochs compare.
        d_loss, g_loss, _ = train_step(train_loader, args.noise_dim, device, G, D_lst, optim_g, optim_d_lst,
                                       self.loss_fn, args.num_stage, args.use_uncond_loss, args.use_contrastive_loss,
                                       args.report_interval, clip_model, args.gamma, args.lam, tau=args.tau,
                                       beta=args.beta, language_free=args.language_free, xi=args.xi,
                                       **helpers._asdict())
        return d_loss, g_loss


def train(args: Namespace) -> None:
    # One process, or one of those torchrun started (several GPUs or machines): t2i/training/distributed.py.
    with one_line_errors(), distributed.launched() as processes, contextlib.ExitStack() as run_hold:
        # The course's main.py passes only its own flags; --arch defaults to the arch of network.py's classes.
        network_arch = getattr(Generator, "ARCH", "stackgan")
        args = options.complete(args, network_arch)
        options.validate(args)
        device = processes.device(args.device)
        if args.arch != network_arch == "galip":
            raise T2IError(f"--arch {args.arch}: network.py is GALIP's module (network_galip.py); use --arch galip, "
                           f"or StackGAN's network.py")
        # One training per folder (t2i/training/lock.py); a stop (Ctrl-C) ends in one line saying how to continue.
        run_hold.enter_context(explain_stop(args))
        run_hold.enter_context(lock.held(args.checkpoint_path, processes.main))
        # What differs between the models: the course's (above), or GALIP's, Problem 5 (train_galip.py).
        if args.arch == "galip":
            from train_galip import GALIP  # imported here: train_galip builds on this file
            model = GALIP(args)
        else:
            model = CourseModel(args)
        num_stage = args.num_stage  # default: 1 (the course's main.py); the notebook trains 3

        # Every input is checked before the first file is written (so the skeleton's save_hyp comes after).
        clip_model = (clip_utils.load_clip_checked(args.clip_model, device, args.clip_embedding_dim,
                                                   "--clip_embedding_dim") if model.needs_clip() else None)
        if clip_model is not None:
            model.fit_to_clip(clip_model)
        g_in_chans, g_out_chans = model.g_in_chans, model.g_out_chans  # Ng (1024 in the course), 3
        d_in_chans, d_out_chans = model.d_in_chans, model.d_out_chans  # Nd (64 in the course), 1
        resume = find_resume_point(args)
        output_folders = check_output_folder(args, resume)  # never mixes with, or loses, another run's files
        print("Loading dataset")
        train_dataset = ZipDataset(args.train_data, num_stage)
        data_clip = check_train_dataset(train_dataset, args)
        check_training_clips(args, data_clip, clip_model, resume)  # the CLIP must be the one that made the data
        train_loader = get_dataloader(args=args, dataset=train_dataset, is_train=True)
        evaluator = (make_training_evaluator(args, clip_model, device, data_clip) if args.eval_every and processes.main
                     else None)

        G, D_lst, optim_g, optim_d_lst = model.build(device)
        if resume is not None and resume.snapshot:
            resume.load_snapshot_weights(G, D_lst)
        elif resume is not None:
            load_checkpoint(G, D_lst, args.resume_checkpoint_path, resume.epoch - 1)
            print("Resumed from saved checkpoint")

        helpers = run_helpers(args, device, G, D_lst, optim_g, optim_d_lst, train_dataset, writes=processes.main)
        log, state = helpers.log, helpers.state
        if processes.main:  # under torchrun, process 0 alone writes files
            output_folders.prepare()  # makes the folders (with --overwrite, moves another run's files aside first)
            save_hyp(args, g_in_chans, g_out_chans, d_in_chans, d_out_chans)
            output_folders.record(resume, data_clip or (clip_model and clip_utils.clip_identity_of(clip_model)))
        log.open(args.checkpoint_path, args.result_path, resume)
        samples = sample_conditions(train_dataset)
        if resume is not None:
            state.restore(resume)
            print(f"Resuming from {resume.source}: epoch {resume.epoch}, step {resume.step}")

        start_epoch = resume.epoch if resume is not None else 0
        for epoch in range(start_epoch, args.num_epochs):
            print(f"Epoch: {epoch} start")
            # The loader's order is drawn from (seed, epoch): a resumed epoch goes on at its first unseen batch.
            position_loader(train_loader, epoch, resume.step if resume is not None and epoch == resume.epoch else 0)
            log.start_epoch(epoch)
            state.epoch = epoch
            start_time = time.time()
            d_loss, g_loss = model.train_epoch(train_loader, G, D_lst, optim_g, optim_d_lst, clip_model, device,
                                               helpers)
            end_time = time.time()
            print(f"Epoch: {epoch} \t d_loss: {d_loss:.4f} \t g_loss: {g_loss:.4f} \t "
                  f"esti. time: {(end_time - start_time):.2f}s")

            # save checkpoint: the resume state first and the generator file last, so an epoch whose generator
            # file exists is complete and resumes exactly.
            state.save_epoch(epoch)
            figures = None
            grid_path = os.path.join(args.result_path, f"epoch_{epoch}.png")
            if processes.main:
                save_model(args, state.saved_generator(), D_lst, epoch, num_stage)
                save_sample_grid(state.saved_generator(), *samples, args.noise_dim, grid_path, device)
                figures = evaluate_epoch(evaluator, state.saved_generator(), epoch, args.eval_every,
                                         args.result_path)  # --eval_every K: FID, IS, KID, CLIP score
            if processes.world_size > 1:  # torchrun: none goes on while process 0 could still fail to save
                processes.barrier()
            if processes.main:
                log.end_epoch(epoch, d_loss, g_loss, end_time - start_time, figures, grid_path,
                              last=epoch + 1 == args.num_epochs)
                output_folders.after_epoch()
        print(log.summary(max(args.num_epochs - start_epoch, 0), helpers.step.num_updates, helpers.step.skipped,
                          args.checkpoint_path, args.result_path))
