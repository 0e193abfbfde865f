"""Sample-quality metrics (FID, KID, precision/recall) on features from a frozen network.

Feature extractors map images [N,C,H,W] in [-1,1] to float64 numpy features [N,D]; the metric
maths is torch-fidelity's own (`metric_fid`, `metric_prc`, `metric_kid`), applied to those features.

Two protocols (`PROTOCOLS`):

- "inception": standard FID Inception pool3 (2048-d) via torch-fidelity's `inception-v3-compat`,
  P/R with k=3 (torch-fidelity's default). Comparable in kind with the literature (not in value:
  MNIST, few samples).
- "classifier": the seed's protocol, 128-d features of the frozen MNIST LeNet (`MNISTClassifier`),
  P/R with k=5. Note the definitional difference: the seed counted a generated point as "precise"
  only if it lay in the ball of its *nearest* real point; torch-fidelity (used here) implements
  Kynkäänniemi et al. 2019, where membership in *any* real point's k-NN ball counts. Our P/R are
  therefore >= the seed's definition on the same features.
"""

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import (
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from mixlab.core.validate import PositiveInt, checked
from mixlab.nets.lenet import MNISTClassifier

PROTOCOLS = {"inception": dict(k=3), "classifier": dict(k=5)}


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Float [N,C,H,W] in [-1,1] -> uint8 [N,3,H,W] (round((x+1)*127.5); grey channel repeated)."""
    u8 = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.repeat(1, 3, 1, 1)
    return u8


class InceptionFeatures:
    """2048-d pool3 features of the FID Inception (torch-fidelity `inception-v3-compat`).

    torch-fidelity resizes to 299x299 itself (TF1-compatible bilinear), so 28x28 input is fine.
    """

    name = "inception-v3-compat-2048"

    @checked
    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu", batch_size: PositiveInt = 64):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = FeatureExtractorInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights_path),
        ).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """[N,C,H,W] in [-1,1] -> float64 [N,2048]."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = to_uint8_rgb(images[i : i + self.batch_size]).to(self.device)  # [B,3,H,W] uint8
            out.append(self.net(batch)[0].double().cpu())  # [B,2048]
        return torch.cat(out).numpy() if out else np.zeros((0, 2048))


class ClassifierFeatures:
    """128-d post-ReLU penultimate features of the frozen MNIST classifier (no resize, 1 channel).

    `name` includes a digest of the weights, so feature caches are invalidated by retraining.
    """

    @checked
    def __init__(self, model: MNISTClassifier, device: str | torch.device = "cpu", batch_size: PositiveInt = 256):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = model.to(self.device).eval()
        digest = hashlib.sha1()
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().numpy().tobytes())
        self.name = f"mnist-lenet-{model.num_features}-{digest.hexdigest()[:10]}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """[N,1,28,28] in [-1,1] -> float64 [N,128]."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size].float().to(self.device)  # [B,1,28,28]
            out.append(self.model.features(batch).double().cpu())  # [B,128]
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.num_features))


@checked
def fidelity_metrics(real_feats: object, fake_feats: object, k: PositiveInt = 3, kid: bool = True) -> dict:
    """FID, precision, recall, F-score (and KID) between real [N,D] and generated [M,D] features.

    All computed by torch-fidelity's feature-level functions: FID from mean/covariance statistics,
    P/R by Kynkäänniemi k-NN balls (neighbourhood `k`), KID with the polynomial kernel over 100
    subsets of size min(1000, N, M). Returns plain floats under keys
    fid, precision, recall, f_score[, kid_mean, kid_std].
    """
    real = torch.from_numpy(np.array(real_feats, dtype=np.float64))  # [N,D]
    fake = torch.from_numpy(np.array(fake_feats, dtype=np.float64))  # [M,D]
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes must be [N,D] and [M,D], got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} samples per side, got {len(real)} real and {len(fake)} generated")

    fid = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), verbose=False)[
        "frechet_inception_distance"
    ]
    # torch-fidelity's convention: features_1 = generated, features_2 = real.
    prc = prc_features_to_metric(fake, real, prc_neighborhood=k, save_cpu_ram=False, verbose=False)
    out = dict(fid=float(fid), precision=float(prc["precision"]), recall=float(prc["recall"]), f_score=float(prc["f_score"]))
    if kid:
        subset = min(1000, len(real), len(fake))
        res = kid_features_to_metric(fake, real, kid_subset_size=subset, verbose=False)
        out["kid_mean"] = float(res["kernel_inception_distance_mean"])
        out["kid_std"] = float(res["kernel_inception_distance_std"])
    return out


def cached_features(
    extractor: Callable[[torch.Tensor], np.ndarray],
    images_fn: Callable[[], torch.Tensor],
    cache_path: str | Path,
    expected_count: int | None = None,
) -> np.ndarray:
    """Features of `images_fn()` under `extractor`, cached in an .npz at `cache_path`.

    The cache stores the extractor's `name` and the image count; it is recomputed when the name
    differs or (if given) `expected_count` differs. `images_fn` is only called on a cache miss.
    """
    path = Path(cache_path)
    name = getattr(extractor, "name", type(extractor).__name__)
    if path.is_file():
        with np.load(path, allow_pickle=False) as blob:
            if str(blob["name"]) == name and (expected_count is None or int(blob["count"]) == expected_count):
                return blob["features"]
    feats = np.asarray(extractor(images_fn()), dtype=np.float64)  # [N,D]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, features=feats, name=np.array(name), count=np.array(len(feats)))
    tmp.replace(path)
    return feats
