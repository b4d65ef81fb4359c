"""The course's straightforward completion of the skeleton's train.py: the reference that
`python -m benchmarks.train_loop` measures our train.py against, under the same plain harness files.

Written for this package from the skeleton's structure (CONTRACT.md, "The skeleton's structure") and the
guideline's losses, the way a team fills the blanks without optimising anything:

* two generator forwards per iteration: one for the discriminators' step, a fresh one for the generator's;
* the discriminators' step on the fakes as G made them (not detached), stage by stage, each stage's backward
  running through G with `retain_graph=True`;
* one full discriminator call per head: `D(img)` for the unconditional head, `D(img, mu)` for the conditional
  and align heads, real and fake apart;
* BCELoss on the sigmoid outputs, fp32 throughout, a `.item()` per stage, `clip.load("ViT-B/32")`.

Two lines are not a team's: Ng and Nd are read with getattr (the benchmark passes smaller widths for CPU runs;
the course's 1024 and 64 otherwise), and CLIP is frozen (what a careful team does; an unfrozen CLIP would also
compute CLIP's weight gradients every step, which would only make this reference slower). Language-free
training (4-(f)) is left out: the course's main.py has no flag that turns it on.
"""
import os
import time

import clip
import torch
import torch.nn as nn
from torch.optim import Adam
from torchvision.utils import save_image

from dataloader import get_dataloader
from network import Discriminator, Generator, weight_init
from read_dataset import ZipDataset
from train_utils import (KL_divergence, clip_preprocess, clip_transform, custom_reshape, denormalize_image,
                         gather_all, load_checkpoint, normalize, save_hyp, save_model)


def contrastive_loss_G(fake_image, clip_model, txt_embedding, device, tau=0.5):
    ################# Problem 4-(c) #################
    image = clip_preprocess()(custom_reshape(clip_transform(224)(denormalize_image(fake_image))))
    image_features = clip_model.encode_image(image.to(device)).float()  # fp16 on CUDA (openai-clip's layout)
    similarity = normalize(txt_embedding) @ normalize(image_features).t() / tau  # [text i, image j]
    L_cont = -tau * torch.sum(torch.log(torch.exp(torch.diagonal(similarity))
                                        / torch.sum(torch.exp(similarity), dim=1)))
    return L_cont


def contrastive_loss_D(g_out_align, txt_embedding, tau=0.5):
    ################# Problem 4-(d) #################
    similarity = normalize(txt_embedding) @ normalize(g_out_align).t() / tau
    L_cont = -tau * torch.sum(torch.log(torch.exp(torch.diagonal(similarity))
                                        / torch.sum(torch.exp(similarity), dim=1)))
    return L_cont


def D_loss(real_image, fake_image, model_D, loss_fn, use_uncond_loss, use_contrastive_loss, gamma, mu,
           txt_feature, d_fake_label, d_real_label):
    ################# Problem 4-(b) #################
    loss_d_comp = {}
    real_cond, real_align = model_D(real_image, mu)
    fake_cond, fake_align = model_D(fake_image, mu)
    loss_d_comp["d_loss_real_cond"] = loss_fn(real_cond.view(-1), d_real_label)
    loss_d_comp["d_loss_fake_cond"] = loss_fn(fake_cond.view(-1), d_fake_label)
    if use_uncond_loss:
        real_uncond, _ = model_D(real_image)
        fake_uncond, _ = model_D(fake_image)
        loss_d_comp["d_loss_real_uncond"] = loss_fn(real_uncond.view(-1), d_real_label)
        loss_d_comp["d_loss_fake_uncond"] = loss_fn(fake_uncond.view(-1), d_fake_label)
    if use_contrastive_loss:
        loss_d_comp["d_loss_real_cond_contrastive"] = gamma * contrastive_loss_D(real_align, txt_feature)
        loss_d_comp["d_loss_fake_cond_contrastive"] = gamma * contrastive_loss_D(fake_align, txt_feature)
    d_loss = gather_all(loss_d_comp)
    return d_loss


def G_loss(fake_image, model_D, loss_fn, use_uncond_loss, use_contrastive_loss, clip_model, gamma, lam, device,
           mu, txt_feature, g_label):
    ################# Problem 4-(a) #################
    loss_g_comp = {}
    cond, align = model_D(fake_image, mu)
    loss_g_comp["g_loss_cond"] = loss_fn(cond.view(-1), g_label)
    if use_uncond_loss:
        uncond, _ = model_D(fake_image)
        loss_g_comp["g_loss_uncond"] = loss_fn(uncond.view(-1), g_label)
    if use_contrastive_loss:
        if fake_image.shape[-1] >= 256:
            loss_g_comp["g_loss_cond_contrastive"] = lam * contrastive_loss_G(fake_image, clip_model, txt_feature,
                                                                              device)
        loss_g_comp["d_loss_cond_contrastive"] = gamma * contrastive_loss_D(align, txt_feature)
    g_loss = gather_all(loss_g_comp)
    return g_loss


def train_step(train_loader, noise_dim, device, model_G, model_D_lst, optim_g, optim_d_lst, loss_fn, num_stage,
               use_uncond_loss, use_contrastive_loss, report_interval, clip_model, gamma, lam):
    d_loss_train, g_loss_train = 0.0, 0.0
    save_txt_feature = None
    for iter, (real_imgs, img_feature, txt_feature) in enumerate(train_loader):
        real_imgs = [image.to(device) for image in real_imgs]
        txt_feature = txt_feature.to(device)
        if save_txt_feature is None:
            save_txt_feature = txt_feature
        BATCH_SIZE = txt_feature.shape[0]

        ################# Problem 4-(e) #################
        d_fake_label = torch.zeros(BATCH_SIZE, dtype=torch.float32, device=device)
        d_real_label = torch.ones(BATCH_SIZE, dtype=torch.float32, device=device)
        g_label = torch.ones(BATCH_SIZE, dtype=torch.float32, device=device)

        # Phase 1. Optimize Discriminator
        noise = torch.randn(BATCH_SIZE, noise_dim, device=device)
        fake_images, mu, log_sigma = model_G(txt_feature, noise)
        d_loss_total = 0.0
        for i in range(num_stage):
            optim_d_lst[i].zero_grad()
            d_loss = D_loss(real_imgs[i], fake_images[i], model_D_lst[i], loss_fn, use_uncond_loss,
                            use_contrastive_loss, gamma, mu, txt_feature, d_fake_label, d_real_label)
            d_loss.backward(retain_graph=True)
            optim_d_lst[i].step()
            d_loss_total += d_loss.item()

        # Phase 2. Optimize Generator
        optim_g.zero_grad()
        noise = torch.randn(BATCH_SIZE, noise_dim, device=device)
        fake_images, mu, log_sigma = model_G(txt_feature, noise)
        g_loss = 0
        for i in range(num_stage):
            g_loss += G_loss(fake_images[i], model_D_lst[i], loss_fn, use_uncond_loss, use_contrastive_loss,
                             clip_model, gamma, lam, device, mu, txt_feature, g_label)
        # Calculation of L_CA. Do NOT modify.
        aug_loss = KL_divergence(mu, log_sigma)
        g_loss += (1.0) * aug_loss
        g_loss.backward()
        optim_g.step()
        d_loss_train += d_loss_total
        g_loss_train += g_loss.item()

        # Phase 3. Report
        if iter % report_interval == 0:
            print(f"[{iter}/{len(train_loader)}] d_loss: {d_loss_total:.4f}, g_loss: {g_loss.item():.4f}")

    d_loss_train /= len(train_loader)
    g_loss_train /= len(train_loader)
    return d_loss_train, g_loss_train, save_txt_feature


def train(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clip_embedding_dim = args.clip_embedding_dim
    projection_dim = args.projection_dim
    noise_dim = args.noise_dim
    g_in_chans = getattr(args, "g_in_chans", 1024)  # Ng (the benchmark may pass a smaller one for CPU runs)
    g_out_chans = 3
    d_in_chans = getattr(args, "d_in_chans", 64)  # Nd
    d_out_chans = 1
    num_stage = args.num_stage
    use_uncond_loss = args.use_uncond_loss
    use_contrastive_loss = args.use_contrastive_loss
    report_interval = args.report_interval
    gamma, lam = 5.0, 10.0

    save_hyp(args, g_in_chans, g_out_chans, d_in_chans, d_out_chans)
    print("Loading dataset")
    train_dataset = ZipDataset(args.train_data, num_stage)
    train_loader = get_dataloader(args=args, dataset=train_dataset, is_train=True)

    G = Generator(clip_embedding_dim, projection_dim, noise_dim, g_in_chans, g_out_chans, num_stage, device).to(device)
    G.apply(weight_init)
    D_lst = [Discriminator(projection_dim, g_out_chans, d_in_chans, d_out_chans, clip_embedding_dim, curr_stage,
                           device).to(device) for curr_stage in range(num_stage)]
    for D in D_lst:
        D.apply(weight_init)

    if args.resume_checkpoint_path is not None and args.resume_epoch != -1:
        load_checkpoint(G, D_lst, args.resume_checkpoint_path, args.resume_epoch)
        print("Resumed from saved checkpoint")

    optim_g = Adam(G.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
    optim_d_lst = [Adam(D_lst[curr_stage].parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
                   for curr_stage in range(num_stage)]
    loss_fn = nn.BCELoss()
    clip_model, _ = clip.load("ViT-B/32", device)
    clip_model.eval().requires_grad_(False)

    start_epoch = args.resume_epoch + 1 if args.resume_checkpoint_path is not None and args.resume_epoch != -1 else 0
    for epoch in range(start_epoch, args.num_epochs):
        print(f"Epoch: {epoch} start")
        start_time = time.time()
        d_loss, g_loss, save_txt_feature = train_step(train_loader, noise_dim, device, G, D_lst, optim_g,
                                                      optim_d_lst, loss_fn, num_stage, use_uncond_loss,
                                                      use_contrastive_loss, report_interval, clip_model, gamma, lam)
        end_time = time.time()
        print(f"Epoch: {epoch} \t d_loss: {d_loss:.4f} \t g_loss: {g_loss:.4f} \t "
              f"esti. time: {(end_time - start_time):.2f}s")

        with torch.no_grad():
            noise = torch.randn(save_txt_feature.shape[0], noise_dim, device=device)
            fake_images, _, _ = G(save_txt_feature, noise)
        save_image(denormalize_image(fake_images[-1]), os.path.join(args.result_path, f"epoch_{epoch}.png"))
        save_model(args, G, D_lst, epoch, num_stage)
