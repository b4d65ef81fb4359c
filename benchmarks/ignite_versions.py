"""pytorch-ignite's FID and IS on fixed inputs, printed with every digit: run it under each (ignite, SciPy) pair.

The inputs are the protocol's size: 46 batches of 128 pairs of 1000-class probability vectors (seeded softmaxes of
random logits, two slightly different distributions), given to FID and InceptionScore through an identity
extractor, so only the metrics' own arithmetic (and SciPy's sqrtm) is compared. docs/evaluation.md has the pairs
run and how to put another ignite or SciPy first on the path, e.g.

    PYTHONPATH=/tmp/ignite-0.4.12:/tmp/scipy-1.10.1 python -m benchmarks.ignite_versions
"""
from __future__ import annotations

import argparse

import numpy
import scipy
import torch
from ignite import __version__ as ignite_version
from ignite.engine import Engine
from ignite.metrics import FID, InceptionScore

BATCHES, BATCH, CLASSES = 46, 128, 1000


def probability_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    bias = torch.randn(CLASSES, generator=generator) * 2
    fake = torch.softmax(3 * torch.randn(BATCHES * BATCH, CLASSES, generator=generator) + bias, dim=1)
    real = torch.softmax(3 * torch.randn(BATCHES * BATCH, CLASSES, generator=generator) + bias.roll(1), dim=1)
    return [(fake[i:i + BATCH], real[i:i + BATCH]) for i in range(0, len(fake), BATCH)]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    fid = FID(num_features=CLASSES, feature_extractor=torch.nn.Identity())
    inception_score = InceptionScore(num_features=CLASSES, feature_extractor=torch.nn.Identity(),
                                     output_transform=lambda output: output[0])
    engine = Engine(lambda engine, batch: batch)
    fid.attach(engine, "fid")
    inception_score.attach(engine, "is")
    print(f"ignite {ignite_version}, scipy {scipy.__version__}, numpy {numpy.__version__}, torch {torch.__version__}")
    try:
        engine.run(probability_batches(), max_epochs=1)
    except Exception as err:  # an ignite that does not run with this SciPy: its error is the result
        print(f"{type(err).__name__}: {err}")
        return
    print(f"FID {engine.state.metrics['fid']!r}  IS {engine.state.metrics['is']!r}")


if __name__ == "__main__":
    main()
