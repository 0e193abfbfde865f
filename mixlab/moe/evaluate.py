"""The `classifier` evaluator: an image-classifier checkpoint (MoE or per-subset model) on its
test split: `make eval ckpt=PATH [split=test out_dir=DIR]` (or `make eval-moe`).

Writes to DIR (default <run dir>/eval): accuracy.md + accuracy.json (overall and per class),
confusion_matrix.png, sample_predictions.png (one test image for each of up to 10 classes with
true / predicted label and the gate contributions) and, for the MoE, expert_analysis.png.
The data module is rebuilt from the checkpoint's config, so the normalisation statistics are
the training split's; the gate temperature is the checkpoint's buffer (the final one).
"""

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mixlab.core.checkpoint import load_system
from mixlab.core.config import build, require
from mixlab.core.evaluate import resolve_device
from mixlab.moe.figures import plot_confusion, plot_expert_analysis, plot_sample_predictions


@torch.no_grad()
def predict(system, loader, device) -> dict[str, torch.Tensor]:
    """Logits argmax, gates (None for a single model) and labels over `loader`."""
    preds, gates, labels, images = [], [], [], []
    for x, y in loader:
        out = system(x.to(device))
        logits, g = out if isinstance(out, tuple) else (out, None)
        preds.append(logits.argmax(1).cpu())
        labels.append(y)
        images.append(x)
        if g is not None:
            gates.append(g.cpu())
    return {
        "pred": torch.cat(preds),
        "label": torch.cat(labels),
        "x": torch.cat(images),
        "gates": torch.cat(gates) if gates else None,
    }


def accuracy_table(pred: torch.Tensor, label: torch.Tensor, names: list[str]) -> dict:
    per_class = {}
    for c, name in enumerate(names):
        mask = label == c
        per_class[name] = {
            "n": int(mask.sum()),
            "accuracy": float((pred[mask] == c).float().mean()) if mask.any() else float("nan"),
        }
    return {"overall": float((pred == label).float().mean()), "n": int(len(label)), "per_class": per_class}


def confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> np.ndarray:
    return torch.bincount(label * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes).numpy()


def evaluate_classifier(
    ckpt: str | Path, out: str | Path | None = None, split: str = "test", seed: int = 0, device: torch.device | None = None
) -> dict:
    require(split in ("val", "test"), "split", f"unknown split '{split}' (choose val|test)")
    device = device or resolve_device("auto")
    system, run_cfg, _ = load_system(ckpt, device)
    dm = build(run_cfg.data)
    dm.setup("test")
    system.class_names = dm.class_names
    out = Path(out) if out else Path(ckpt).resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    res = predict(system, getattr(dm, f"{split}_dataloader")(), device)
    names = dm.class_names
    table = accuracy_table(res["pred"], res["label"], names)
    table.update({"ckpt": str(ckpt), "split": split, "task": dm.task, "source": type(dm.source).__name__})
    if hasattr(system, "temperature"):
        table["temperature"] = float(system.temperature)
    files = {
        "confusion": str(plot_confusion(confusion(res["pred"], res["label"], len(names)), names, out / "confusion_matrix.png"))
    }

    rng = np.random.default_rng(seed)
    classes = sorted(rng.choice(len(names), size=min(10, len(names)), replace=False).tolist())
    picks = [int(rng.choice(np.flatnonzero(res["label"].numpy() == c))) for c in classes if (res["label"] == c).any()]
    images = dm.denormalise(res["x"][picks]).permute(0, 2, 3, 1).numpy()
    gates = res["gates"][picks].numpy() if res["gates"] is not None else np.ones((len(picks), 1))
    files["samples"] = str(
        plot_sample_predictions(
            images, res["label"][picks].tolist(), res["pred"][picks].tolist(), gates, names, out / "sample_predictions.png"
        )
    )
    if res["gates"] is not None:
        onehot = torch.nn.functional.one_hot(res["label"], len(names)).float()
        count = onehot.sum(0)
        contribution = (res["gates"].T @ onehot / torch.where(count > 0, count, torch.nan)).numpy()  # NaN: a class with no sample
        table["mean_gate_per_class"] = {name: contribution[:, c].round(4).tolist() for c, name in enumerate(names)}
        system._stats = {}
        with torch.no_grad():
            for x, y in getattr(dm, f"{split}_dataloader")():
                system._accumulate(x.to(device), y.to(device))
        _, expert_acc = system.expert_statistics()
        files["expert_analysis"] = str(
            plot_expert_analysis(
                contribution,
                expert_acc.numpy(),
                names,
                out / "expert_analysis.png",
                title=f"{split}, T = {table['temperature']:.2f}",
            )
        )
    table["files"] = files
    from mixlab.core.checkpoint_io import write_json_atomic

    write_json_atomic(out / "accuracy.json", table)
    lines = [
        f"# {dm.task} ({table['source']}), {split} split: {100 * table['overall']:.2f}% of {table['n']}",
        "",
        "| class | n | accuracy (%) |" + ("" if res["gates"] is None else " mean gate per expert |"),
        "|---|---|---|" + ("" if res["gates"] is None else "---|"),
    ]
    for name, row in table["per_class"].items():
        gate = "" if res["gates"] is None else " " + " / ".join(f"{g:.2f}" for g in table["mean_gate_per_class"][name]) + " |"
        lines.append(f"| {name} | {row['n']} | {100 * row['accuracy']:.1f} |{gate}")
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"[mixlab] wrote {out}/accuracy.md, accuracy.json, " + ", ".join(Path(f).name for f in files.values()))
    return table


def evaluate(cfg: DictConfig) -> dict:
    """The `classifier` evaluator (conf/evaluator/classifier.yaml)."""
    return evaluate_classifier(cfg.ckpt, cfg.get("out_dir"), cfg.split, cfg.seed, resolve_device(cfg.device))
