"""GALIP's training (`--arch galip`, or `network.py` being `network_galip.py`): `train.train` hands the run here.

The same run as the course model's: the checks, `hyperparameter.pt`, `epoch_N_Gen.pt` / `epoch_N_Dis_i.pt`, the
resume state, mixed precision, the EMA generator, non-finite steps that change nothing, the loss log and the
per-epoch sample grid all come from `TrainingRun` (t2i/training/run.py) and the course's `train_utils`. What
differs is the model (`network_galip`), the optimizers (the paper's Adam, betas (0, 0.9), lr 1e-4 for G and 4e-4
for D, the --g_lr / --d_lr defaults of `--arch galip`) and the step (`train_step` below, losses in
`galip_losses`):

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

import os
import time
from argparse import Namespace

import torch
import torch.nn as nn
from torch.optim import Adam

import galip_losses as gl
import network_galip
from dataloader import get_dataloader
from read_dataset import ZipDataset
from t2i import clip_utils
from t2i.data.checks import check_train_dataset, check_training_clips
from t2i.errors import T2IError
from t2i.evaluation.evaluator import make_training_evaluator
from t2i.training import options
from t2i.training.resume import check_output_folder, find_resume_point
from t2i.training.run import TrainingRun, adam_options
from t2i.training.samples import sample_conditions, save_sample_grid
from train_utils import load_checkpoint, normalize, save_hyp, save_model

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


def build_models(args: Namespace, device: torch.device
                 ) -> tuple[nn.Module, list[nn.Module], torch.optim.Optimizer, list[torch.optim.Optimizer]]:
    """G, the per-stage discriminators (stage 0 alone has weights) and their optimizers, initialised."""
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


def build_training(args: Namespace, device: torch.device, clip_model: nn.Module, files: bool = False
                   ) -> tuple[nn.Module, list[nn.Module], torch.optim.Optimizer, list[torch.optim.Optimizer],
                              TrainingRun]:
    """The models, optimizers and run as `train` builds them, for tools that call `train_step` themselves (the
    train-step benchmark, the tests). `args` must be complete (`options.complete`)."""
    fit_clip_width(args, clip_model)
    G, D_lst, optim_g, optim_d_lst = build_models(args, device)
    return G, D_lst, optim_g, optim_d_lst, TrainingRun(args, device, G, D_lst, optim_g, optim_d_lst, files=files)


def train_step(train_loader, noise_dim: int, device: torch.device, model_G: nn.Module, model_D_lst: list[nn.Module],
               optim_g: torch.optim.Optimizer, optim_d_lst: list[torch.optim.Optimizer], clip_model: nn.Module,
               num_stage: int, report_interval: int, run: TrainingRun) -> tuple[float, float]:
    """One epoch of GALIP: the mean D and G losses of its steps."""
    model_D = model_D_lst[0]
    d_loss_train, g_loss_train, num_steps = 0.0, 0.0, 0
    for step, real_imgs, img_feature, txt_feature in run.batches(train_loader, num_stage):
        if run.language_free:  # LAFITE's pseudo text feature, as in train.train_step (Problem 4-(f))
            eps = torch.randn_like(img_feature)
            txt_feature = normalize(img_feature + run.xi * eps * img_feature.norm(dim=-1, keepdim=True)
                                    / eps.norm(dim=-1, keepdim=True))
        batch_size = txt_feature.shape[0]

        # D step. The fakes' CLIP features keep their graph into G: the G step below reuses them.
        run.begin_step()
        with run.autocast():
            with run.global_noise():
                noise = torch.randn(batch_size, noise_dim, device=device)
                fake_image = model_G(txt_feature, noise)[0][-1]
            with torch.no_grad():
                real_layers, _ = gl.clip_image_features(clip_model, run.augment(real_imgs[-1]), with_embedding=False)
            fake_layers, fake_embedding = gl.clip_image_features(clip_model, run.augment(fake_image))
            d_loss, parts = gl.discriminator_loss(model_D, real_layers, fake_layers, txt_feature,
                                                  scaler=run.precision.scaler_d, mismatch=run.mismatch)
        run.log("D", 0).update(parts)
        # A non-finite loss skips this step and the G step after it on the device; the iteration is then undone
        # and changes nothing (t2i/training/nonfinite.py).
        run.update_discriminators(d_loss, optim_d_lst)

        # G step, judged by the updated D.
        with run.frozen(model_D_lst), run.autocast():
            g_loss, parts = gl.generator_loss(model_D, fake_layers, fake_embedding, txt_feature)
        run.log("G", 0).update(parts)
        if not run.update_generator(g_loss, optim_g):
            continue
        d_loss_train += d_loss.detach()
        g_loss_train += g_loss.detach()
        num_steps += 1
        if step % report_interval == 0:
            run.report(step, d_loss, g_loss)
        run.after_step(step)

    d_loss_train = float(d_loss_train) / num_steps if num_steps else float("nan")
    g_loss_train = float(g_loss_train) / num_steps if num_steps else float("nan")
    return d_loss_train, g_loss_train


def train(args: Namespace, device: torch.device, is_main: bool) -> None:
    """`train.train` for GALIP: `args` complete and validated; `is_main` False on torchrun's other processes."""
    # D reads CLIP in every step, so CLIP is loaded first: its token width is d_in_chans, checked on resume.
    clip_model = clip_utils.load_clip_checked(args.clip_model, device, args.clip_embedding_dim, "--clip_embedding_dim")
    fit_clip_width(args, clip_model)
    resume = find_resume_point(args)
    output_folders = check_output_folder(args, resume)
    print("Loading dataset")
    train_dataset = ZipDataset(args.train_data, args.num_stage)
    data_clip = check_train_dataset(train_dataset, args)
    check_training_clips(args, data_clip, clip_model, resume)
    train_loader = get_dataloader(args=args, dataset=train_dataset, is_train=True)
    evaluator = make_training_evaluator(args, clip_model, device, data_clip) if args.eval_every and is_main else None

    G, D_lst, optim_g, optim_d_lst = build_models(args, device)
    if resume is not None and resume.snapshot:
        resume.load_snapshot_weights(G, D_lst)
    elif resume is not None:
        load_checkpoint(G, D_lst, args.resume_checkpoint_path, resume.epoch - 1)
        print("Resumed from saved checkpoint")

    run = TrainingRun(args, device, G, D_lst, optim_g, optim_d_lst)
    if is_main:
        output_folders.prepare()
        save_hyp(args, args.g_in_chans, G_OUT_CHANS, args.d_in_chans, D_OUT_CHANS)
    run.begin(resume, data_clip or clip_utils.clip_identity_of(clip_model))
    samples = sample_conditions(train_dataset)
    if resume is not None:
        run.restore(resume)
        print(f"Resuming from {resume.source}: epoch {resume.epoch}, step {resume.step}")

    start_epoch = resume.epoch if resume is not None else 0
    for epoch in range(start_epoch, args.num_epochs):
        print(f"Epoch: {epoch} start")
        run.start_epoch(epoch, train_loader, resume)
        start_time = time.time()
        d_loss, g_loss = train_step(train_loader, args.noise_dim, device, G, D_lst, optim_g, optim_d_lst, clip_model,
                                    args.num_stage, args.report_interval, run)
        end_time = time.time()
        print(f"Epoch: {epoch} \t d_loss: {d_loss:.4f} \t g_loss: {g_loss:.4f} \t "
              f"esti. time: {(end_time - start_time):.2f}s")
        # The resume state first and the generator file last, as in train.train.
        run.save_epoch_state(epoch)
        figures = None
        if is_main:
            save_model(args, run.saved_generator(), D_lst, epoch, args.num_stage)
            save_sample_grid(run.saved_generator(), *samples, args.noise_dim,
                             os.path.join(args.result_path, f"epoch_{epoch}.png"), device)
            figures = run.evaluate_epoch(evaluator, epoch)
        run.end_epoch(epoch, d_loss, g_loss, end_time - start_time, figures)
    print(run.summary(start_epoch))
