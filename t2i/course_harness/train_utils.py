"""Our re-creation of the graders' plain `train_utils.py`, written from ../shared/CONTRACT.md.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time. Facts kept: `error` prints `Error: ` to stdout and exits 1;
`custom_reshape` reads the side from `img.shape[-2]` and never crops the full side; `clip_preprocess` returns a
Compose; `save_hyp` stores the values as they are in args; `save_model` writes the generator first, then each
discriminator, with plain `torch.save` (not atomically); `load_checkpoint` loads strictly onto the CPU, puts
every model in eval mode and, when a file is missing or does not fit, prints one line and exits with status 0.
"""
import os
import sys

import torch
import torch.nn.functional as F
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize


def error(msg):
    print("Error: " + msg)
    sys.exit(1)


def gather_all(dicts):
    return sum(dicts.values())


def KL_divergence(mu, log_sigma):
    kl = -log_sigma - 0.5 + (torch.exp(2 * log_sigma) + mu ** 2) * 0.5
    return torch.mean(torch.sum(kl, dim=1))


def normalize(tensor):
    return tensor / tensor.norm(dim=-1, keepdim=True)


def denormalize_image(x):
    return x * 0.5 + 0.5


def clip_transform(n_px):
    return Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px)])


def custom_reshape(img, mode="bicubic", ratio=0.99):
    side = img.shape[-2]
    if side < 224:
        left = torch.randint(0, 224 - side, ())
        top = torch.randint(0, 224 - side, ())
        return F.pad(img, (left, 224 - side - left, top, 224 - side - top), value=1.0)
    crop = torch.randint(int(ratio * side), side, ())  # never the full side
    left = torch.randint(0, side - crop, ())
    top = torch.randint(0, side - crop, ())
    return F.interpolate(img[:, :, top:top + crop, left:left + crop], (224, 224), mode=mode, align_corners=False)


def clip_preprocess():
    return Compose([Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])


def save_hyp(args, g_in_chans, g_out_chans, d_in_chans, d_out_chans):
    hyp = {name: getattr(args, name) for name in (
        "clip_embedding_dim", "projection_dim", "noise_dim", "num_stage", "use_uncond_loss", "use_contrastive_loss",
        "batch_size", "num_epochs", "learning_rate")}
    hyp.update(g_in_chans=g_in_chans, g_out_chans=g_out_chans, d_in_chans=d_in_chans, d_out_chans=d_out_chans)
    torch.save(hyp, os.path.join(args.checkpoint_path, "hyperparameter.pt"))


def print_hyp(hyp):
    print()
    for key, value in hyp.items():
        print(f"{key}: {value}")
    print()


def save_model(args, Generator, Discriminators, epoch, num_stage):
    torch.save(Generator.state_dict(), os.path.join(args.checkpoint_path, f"epoch_{epoch}_Gen.pt"))
    for stage in range(num_stage):
        torch.save(Discriminators[stage].state_dict(),
                   os.path.join(args.checkpoint_path, f"epoch_{epoch}_Dis_{stage}.pt"))


def load_checkpoint(G, D_lst, checkpoint_path, epoch):
    try:
        G.load_state_dict(torch.load(os.path.join(checkpoint_path, f"epoch_{epoch}_Gen.pt"), map_location="cpu"))
        G.eval()
        for stage, D in enumerate(D_lst):
            D.load_state_dict(torch.load(os.path.join(checkpoint_path, f"epoch_{epoch}_Dis_{stage}.pt"),
                                         map_location="cpu"))
            D.eval()
    except RuntimeError:
        print("Cannot load checkpoint; check the hyperparameters (e.g. the number of stages)")
        exit(0)
    except FileNotFoundError:
        print("Cannot load checkpoint; check the folder")
        exit(0)
