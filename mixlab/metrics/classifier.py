"""Train, save and load the frozen MNIST classifier whose features back the seed's FID/P/R protocol.

Recipe (the seed's): MNISTClassifier, Adam lr 1e-3, batch 256, 5 epochs, cross-entropy, inputs in
[-1,1] (u8/127.5 - 1, i.e. ToTensor + Normalize(0.5, 0.5)), no augmentation. `make classifier` runs
`python -m tools.data.weights classifier --root data --dataset mnist --out data/weights/mnist_lenet.pt`.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixlab.core.errors import DataNotFoundError
from mixlab.data.mnist import to_model_range
from mixlab.nets.lenet import MNISTClassifier


@torch.no_grad()
def accuracy(model: MNISTClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of `model` on x [N,1,28,28] with labels y [N]."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))  # [B,10]
        correct += (logits.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / max(1, len(x))


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[MNISTClassifier, float]:
    """Train MNISTClassifier with Adam on x [N,1,28,28] in [-1,1], y int64 [N]; return (model, test_acc).

    Prints one line per epoch (mean loss, test accuracy, seconds). The model is returned in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MNISTClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_y, test_y = train_y.long(), test_y.long()
    test_acc = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        start, total, count = time.time(), 0.0, 0
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = train_x[idx].to(device), train_y[idx].to(device)  # [B,1,28,28], [B]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        test_acc = accuracy(model, test_x, test_y)
        print(
            f"epoch {epoch}/{epochs}  loss {total / max(1, count):.4f}  test acc {test_acc:.4f}  ({time.time() - start:.1f}s)",
            flush=True,
        )
    model.eval()
    return model, test_acc


def save_classifier(model: MNISTClassifier, path: str | Path, meta: dict) -> Path:
    """Save {"state_dict", "meta"} to `path` (meta: plain numbers/strings, e.g. test_acc, epochs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": dict(meta)}, path)
    return path


def load_classifier(path: str | Path, device: str = "cpu", dataset: str = "mnist") -> MNISTClassifier:
    """Load a classifier saved by `save_classifier`, frozen and in eval mode."""
    path = Path(path)
    if not path.is_file():
        make = "make classifier" + ("" if dataset == "mnist" else f" DATASET={dataset}")
        raise DataNotFoundError(f"{dataset} feature classifier not found at {path}; run `{make}`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = MNISTClassifier()
    model.load_state_dict(blob["state_dict"])
    model.requires_grad_(False)
    return model.to(device).eval()


def build_classifier(
    root: str | Path,
    dataset: str,
    out: str | Path,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    force: bool = False,
) -> Path:
    """Train the feature classifier on `dataset` under `root` and save it to `out` (idempotent
    unless `force`). `make classifier` runs this."""
    out = Path(out)
    if out.is_file() and not force:
        print(f"classifier already present: {out} (use --force to retrain)")
        return out
    from mixlab.data.sources import load_split

    train_u8, train_y = load_split(root, dataset, "train", download=True)
    test_u8, test_y = load_split(root, dataset, "test", download=True)
    print(
        f"training the {dataset} feature classifier on {len(train_u8)} images, testing on {len(test_u8)} ({device})", flush=True
    )
    model, acc = train_classifier(
        to_model_range(train_u8),
        torch.from_numpy(np.array(train_y, dtype=np.int64)),
        to_model_range(test_u8),
        torch.from_numpy(np.array(test_y, dtype=np.int64)),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
    )
    save_classifier(model, out, dict(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, test_acc=acc))
    print(f"test accuracy {acc:.4f}; saved {out}")
    return out
