"""Our re-creation of the course's plain `train_utils.py`, written from the contract.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time.
"""
import os
import sys
from argparse import Namespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize


def error(msg: str) -> None:
    print("Error: " + msg)
    sys.exit(1)


def gather_all(loss_dict: dict) -> torch.Tensor:
    return sum(loss_dict.values())


def KL_divergence(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    kl = -log_sigma - 0.5 + (torch.exp(2 * log_sigma) + mu ** 2) / 2
    return torch.mean(torch.sum(kl, dim=1))


def normalize(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True)


def denormalize_image(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5


def clip_transform(n_px: int) -> Compose:
    return Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px)])


def custom_reshape(img: torch.Tensor, mode: str = "bicubic", ratio: float = 0.99) -> torch.Tensor:
    size = img.shape[-1]
    if size < 224:
        left = torch.randint(0, 224 - size + 1, ()).item()
        top = torch.randint(0, 224 - size + 1, ()).item()
        return F.pad(img, (left, 224 - size - left, top, 224 - size - top), value=1.0)
    cut = torch.randint(int(ratio * size), size + 1, ()).item()
    left = torch.randint(0, size - cut + 1, ()).item()
    top = torch.randint(0, size - cut + 1, ()).item()
    cropped = img[:, :, top:top + cut, left:left + cut]
    return F.interpolate(cropped, size=(224, 224), mode=mode, align_corners=False)


def clip_preprocess() -> Normalize:
    return Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def save_hyp(args: Namespace, g_in_chans: int, g_out_chans: int, d_in_chans: int, d_out_chans: int) -> None:
    hyp = {
        "clip_embedding_dim": args.clip_embedding_dim,
        "projection_dim": args.projection_dim,
        "noise_dim": args.noise_dim,
        "num_stage": args.num_stage,
        "use_uncond_loss": args.use_uncond_loss,
        "use_contrastive_loss": args.use_contrastive_loss,
        "batch_size": args.batch_size,
        "num_epochs": args.num_epochs,
        "learning_rate": args.learning_rate,
        "g_in_chans": g_in_chans,
        "g_out_chans": g_out_chans,
        "d_in_chans": d_in_chans,
        "d_out_chans": d_out_chans,
    }
    torch.save(hyp, os.path.join(args.checkpoint_path, "hyperparameter.pt"))


def print_hyp(hyp: dict) -> None:
    for key, value in hyp.items():
        print(f"{key}: {value}")


def save_model(args: Namespace, G: nn.Module, D_list: list[nn.Module], epoch: int, num_stage: int) -> None:
    torch.save(G.state_dict(), os.path.join(args.checkpoint_path, f"epoch_{epoch}_Gen.pt"))
    for i in range(num_stage):
        torch.save(D_list[i].state_dict(), os.path.join(args.checkpoint_path, f"epoch_{epoch}_Dis_{i}.pt"))


def load_checkpoint(G: nn.Module, D_list: list[nn.Module], checkpoint_path: str, epoch: int) -> None:
    G.load_state_dict(torch.load(os.path.join(checkpoint_path, f"epoch_{epoch}_Gen.pt"), map_location="cpu"))
    for i, D in enumerate(D_list):
        D.load_state_dict(torch.load(os.path.join(checkpoint_path, f"epoch_{epoch}_Dis_{i}.pt"), map_location="cpu"))
