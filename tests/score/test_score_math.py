"""Diffusion maths against closed forms (Gaussian data has an exact denoiser)."""

import math

import pytest
import torch

from mixlab.core.errors import ArgumentError
from mixlab.nets.scorenet import ScoreNet
from mixlab.score.losses import EDMLoss, EpsilonLoss
from mixlab.score.precond import EDMPrecond, EpsilonPrecond
from mixlab.score.schedule import GeometricGrid, KarrasGrid, LogNormalSigma, LogUniformSigma, geometric_sigmas, karras_sigmas
from mixlab.score.solvers import Euler, Heun, ODESampling, euler, heun, sample

MU, S = 0.3, 0.5  # data ~ N(MU, S^2 I)


class ExactGaussianEps(torch.nn.Module):
    """eps_hat(x, sigma) = sigma (x - mu) / (s^2 + sigma^2): the optimal eps for Gaussian data."""

    def forward(self, x, sigma):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return s * (x - MU) / (S**2 + s**2)

    def denoise(self, x, sigma):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return MU + S**2 / (S**2 + s**2) * (x - MU)


def test_scorenet_matches_seed_size_and_shapes():
    net = ScoreNet()  # seed: base 32, mult (1,2), 2 res blocks, time 128
    assert sum(p.numel() for p in net.parameters()) == 901_121
    out = net(torch.randn(3, 1, 28, 28), torch.randn(3))
    assert out.shape == (3, 1, 28, 28)


@pytest.mark.parametrize("grid", [geometric_sigmas, karras_sigmas, GeometricGrid(), KarrasGrid()])
def test_sigma_grids_monotone_end_at_zero(grid):
    s = grid(50, 0.01, 80.0)
    assert len(s) == 51 and s[-1] == 0
    assert torch.isclose(s[0], torch.tensor(80.0)) and torch.isclose(s[-2], torch.tensor(0.01))
    assert (s[1:] < s[:-1]).all()


def test_geometric_grid_is_the_seed_formula():
    s = geometric_sigmas(200, 0.01, 80.0)
    i = 57
    expected = 80.0 ** (1 - i / 199) * 0.01 ** (i / 199)
    assert math.isclose(float(s[i]), expected, rel_tol=1e-5)


def test_log_uniform_sigma_endpoints_and_law():
    g = torch.Generator().manual_seed(0)
    s = LogUniformSigma(0.01, 80.0)(200_000, generator=g)
    assert s.min() >= 0.01 and s.max() <= 80.0
    u = (s.log() - math.log(0.01)) / (math.log(80) - math.log(0.01))  # should be U(0, 1)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    ln = LogNormalSigma(-1.2, 1.2)(200_000, generator=g).log()
    assert abs(float(ln.mean()) + 1.2) < 0.02 and abs(float(ln.std()) - 1.2) < 0.02


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_eps_loss_of_exact_denoiser_is_the_irreducible_error(sigma):
    # E||eps - E[eps|x]||^2 per pixel = Var(eps | x) = s^2 / (s^2 + sigma^2)
    g = torch.Generator().manual_seed(1)
    x0 = MU + S * torch.randn(4000, 1, 8, 8, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    sig = torch.full((4000,), sigma)
    loss = EpsilonLoss()(ExactGaussianEps(), x0, sig, noise)
    assert loss.shape == (4000,)
    assert float(loss.mean()) == pytest.approx(S**2 / (S**2 + sigma**2), rel=0.03)

    class Biased(ExactGaussianEps):
        def forward(self, x, s):
            return super().forward(x, s) + 0.1

    assert float(EpsilonLoss()(Biased(), x0, sig, noise).mean()) > float(loss.mean()) + 0.009


def test_edm_loss_is_weighted_denoiser_error():
    g = torch.Generator().manual_seed(2)
    x0, noise, sig = (
        torch.randn(64, 1, 4, 4, generator=g),
        torch.randn(64, 1, 4, 4, generator=g),
        torch.rand(64, generator=g) + 0.1,
    )
    model = ExactGaussianEps()
    x = x0 + sig[:, None, None, None] * noise
    lam = (sig**2 + 0.25) / (sig * 0.5) ** 2
    expected = lam * (model.denoise(x, sig) - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(EDMLoss(0.5)(model, x0, sig, noise), expected)


def test_precond_views_are_consistent():
    net = ScoreNet(base_ch=8, num_res_blocks=1, time_dim=16).eval()  # no dropout
    x, sig = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 7.0])
    for pre in (EpsilonPrecond(net), EDMPrecond(net, 0.5)):
        # D = x - sigma * eps_hat for both parameterisations
        torch.testing.assert_close(pre.denoise(x, sig), x - sig[:, None, None, None] * pre(x, sig), atol=1e-5, rtol=1e-5)


def _scale_error(solver, steps: int) -> float:
    """|(x_out - mu) / (x_exact - mu) - 1| for the exact Gaussian flow from sigma = 80 to 0."""
    smax = 80.0
    x = MU + math.sqrt(S**2 + smax**2) * torch.randn(4000, 1, generator=torch.Generator().manual_seed(3))
    out = solver(ExactGaussianEps(), x, karras_sigmas(steps, 0.002, smax))
    exact = MU + (x - MU) * S / math.sqrt(S**2 + smax**2)  # PF-ODE solution is affine per sample
    return float(((out - MU) / (exact - MU)).median() - 1).__abs__()


def test_pf_ode_maps_noise_to_the_data_distribution():
    """With the exact score, N(mu, s^2 + smax^2) is carried to N(mu, s^2)."""
    smax = 80.0
    x = MU + math.sqrt(S**2 + smax**2) * torch.randn(20000, 1, generator=torch.Generator().manual_seed(4))
    out = heun(ExactGaussianEps(), x, karras_sigmas(80, 0.002, smax))
    assert float(out.mean()) == pytest.approx(MU, abs=0.01)
    expected_std = float(x.std()) * S / math.sqrt(S**2 + smax**2)
    assert float(out.std()) == pytest.approx(expected_std, rel=0.005)


def test_heun_is_second_order_and_euler_first_order():
    h40, h80 = _scale_error(heun, 40), _scale_error(heun, 80)
    e100, e200 = _scale_error(euler, 100), _scale_error(euler, 200)
    assert h40 < 0.015 and 3.0 < h40 / h80 < 5.0  # error / 4 per halving of the step
    assert 1.6 < e100 / e200 < 2.4  # error / 2 per halving
    assert h40 < e200  # Heun at 79 evaluations beats Euler at 200


def test_sample_is_deterministic_under_a_seed_and_counts_evaluations():
    calls = []

    def eps_fn(x, s):
        calls.append(1)
        return ExactGaussianEps()(x, s)

    sig = karras_sigmas(5, 0.01, 80)
    a = sample(eps_fn, (4, 1, 3, 3), sig, Heun(), torch.Generator().manual_seed(7))
    assert len(calls) == Heun().evaluations(5) == 9
    b = sample(eps_fn, (4, 1, 3, 3), sig, Heun(), torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert Euler().evaluations(200) == 200
    torch.testing.assert_close(
        Euler()(ExactGaussianEps(), sig[0] * torch.ones(2, 1, 3, 3), sig),
        euler(ExactGaussianEps(), sig[0] * torch.ones(2, 1, 3, 3), sig),
    )


@pytest.mark.parametrize(
    "build,arg",
    [
        (lambda: ODESampling(steps=0), "steps"),
        (lambda: ODESampling(solver="heun"), "solver"),
        (lambda: KarrasGrid(rho=0.0), "rho"),
        (lambda: LogUniformSigma(sigma_min=0.0), "sigma_min"),
        (lambda: LogNormalSigma(p_std=-1.0), "p_std"),
        (lambda: EDMPrecond(torch.nn.Identity(), sigma_data=0), "sigma_data"),
        (lambda: EpsilonPrecond("net"), "net"),
    ],
)
def test_bad_arguments_name_the_argument(build, arg):
    with pytest.raises(ArgumentError, match=f"^{arg}: "):
        build()


def test_the_evaluators_solver_and_grid_names_build_their_classes():
    from omegaconf import OmegaConf
    from support import ROOT

    from mixlab.core.config import build

    tables = OmegaConf.load(ROOT / "conf" / "evaluator" / "sampling" / "ode.yaml")
    for table in ("solvers", "grids"):
        for name, node in tables[table].items():
            assert build(node).name == name  # solver=NAME / grid=NAME on the command line
    assert build(tables.grids.karras).rho == 7.0
