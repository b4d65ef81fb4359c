"""Our re-creation of the course's plain `generate_image.py`, written from the contract.

Used only to prove that checkpoints from our train.py load with the graders' plain file (t2i.harness runs
it); the package never imports it at run time. Writes result_64.png, result_128.png and result_256.png in the
working directory.
"""
import argparse
import os

import clip
import torch
from torchvision.utils import save_image

from network import Generator
from train_utils import denormalize_image, normalize, print_hyp


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=str, required=True)
    parser.add_argument("--load_epoch", type=int, required=True)
    parser.add_argument("--checkpoint_path", type=str, required=True)
    parser.add_argument("--show_hyp", action="store_true")
    parser.add_argument("--clip_model", type=str, default="B/32", choices=["B/32", "L/14", "B/16"])
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    h = torch.load(os.path.join(args.checkpoint_path, "hyperparameter.pt"))
    if args.show_hyp:
        print_hyp(h)

    G = Generator(h["clip_embedding_dim"], h["projection_dim"], h["noise_dim"], h["g_in_chans"], h["g_out_chans"],
                  h["num_stage"], device).to(device)
    G.load_state_dict(torch.load(os.path.join(args.checkpoint_path, f"epoch_{args.load_epoch}_Gen.pt"),
                                 map_location=device))
    G.eval()

    clip_model, _ = clip.load("ViT-" + args.clip_model, device)
    with torch.no_grad():
        txt_feature = normalize(clip_model.encode_text(clip.tokenize(args.prompt).to(device))).float()
        noise = torch.randn(1, h["noise_dim"]).to(device)
        fake_images, _, _ = G(txt_feature, noise)

    save_image(denormalize_image(fake_images[-3]), "result_64.png")
    save_image(denormalize_image(fake_images[-2]), "result_128.png")
    save_image(denormalize_image(fake_images[-1]), "result_256.png")
