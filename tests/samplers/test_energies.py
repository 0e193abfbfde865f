"""Energies against closed forms: gradients vs autograd, log Z by quadrature / Monte Carlo,
exact samplers' moments, the LGCP against a dense numpy implementation and on the real data."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import integrate, stats
from scipy.spatial.distance import cdist
from support import ROOT

from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.samplers import energies as E
from mixlab.samplers.energies import GMM25, Energy, Funnel, Manywell
from mixlab.samplers.lgcp import LGCP, points_file
from tools.data.lgcp import fetch_finpines, read_finpines_txt


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _synthetic_lgcp(grid=8, n=30, seed=0):
    points = np.random.default_rng(seed).uniform(size=(n, 2))
    points[0] = (1.0, 0.5)  # a point on the upper edge goes to the last row
    return points, LGCP(root=None, grid=grid, points=points)


def _energies():
    return [GMM25(), Funnel(10), Manywell(8), _synthetic_lgcp()[1]]


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("energy", _energies(), ids=lambda e: type(e).__name__)
def test_closed_form_gradient_matches_autograd(energy):
    x = torch.randn(16, energy.dim, generator=_gen(1), dtype=torch.float64) * 2
    if isinstance(energy, LGCP):
        x = energy.mu + 0.5 * x
    closed = energy.grad_log_reward(x)
    auto = Energy.grad_log_reward(energy, x)  # the base class: autograd through log_reward
    assert closed.shape == x.shape and energy.log_reward(x).shape == (16,)
    torch.testing.assert_close(closed, auto, rtol=1e-10, atol=1e-9)
    log_r, grad = energy.log_reward_and_grad(x)
    torch.testing.assert_close(log_r, energy.log_reward(x), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-9)


# -------------------------------------------------------------------------------- Manywell
def test_manywell_constants_by_quadrature():
    well = lambda a: math.exp(-(a**4) + 6 * a**2 + 0.5 * a)  # noqa: E731
    z_a = integrate.quad(well, -np.inf, np.inf, epsabs=0, epsrel=1e-12)[0]
    assert z_a == pytest.approx(11784.50927, abs=1e-5) and z_a == pytest.approx(E.MANYWELL_Z_A, rel=1e-10)
    mean = integrate.quad(lambda a: a * well(a), -10, 10, epsabs=0, epsrel=1e-12)[0] / z_a
    second = integrate.quad(lambda a: a * a * well(a), -10, 10, epsabs=0, epsrel=1e-12)[0] / z_a
    shallow = integrate.quad(well, -10, 0, epsabs=0, epsrel=1e-12)[0] / z_a
    assert (round(mean, 6), round(second, 6), round(shallow, 6)) == (1.187961, 2.959806, 0.155693)
    assert E.MANYWELL_MEAN_A == pytest.approx(mean, rel=1e-9) and E.MANYWELL_SHALLOW_SHARE == pytest.approx(shallow, rel=1e-9)
    assert E.MANYWELL_LOG_Z_PAIR == pytest.approx(10.293480, abs=1e-6)
    for dim, log_z in ((8, 41.1739), (32, 164.6957), (128, 658.7827), (512, 2635.1308)):
        assert Manywell(dim).log_z == pytest.approx(log_z, abs=1e-4)


def test_manywell_log_reward_integrates_to_its_log_z():
    """The energy's own log R on one pair, integrated on a grid (trapezoid, spectrally accurate here)."""
    energy = Manywell(2)
    a = torch.linspace(-5, 5, 20001, dtype=torch.float64)
    b = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    za = torch.trapezoid(torch.exp(energy.log_reward(torch.stack([a, torch.zeros_like(a)], 1))), a)
    zb = torch.trapezoid(torch.exp(energy.log_reward(torch.stack([torch.zeros_like(b), b], 1))), b)
    assert math.log(za) + math.log(zb) == pytest.approx(energy.log_z, abs=1e-9)
    x = torch.randn(5, 8, generator=_gen(), dtype=torch.float64)  # pairs are consecutive coordinates
    pairs = sum(energy.log_reward(x[:, 2 * k : 2 * k + 2]) for k in range(4))
    torch.testing.assert_close(Manywell(8).log_reward(x), pairs)


def test_manywell_sampler_moments():
    x = Manywell(8).sample(50_000, _gen(3))  # 200k draws of a and of b
    assert x.shape == (50_000, 8) and x.dtype == torch.float32
    x = x.double()
    a, b = x[:, 0::2], x[:, 1::2]
    assert a.mean().item() == pytest.approx(E.MANYWELL_MEAN_A, abs=0.015)  # SE ~ 0.003
    assert (a**2).mean().item() == pytest.approx(E.MANYWELL_MEAN_A2, abs=0.03)
    assert Manywell.shallow_share(x) == pytest.approx(E.MANYWELL_SHALLOW_SHARE, abs=0.005)
    assert abs(b.mean().item()) < 0.01 and b.var().item() == pytest.approx(1.0, abs=0.02)
    # the rejection envelope 3 Z_a q(a) covers exp(log R(a)) everywhere (else the sampler is biased)
    grid = np.linspace(-6, 6, 200_001)
    q = 0.2 * stats.norm.pdf(grid, -1.7, 0.5) + 0.8 * stats.norm.pdf(grid, 1.7, 0.5)
    assert (np.exp(-(grid**4) + 6 * grid**2 + 0.5 * grid) / (E.MANYWELL_Z_A * q)).max() < Manywell.ENVELOPE
    deep = Manywell(8).sample(2000, _gen(4), positive_only=True)
    assert Manywell.shallow_share(deep) == 0.0


# ---------------------------------------------------------------------------- 25GMM, Funnel
def test_gmm25_is_normalised_on_a_grid():
    energy = GMM25()
    t = torch.linspace(-16, 16, 641, dtype=torch.float64)
    density = torch.exp(energy.log_reward(torch.cartesian_prod(t, t))).reshape(641, 641)
    z = torch.trapezoid(torch.trapezoid(density, t, dim=1), t)
    assert math.log(z) == pytest.approx(energy.log_z, abs=1e-8) and energy.log_z == 0.0


def test_gmm25_sampler_moments_and_mode_counter():
    energy = GMM25()
    x = energy.sample(50_000, _gen(5))
    assert x.shape == (50_000, 2)
    assert x.double().mean(0).abs().max() < 0.1
    torch.testing.assert_close(x.double().var(0), torch.full((2,), 50.3, dtype=torch.float64), atol=0.7, rtol=0)
    counts = energy.mode_counts(x)
    inside = 1 - math.exp(-4.5)  # P(|z| <= 3 std) for a 2-d Gaussian (chi^2_2 <= 9)
    assert counts.sum().item() / 50_000 == pytest.approx(inside, abs=0.002) and (counts > 0).sum() == 25
    assert (counts.double() / 50_000 - inside / 25).abs().max() < 0.005
    assert torch.equal(energy.mode_counts(energy.means.float()), torch.ones(25, dtype=torch.long))
    assert energy.mode_counts(torch.tensor([[2.5, 2.5], [20.0, 0.0]])).sum() == 0  # between / beyond modes
    no_corner = energy.sample(5000, _gen(6), weights=torch.tensor([0.0] + [1.0] * 24))
    assert energy.mode_counts(no_corner)[0] == 0 and (energy.mode_counts(no_corner) > 0).sum() == 24


def test_funnel_normalised_in_2d_grid_and_10d_importance_sampling():
    two = Funnel(dim=2)
    x0 = torch.linspace(-30, 30, 1201, dtype=torch.float64)  # 10 std
    t = torch.linspace(-40, 40, 2001, dtype=torch.float64)  # x1 = e^{x0/2} t: the grid follows the funnel's width
    scale = torch.exp(x0 / 2)[:, None]
    x = torch.stack([x0[:, None].expand(-1, len(t)), scale * t], -1).reshape(-1, 2)
    density = torch.exp(two.log_reward(x)).reshape(len(x0), len(t)) * scale  # dx1 = e^{x0/2} dt
    assert math.log(torch.trapezoid(torch.trapezoid(density, t, dim=1), x0)) == pytest.approx(0.0, abs=1e-8)
    # 10-d: proposal x0 ~ N(0, 9), x_i | x0 ~ N(0, 1.2^2 e^x0) -> log Z = logmeanexp(log R - log q)
    energy, g = Funnel(10), _gen(7)
    z = torch.randn(200_000, 10, generator=g, dtype=torch.float64)
    x = torch.cat([3 * z[:, :1], 1.2 * torch.exp(1.5 * z[:, :1]) * z[:, 1:]], 1)
    log_q = stats.norm.logpdf(x[:, 0].numpy(), 0, 3) + stats.norm.logpdf(
        x[:, 1:].numpy(), 0, 1.2 * np.exp(x[:, :1].numpy() / 2)
    ).sum(1)
    log_w = energy.log_reward(x) - torch.from_numpy(log_q)
    assert (torch.logsumexp(log_w, 0) - math.log(len(x))).item() == pytest.approx(0.0, abs=0.01)
    assert energy.log_z == 0.0 and energy.dim == 10


def test_funnel_sampler_moments():
    x = Funnel(10).sample(100_000, _gen(8)).double()
    assert x[:, 0].mean().item() == pytest.approx(0, abs=0.05) and x[:, 0].var().item() == pytest.approx(9, rel=0.02)
    white = x[:, 1:] / torch.exp(x[:, :1] / 2)  # x_i | x0 ~ N(0, e^x0)
    assert white.mean().abs().item() < 0.01 and white.var().item() == pytest.approx(1, abs=0.01)


# ---------------------------------------------------------------------------------- LGCP
def test_lgcp_matches_a_dense_numpy_implementation_on_an_8x8_grid():
    points, energy = _synthetic_lgcp(grid=8, n=30)
    counts = np.zeros(64)
    for px, py in points:  # explicit loop: row = floor(8x), col = floor(8y), clamped, row-major
        counts[min(int(px * 8), 7) * 8 + min(int(py * 8), 7)] += 1
    cells = np.array([(i, j) for i in range(8) for j in range(8)], float)
    kernel = 1.91 * np.exp(-cdist(cells, cells) / (8 / 33))
    mu = math.log(30) - 1.91 / 2
    f = mu + 0.7 * np.random.default_rng(1).standard_normal((5, 64))
    dense = stats.multivariate_normal(np.full(64, mu), kernel).logpdf(f) + (f * counts - np.exp(f) / 64).sum(1)
    np.testing.assert_allclose(energy.log_reward(torch.from_numpy(f)).numpy(), dense, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(energy.counts.numpy(), counts)
    assert energy.log_det_kernel == pytest.approx(np.linalg.slogdet(kernel)[1], rel=1e-12)
    assert energy.dim == 64 and energy.log_z is None and energy.sample(3) is None


@pytest.fixture(scope="module")
def finpines_root(tmp_path_factory):
    """data/ when `make data-lgcp` ran, else fetched into a tmp dir the way make does."""
    if points_file(ROOT / "data").is_file():
        return ROOT / "data"
    root = tmp_path_factory.mktemp("lgcp")
    fetch_finpines(root, quiet=True)
    return root


def test_lgcp_on_the_finnish_pines(finpines_root):
    energy = LGCP(str(finpines_root))
    counts = energy.counts
    assert (energy.n_points, int(counts.sum()), int((counts > 0).sum()), int(counts.max())) == (126, 126, 111, 3)
    assert energy.dim == 1600 and energy.log_z is None and energy.sample(10) is None
    assert energy.log_det_kernel == pytest.approx(451.41096, abs=1e-5)
    assert energy.mu == pytest.approx(math.log(126) - 1.91 / 2) and energy.mu == pytest.approx(3.881282, abs=1e-6)
    flat = torch.full((2, 1600), energy.mu, dtype=torch.float64)
    assert energy.log_reward(flat).tolist() == pytest.approx([-1255.4519] * 2, abs=1e-4)
    assert energy.log_reward(flat.float()).tolist() == pytest.approx([-1255.4519] * 2, abs=2e-2)  # fp32 path
    assert (finpines_root / "finpines" / "SOURCE.txt").read_text().startswith("Finnish pine saplings")


def test_lgcp_points_are_checked_against_their_manifest(finpines_root, tmp_path):
    """`make data-lgcp` writes a manifest (and adds one to points written by an older version);
    points changed in place are one line naming the file and `make data-lgcp`."""
    import shutil

    from mixlab.data.manifest import CorruptDataError, read_manifest

    copy = tmp_path / "finpines"
    shutil.copytree(finpines_root / "finpines", copy)
    (copy / "manifest.json").unlink(missing_ok=True)
    assert fetch_finpines(tmp_path, quiet=True) == copy / "points.csv"  # present: kept, manifest added
    assert "points.csv" in read_manifest(copy)["files"]
    LGCP(str(tmp_path))
    text = (copy / "points.csv").read_text()
    (copy / "points.csv").write_text(text[:-2] + ("1" if text[-2] != "1" else "2") + "\n")  # last digit, same size
    with pytest.raises(CorruptDataError, match=r"points\.csv: sha256 differs .*make data-lgcp"):
        LGCP(str(tmp_path))


# --------------------------------------------------------------------------------- errors
def test_errors_name_the_key_or_the_command(tmp_path):
    with pytest.raises(ArgumentError, match=r"^dim: must be a multiple of 2, got 31$") as err:
        Manywell(31)
    assert err.value.arg == "dim"
    for bad in (lambda: Funnel(1), lambda: GMM25(variance=0.0), lambda: LGCP(root=None, grid=0, points=[[0.5, 0.5]])):
        with pytest.raises(ArgumentError):
            bad()
    node = OmegaConf.create({"_target_": "mixlab.samplers.energies.Manywell", "dim": 7})
    with pytest.raises(ConfigError, match=r"^model\.energy\.dim: ") as err:  # the constructor's error, not Hydra's wrapper
        build(node, key="model.energy")
    assert err.value.key == "model.energy.dim" and len(str(err.value).splitlines()) == 1
    built = build(OmegaConf.create({"_target_": "mixlab.samplers.energies.Manywell", "dim": 8}))
    assert isinstance(built, Manywell) and built.dim == 8
    with pytest.raises(DataNotFoundError, match="make data-lgcp") as err:
        LGCP(str(tmp_path))
    assert len(str(err.value).splitlines()) == 1
    bad = tmp_path / "finpines.txt"
    bad.write_text("x y diameter height\n0.0 0.0 1 1.7\n6.0 0.0 1 1.7\n")  # x = 6 is outside [-5, 5]
    with pytest.raises(DataNotFoundError, match="outside the window"):
        read_finpines_txt(bad)


def test_energies_are_modules_without_checkpoint_state():
    for energy in _energies():
        assert isinstance(energy, torch.nn.Module) and energy.state_dict() == {}
