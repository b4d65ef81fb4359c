"""Time each phase of the evaluation on random weights, and extrapolate to the 6000-image test split.

    python -m benchmarks.evaluation_time --num_images 200 --batch_size 64 --device cuda

Builds everything locally (nothing is downloaded): a course-size generator (Ng 1024, 3 stages), a random-weight
InceptionV3 in torch-fidelity's layout, a random CLIP (ViT-B/32 layout by default) and a test zip of smooth
random pictures in the contract's format. The figures themselves are meaningless; the seconds are not.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import zipfile

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

import network
from t2i import clip_utils
from t2i.evaluation import evaluator as evaluation
from t2i.evaluation import metrics

TEST_SPLIT = 6000


def write_zip(path: str, count: int, embedding_dim: int, seed: int = 0) -> None:
    """A test zip in the contract's format: smooth random 256 px pictures, random embeddings, 10 captions each."""
    rng = np.random.default_rng(seed)
    img_features, txt_features = [], []
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            coarse = torch.from_numpy(rng.random((1, 3, 8, 8), dtype=np.float32))
            image = F.interpolate(coarse, size=(256, 256), mode="bicubic", align_corners=False)[0]
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buffer = io.BytesIO()
            PIL.Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
            name = f"{i // 1000:05d}/img{i:08d}.png"
            archive.writestr(name, buffer.getvalue())
            img_features.append([name, rng.normal(size=embedding_dim).tolist()])
            txt_features.append([name, rng.normal(size=(10, embedding_dim)).tolist()])
        archive.writestr("dataset.json", json.dumps({"clip_img_features": img_features,
                                                     "clip_txt_features": txt_features}))


def timed(label: str, results: dict, function, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    results[label] = time.perf_counter() - started
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clip", choices=sorted(clip_utils.CLIP_PRESETS), default="vit-b-32")
    parser.add_argument("--g_in_chans", type=int, default=1024)
    args = parser.parse_args()
    device = torch.device(args.device)

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        zip_path = os.path.join(folder, "test.zip")
        write_zip(zip_path, args.num_images, 512)
        clip_path = clip_utils.make_random_clip(os.path.join(folder, "clip.pt"), args.clip, 512)
        inception_path = metrics.make_random_inception(os.path.join(folder, "inception.pt"))
        torch.manual_seed(0)
        generator = network.Generator(512, 128, 100, args.g_in_chans, 3, 3, device).to(device)
        generator.apply(network.weight_init)

        dataset = timed("load test zip", seconds, evaluation.load_test_dataset, zip_path, 512, False)
        clip_model = clip_utils.load_clip(clip_path, device)
        evaluator = timed("load inception", seconds, lambda: evaluation.Evaluator(
            dataset, batch_size=args.batch_size, device=device, clip_model=clip_model,
            inception_weights=inception_path, progress=False))
        timed("real inception features", seconds, evaluator.real_features)
        timed("real CLIP score", seconds, evaluator.real_clip_score)
        images = timed("generate", seconds, evaluator.generate, generator)
        features = timed("generated inception features", seconds, metrics.inception_features,
                         evaluator.inception, images, args.batch_size, False)
        timed("generated CLIP embeddings", seconds, metrics.clip_image_embeddings, clip_model, images,
              args.batch_size, False)
        timed("FID, KID, IS from features", seconds, metrics.fidelity_metrics, features, evaluator.real_features())
        timed("whole call (cached real features)", seconds, evaluator, generator,
              os.path.join(folder, "grid.png"))

    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)")
    print(f"{args.num_images} images, batch {args.batch_size}, {device_name}, CLIP {args.clip}")
    for label, value in seconds.items():
        print(f"  {label:36s} {value:8.2f} s")
    per_image = (seconds["real inception features"] + seconds["real CLIP score"]
                 + seconds["whole call (cached real features)"]) / args.num_images
    print(f"first evaluation of the {TEST_SPLIT}-image test split: about {per_image * TEST_SPLIT / 60:.1f} min "
          f"(plus loading the zip); later ones with cached real features: about "
          f"{seconds['whole call (cached real features)'] / args.num_images * TEST_SPLIT / 60:.1f} min")


if __name__ == "__main__":
    main()
