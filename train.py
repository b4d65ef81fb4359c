"""The course skeleton's train.py, completed: the guideline's losses and the training loop.

Read top to bottom as the guideline: the contrastive losses (Problems 4-(c), 4-(d)), one stage's discriminator
and generator losses (4-(b), 4-(a)), one epoch (`train_step`: the pseudo text feature 4-(f), the labels 4-(e),
then phases 1-3), and `train(args)`. It runs under the course's own main.py too, whose Namespace holds only the
course flags: every other option takes its default (`t2i/options.py`).

What the skeleton does not have reaches `train_step` through `run` (`t2i/training_run.py`): mixed precision,
the EMA generator, mismatched captions, DiffAugment, non-finite steps that change nothing, progress, the loss
log and mid-epoch snapshots; under torchrun, training on several processes (`t2i/distributed.py`), with two marked
hooks here: the contrastive negatives and the generator's noise come from the global batch. Where a line the
skeleton gives had to change, a comment says why. The changes that make a step cost half the course's: one
generator forward per iteration, the discriminators' step on detached fakes (no backward through G, no
retain_graph), each discriminator's trunk run once per image batch and shared by its heads, and frozen
discriminators in the generator's step.

`--arch galip` (or network.py being network_galip.py, under the course's main.py too) trains GALIP instead, the
guideline's Problem 5: `train` hands the run to `train_galip.train` (its step, losses and optimizers).
"""
from __future__ import annotations

import contextlib
import os
import time
from argparse import Namespace

import torch
import torch.nn as nn
from torch.nn import BCEWithLogitsLoss
from torch.optim import Adam

import train_galip
from dataloader import get_dataloader
from network import Discriminator, Generator, weight_init
from read_dataset import ZipDataset
from t2i import clip_utils, distributed, options, run_lock
from t2i.datasets import check_train_dataset, check_training_clips
from t2i.errors import T2IError, one_line_errors
from t2i.evaluation import make_training_evaluator
from t2i.image_ops import clip_view
from t2i.resume import check_output_folder, explain_stop, find_resume_point
from t2i.samples import sample_conditions, save_sample_grid
from t2i.training_run import TrainingRun, adam_options, init_conditioning_mu
from train_utils import (KL_divergence, clip_preprocess, denormalize_image, gather_all, load_checkpoint, normalize,
                         save_hyp, save_model)


def contrastive_loss(features: torch.Tensor, txt_embedding: torch.Tensor, tau: float) -> torch.Tensor:
    """-tau * sum_i log( exp(sim(f_i, h_i)/tau) / sum_j exp(sim(f_j, h_i)/tau) ), sim the cosine similarity:
    each text should pick its own image out of the batch. Computed in fp32 (exp / tau overflows fp16)."""
    # torchrun hook: the batch is the global one, every process's images and texts (t2i/distributed.py).
    features, txt_embedding = distributed.gather_negatives(features, txt_embedding)
    logits = normalize(txt_embedding.float()) @ normalize(features.float()).t() / tau  # [text i, image j]
    return -tau * torch.diagonal(torch.log_softmax(logits, dim=1)).sum()


def contrastive_loss_G(fake_image: torch.Tensor, clip_model: nn.Module, txt_embedding: torch.Tensor,
                       device: torch.device | str, tau: float = 0.5) -> torch.Tensor:
    ################# Problem 4-(c) #################
    # L_ConG: CLIP's image features of the generated images against the text embeddings. The given chain
    # denormalize -> clip_transform(224) -> custom_reshape -> clip_preprocess, with its two resizes done as two
    # small matrix products (image_ops.clip_view: the same result and random crop, a far cheaper backward).
    # CLIP is frozen; the gradient flows through it into the generator.
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
    """One stage's L'_D = L_D + gamma * L_ConD.

    `wrong_mu` (--mismatch): the conditional head also sees the real images with other captions' mu, labelled
    fake; it shares the fake term's weight with the generated images, so the loss keeps its scale. `augment`:
    DiffAugment of D's inputs. `components` receives loss_d_comp for the loss log."""
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


def train_step(train_loader, noise_dim: int, device: torch.device, model_G: Generator,
               model_D_lst: list[Discriminator], optim_g: torch.optim.Optimizer,
               optim_d_lst: list[torch.optim.Optimizer], loss_fn: nn.Module, num_stage: int, use_uncond_loss: bool,
               use_contrastive_loss: bool, report_interval: int, clip_model: nn.Module | None, gamma: float,
               lam: float, run: TrainingRun | None = None) -> tuple[float, float, torch.Tensor]:
    """One epoch: the mean D and G losses of its steps, and the first batch's text features.

    Without `run` the epoch runs as the course's code would: fp32, no EMA, no mismatch, no augmentation."""
    run = run or TrainingRun.plain(torch.device(device), model_G, model_D_lst, optim_g, optim_d_lst)
    d_loss_train, g_loss_train, num_steps = 0.0, 0.0, 0
    save_txt_feature = None
    for iter, real_imgs, img_feature, txt_feature in run.batches(train_loader, num_stage):
        if save_txt_feature is None:
            save_txt_feature = txt_feature
        BATCH_SIZE = txt_feature.shape[0]

        ################# Problem 4-(f) #################
        # Language-free training (--language_free), LAFITE's fixed perturbations of the normalised image
        # feature f: h' = normalize(f + xi * eps * ||f|| / ||eps||), eps ~ N(0, I), replaces the text feature.
        if run.language_free:
            eps = torch.randn_like(img_feature)
            txt_feature = normalize(img_feature + run.xi * eps * img_feature.norm(dim=-1, keepdim=True)
                                    / eps.norm(dim=-1, keepdim=True))

        ################# Problem 4-(e) #################
        d_fake_label = torch.zeros(BATCH_SIZE, dtype=torch.float32, device=device)
        d_real_label = torch.ones(BATCH_SIZE, dtype=torch.float32, device=device)
        g_label = torch.ones(BATCH_SIZE, dtype=torch.float32, device=device)

        # Phase 1. Optimize Discriminator
        run.begin_step()
        with run.autocast():
            # One generator forward per iteration: phase 2 scores these same images (the skeleton draws anew).
            # torchrun hook: z and the conditioning augmentation's eps are this process's rows of the global batch's.
            with run.global_noise():
                noise = torch.randn(BATCH_SIZE, noise_dim, device=device)
                fake_images, mu, log_sigma = model_G(txt_feature, noise)
            # Detached fakes and mu: D's loss does not reach G, so no backward through G and no retain_graph.
            wrong_mu = mu.detach().roll(1, dims=0) if run.mismatch else None
            d_loss = 0
            for i in range(num_stage):
                d_loss = d_loss + D_loss(real_imgs[i], fake_images[i].detach(), model_D_lst[i], loss_fn,
                                         use_uncond_loss, use_contrastive_loss, gamma, mu.detach(), txt_feature,
                                         d_fake_label, d_real_label, tau=run.tau, wrong_mu=wrong_mu,
                                         augment=run.augment, components=run.log("D", i))
        # A non-finite loss skips this step, and the generator's after it, on the device (the host does not wait
        # here); the iteration is then undone and changes nothing (t2i/nonfinite.py).
        run.update_discriminators(d_loss, optim_d_lst)

        # Phase 2. Optimize Generator
        with run.frozen(model_D_lst), run.autocast():
            # --detach_condition: D judges the image against a detached mu, so only the image can satisfy it.
            condition = mu.detach() if run.detach_condition else mu
            g_loss = 0
            for i in range(num_stage):
                g_loss = g_loss + G_loss(fake_images[i], model_D_lst[i], loss_fn, use_uncond_loss,
                                         use_contrastive_loss, clip_model, gamma, lam, device, condition, txt_feature,
                                         g_label, tau=run.tau, augment=run.augment,
                                         clip_loss_min_size=run.clip_loss_min_size(fake_images),
                                         components=run.log("G", i))

        # Calculation of L_CA. Do NOT modify. (Its weight is --beta, 1.0 unless given; in fp32, since
        # exp(2 log_sigma) overflows fp16.)
        aug_loss = KL_divergence(mu.float(), log_sigma.float())
        g_loss += (run.beta) * aug_loss
        run.log("G", None)["kl"] = aug_loss
        if not run.update_generator(g_loss, optim_g):
            continue
        d_loss_train += d_loss.detach()  # summed on the device: read once, after the epoch
        g_loss_train += g_loss.detach()
        num_steps += 1

        # Phase 3. Report
        if iter % report_interval == 0:
            run.report(iter, d_loss, g_loss)
        run.after_step(iter)

    d_loss_train = float(d_loss_train) / num_steps if num_steps else float("nan")
    g_loss_train = float(g_loss_train) / num_steps if num_steps else float("nan")
    return d_loss_train, g_loss_train, save_txt_feature


def train(args: Namespace) -> None:
    # One process, or one of those torchrun started (several GPUs or machines): t2i/distributed.py.
    with one_line_errors(), distributed.launched() as processes, contextlib.ExitStack() as run_hold:
        # The course's main.py passes only its own flags; --arch defaults to the arch of network.py's classes.
        network_arch = getattr(Generator, "ARCH", "stackgan")
        args = options.complete(args, network_arch)
        options.validate(args)
        device = processes.device(args.device)
        if args.arch != network_arch == "galip":
            raise T2IError(f"--arch {args.arch}: network.py is GALIP's module (network_galip.py); use --arch galip, "
                           f"or StackGAN's network.py")
        # One training per checkpoint folder: its lock is taken before the folder is read (t2i/run_lock.py). A stop
        # (Ctrl-C, Colab's stop button) ends in one line naming what is saved and how to continue (t2i/resume.py).
        run_hold.enter_context(explain_stop(args))
        run_hold.enter_context(run_lock.held(args.checkpoint_path, processes.main))
        if args.arch == "galip":  # Problem 5, another paper's model: its own step and optimizers (train_galip.py)
            return train_galip.train(args, device, processes.main)
        clip_embedding_dim = args.clip_embedding_dim  # Dimension of c_txt, default: 512 (CLIP ViT-B/32)
        projection_dim = args.projection_dim  # Dimension of \hat{c_txt} extracted from CANet, default: 128
        noise_dim = args.noise_dim  # Dimension of noise z ~ N(0, 1), default: 100
        g_in_chans = args.g_in_chans  # Ng: 1024 in the course (--g_in_chans)
        g_out_chans = 3  # Fixed
        d_in_chans = args.d_in_chans  # Nd: 64 in the course (--d_in_chans)
        d_out_chans = 1  # Fixed
        num_stage = args.num_stage  # default: 3
        use_uncond_loss = args.use_uncond_loss
        use_contrastive_loss = args.use_contrastive_loss
        report_interval = args.report_interval

        # Everything that can be wrong with the input is checked before the first file is written, so the
        # skeleton's save_hyp comes after the checks.
        resume = find_resume_point(args)
        output_folders = check_output_folder(args, resume)  # never mixes with, or loses, another run's files
        print("Loading dataset")
        train_dataset = ZipDataset(args.train_data, num_stage)
        data_clip = check_train_dataset(train_dataset, args)
        # Only L_ConG needs CLIP (the skeleton: clip.load("ViT-B/32")); it must be the CLIP that made the data.
        clip_model = (clip_utils.load_clip_checked(args.clip_model, device, clip_embedding_dim, "--clip_embedding_dim")
                      if use_contrastive_loss else None)
        check_training_clips(args, data_clip, clip_model, resume)
        train_loader = get_dataloader(args=args, dataset=train_dataset, is_train=True)
        evaluator = (make_training_evaluator(args, clip_model, device, data_clip) if args.eval_every and processes.main
                     else None)

        G = Generator(clip_embedding_dim, projection_dim, noise_dim, g_in_chans, g_out_chans, num_stage,
                      device).to(device)
        G.apply(weight_init)
        init_conditioning_mu(G, args.ca_init_std)
        D_lst = [Discriminator(projection_dim, g_out_chans, d_in_chans, d_out_chans, clip_embedding_dim, curr_stage,
                               device).to(device) for curr_stage in range(num_stage)]
        for D in D_lst:
            D.apply(weight_init)

        if resume is not None and resume.snapshot:
            resume.load_snapshot_weights(G, D_lst)
        elif resume is not None:
            load_checkpoint(G, D_lst, args.resume_checkpoint_path, resume.epoch - 1)
            print("Resumed from saved checkpoint")

        optim_g = Adam(G.parameters(), lr=args.g_lr or args.learning_rate, betas=(0.5, 0.999), **adam_options(device))
        optim_d_lst = [Adam(D_lst[curr_stage].parameters(), lr=args.d_lr or args.learning_rate, betas=(0.5, 0.999),
                            **adam_options(device)) for curr_stage in range(num_stage)]
        # Logits and BCEWithLogitsLoss rather than the skeleton's sigmoid outputs and BCELoss: autocast refuses
        # BCELoss in fp16, and the logits form is the numerically stable one.
        loss_fn = BCEWithLogitsLoss()

        run = TrainingRun(args, device, G, D_lst, optim_g, optim_d_lst)
        if processes.main:  # under torchrun, process 0 alone writes files
            output_folders.prepare()  # makes the folders (with --overwrite, moves another run's files aside first)
            save_hyp(args, g_in_chans, g_out_chans, d_in_chans, d_out_chans)
        run.begin(resume, data_clip or (clip_model and clip_utils.clip_identity_of(clip_model)))
        samples = sample_conditions(train_dataset)
        if resume is not None:
            run.restore(resume)
            print(f"Resuming from {resume.source}: epoch {resume.epoch}, step {resume.step}")

        start_epoch = resume.epoch if resume is not None else 0
        for epoch in range(start_epoch, args.num_epochs):
            print(f"Epoch: {epoch} start")
            run.start_epoch(epoch, train_loader, resume)
            start_time = time.time()
            # The skeleton samples from the first batch's captions (the third value); the grid below uses fixed
            # captions and noises instead, so that epochs compare.
            d_loss, g_loss, _ = train_step(train_loader, noise_dim, device, G, D_lst, optim_g, optim_d_lst, loss_fn,
                                           num_stage, use_uncond_loss, use_contrastive_loss, report_interval,
                                           clip_model, args.gamma, args.lam, run=run)
            end_time = time.time()
            print(f"Epoch: {epoch} \t d_loss: {d_loss:.4f} \t g_loss: {g_loss:.4f} \t "
                  f"esti. time: {(end_time - start_time):.2f}s")

            # save checkpoint: the resume state first and the generator file last, so an epoch whose generator
            # file exists is complete and resumes exactly.
            run.save_epoch_state(epoch)
            figures = None
            if processes.main:
                save_model(args, run.saved_generator(), D_lst, epoch, num_stage)
                save_sample_grid(run.saved_generator(), *samples, noise_dim,
                                 os.path.join(args.result_path, f"epoch_{epoch}.png"), device)
                figures = run.evaluate_epoch(evaluator, epoch)  # --eval_every K: FID, IS, KID, CLIP score
            run.end_epoch(epoch, d_loss, g_loss, end_time - start_time, figures)
        print(run.summary(start_epoch))
