"""The facts behind docs/evaluation.md's reading of the graders' FID and IS, printed from the code that runs.

1. What torchvision's ToPILImage makes of the real images, which the notebook passes in [-1, 1]: x * 255 cast to
   uint8, so negative values wrap around.
2. What ignite's default feature extractor is: torchvision's Inception v3 followed by a Softmax, so FID and IS
   both read 1000 class probabilities (read from the objects `course_metrics.graders_metrics` builds, on the
   random stand-in: nothing is downloaded).
3. The FID of 3.2e-38 reported in issue 32 (uniform-noise images against the same images halved in brightness,
   random-weight Inception): reproduced with torchvision's own random initialisation, beside the calibrated
   stand-in of the tests, with what the 2048 pool features say about the same two sets.

    python -m benchmarks.course_protocol_facts --images 16
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from ignite.engine import Engine
from torchvision import transforms
from torchvision.models import inception_v3

from t2i.evaluation import course as course_metrics


def wrap_table() -> None:
    values = torch.tensor([-1.0, -0.5, -0.2, -0.01, 0.0, 0.2, 0.5, 1.0])
    images = values.view(1, 1, -1).expand(3, 1, -1).contiguous()
    cast = np.asarray(transforms.ToPILImage()(images))[0, :, 0]
    print("1. ToPILImage of a float image: value in [-1, 1] -> uint8 pixel (what Inception sees of a real image)")
    print("   " + "  ".join(f"{v:+.2f}->{c:3d}" for v, c in zip(values.tolist(), cast.tolist())))
    print("   a test image's pixel P (0-255) becomes 2P + 1 below 128 and 2P - 255 from 128: its brightness doubled "
          "modulo 256 (127 turns white, 128 black)")


def extractor_facts(weights: str) -> None:
    fid, inception_score = course_metrics.graders_metrics(weights, torch.device("cpu"))
    model = fid._feature_extractor.model
    print(f"2. ignite FID: num_features {fid._num_features}, extractor {type(fid._feature_extractor).__name__}, "
          f"its last layer {model.fc}, transform_input {model.transform_input}; InceptionScore num_features "
          f"{inception_score._num_features}")
    print("   so both figures read 1000 softmax probabilities, not the 2048 pool features of the standard FID: "
          "|mu1 - mu2|^2 <= 2 and tr(sigma) <= 1 for probability vectors, so this FID lies in [0, 4]")


def pool_and_probabilities(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pooled: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
    with torch.no_grad():
        logits = model(images)
    hook.remove()
    return pooled[0].double(), torch.softmax(logits.double(), dim=1)


def noise_against_halved(weights: str, name: str, images: int) -> None:
    """ignite's FID and IS of uniform noise against the same images at half brightness, with `weights`."""
    model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    noise = torch.rand(images, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    (pool_1, probs_1), (pool_2, probs_2) = (pool_and_probabilities(model, x) for x in (noise, noise * 0.5))
    fid, inception_score = course_metrics.graders_metrics(weights, torch.device("cpu"))
    engine = Engine(lambda engine, batch: batch)
    fid.attach(engine, "fid")
    inception_score.attach(engine, "is")
    engine.run([(noise, noise * 0.5)], max_epochs=1)
    print(f"   {name}: top class probability {probs_1.max(1).values.min():.4f}-{probs_1.max(1).values.max():.4f} "
          f"(noise), {probs_2.max(1).values.min():.4f}-{probs_2.max(1).values.max():.4f} (halved); classes "
          f"{sorted(set(probs_1.argmax(1).tolist()))} / {sorted(set(probs_2.argmax(1).tolist()))}")
    print(f"      ignite FID {engine.state.metrics['fid']:.3e}, IS {engine.state.metrics['is']:.6f}; pool features: "
          f"|mu1 - mu2| = {(pool_1.mean(0) - pool_2.mean(0)).norm():.1f}, so a FID on them would be at least "
          f"{(pool_1.mean(0) - pool_2.mean(0)).pow(2).sum():.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="noise images in part 3")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wrap_table()
    with tempfile.TemporaryDirectory() as folder:
        standin = course_metrics.make_random_course_inception(os.path.join(folder, "standin.pth"))
        extractor_facts(standin)
        torchvision_init = os.path.join(folder, "torchvision_init.pth")
        torch.manual_seed(0)
        torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), torchvision_init)
        print(f"3. {args.images} uniform-noise images against the same images halved in brightness:")
        noise_against_halved(torchvision_init, "torchvision's random init", args.images)
        noise_against_halved(standin, "the calibrated stand-in (make_random_course_inception)", args.images)


if __name__ == "__main__":
    main()
