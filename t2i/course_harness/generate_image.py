"""Our re-creation of the graders' plain `generate_image.py`, written from ../shared/CONTRACT.md.

Used only to prove that checkpoints from our train.py load with the graders' plain file (t2i.harness runs
it); the package never imports it at run time. Facts kept, all under `torch.no_grad()`: `hyperparameter.pt`
read with torch.load's default `weights_only`; cuda:0 when available; `clip.load("ViT-" + --clip_model)`; the
Generator AND one Discriminator per stage built positionally from the hyperparameters and loaded through
`load_checkpoint` (which exits 0, writing nothing, when any file fails); nothing seeded; the prompt's CLIP
feature normalised in CLIP's dtype, then float32; `fake_images[-3]`, `[-2]`, `[-1]` saved as result_64.png,
result_128.png and result_256.png in the working directory (so at least 3 stages are needed).
"""
import warnings

warnings.filterwarnings("ignore")

import argparse  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import clip  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from network import Discriminator, Generator  # noqa: E402
from train_utils import denormalize_image, load_checkpoint, normalize, print_hyp  # noqa: E402


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=str, required=True)
    parser.add_argument("--load_epoch", type=int, required=True)
    parser.add_argument("--checkpoint_path", type=Path, required=True)
    parser.add_argument("--show_hyp", action="store_true")
    parser.add_argument("--clip_model", type=click.Choice(["B/32", "L/14", "B/16"]), default="B/32")
    args = parser.parse_args()

    hyp = torch.load(os.path.join(args.checkpoint_path, "hyperparameter.pt"), map_location="cpu")
    if args.show_hyp:
        print_hyp(hyp)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    clip_model, _ = clip.load("ViT-" + args.clip_model, device=device)
    G = Generator(hyp["clip_embedding_dim"], hyp["projection_dim"], hyp["noise_dim"], hyp["g_in_chans"],
                  hyp["g_out_chans"], hyp["num_stage"], device).to(device)
    D_lst = [Discriminator(hyp["projection_dim"], hyp["g_out_chans"], hyp["d_in_chans"], hyp["d_out_chans"],
                           hyp["clip_embedding_dim"], stage, device).to(device) for stage in range(hyp["num_stage"])]
    load_checkpoint(G, D_lst, args.checkpoint_path, args.load_epoch)

    txt_feature = clip_model.encode_text(clip.tokenize([args.prompt]).to(device))
    noise = torch.randn(txt_feature.shape[0], hyp["noise_dim"]).to(device)
    txt_feature = normalize(txt_feature).type(torch.float32)
    fake_images, _, _ = G(txt_feature, noise)
    for index, size in ((-3, 64), (-2, 128), (-1, 256)):
        torchvision.utils.save_image(denormalize_image(fake_images[index].cpu()), f"result_{size}.png")


if __name__ == "__main__":
    main()
