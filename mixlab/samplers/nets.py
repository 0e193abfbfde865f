"""Networks of the diffusion samplers (PIS architecture, Sendera et al. 2024, reference §2).

All are plain nn.Modules, tensor in / tensor out; t is the raw time in [0, 1], a tensor that
broadcasts against the leading dims of x: [N] for x [N, d], [1] for one time, the grid [T] for
x [B, T, d] (time features are then computed once per grid time).

- `PISPolicy(x, t) -> [N, 2d]`: [u | raw log-variance] of the forward policy (no Langevin term;
  see mixlab.samplers.langevin for the Langevin parametrisation).
- `LangevinScale(t) -> [N, 1] or [N, d]`: the scale s(t) of the Langevin term.
- `FlowNet(x, t) -> [N]`: log F(x, t) for DB / SubTB.
- `ForwardLookingFlow(x, t, log_r) -> [N]`: FL-SubTB's flow, NN(x, t) plus a reference term.

Policies and flows share a small call protocol that the rollout relies on:
`policy.needs_grad` (does forward take grad log R?) and `flow.uses_log_r` (does forward take log R?).
"""

import math

import torch
from torch import nn

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import NonNegativeInt, PositiveFloat, PositiveInt, checked


class FourierFeatures(nn.Module):
    """[sin(f t + phi), cos(f t + phi)] with f = linspace(f_min, f_max, harmonics) and a learned
    phase phi (randn init): [N] -> [N, 2 * harmonics]."""

    @checked
    def __init__(self, harmonics: PositiveInt = 64, f_min: float = 0.1, f_max: float = 100.0):
        super().__init__()
        self.register_buffer("freqs", torch.linspace(f_min, f_max, harmonics))
        self.phase = nn.Parameter(torch.randn(harmonics))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[..., None] * self.freqs + self.phase  # [..., h]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)  # [..., 2h]


def time_embedding(harmonics: int = 64, hidden: int = 64, out: int = 64) -> nn.Sequential:
    """PIS time embedding: Fourier features -> Linear(2h, hidden) -> GELU -> Linear(hidden, out)."""
    return nn.Sequential(FourierFeatures(harmonics), nn.Linear(2 * harmonics, hidden), nn.GELU(), nn.Linear(hidden, out))


def joint_mlp(hidden: int, out: int, num_layers: int = 2) -> nn.Sequential:
    """(s_emb + t_emb) -> GELU -> num_layers x [Linear, GELU] -> Linear(hidden, out)."""
    layers: list[nn.Module] = [nn.GELU()]
    for _ in range(num_layers):
        layers += [nn.Linear(hidden, hidden), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(hidden, out))


class Tape:
    """The joint MLP's activations of a no-grad rollout, recorded step by step into time-major
    buffers, so that log p_F's backward reuses them instead of running the network a second time
    (`PISPolicy.record` / `PISPolicy.replay`). pre[k] / post[k]: input / output of the k-th GELU,
    out: the unclipped output; [T, B, width] each, plus the states' inputs x [T, B, d].

    A policy keeps one tape and reuses its buffers from rollout to rollout (fresh buffers of this
    size cost more in page faults than the network pass they save); `generation` counts the
    rollouts, and a backward through an overwritten tape raises."""

    def __init__(self, steps: int, batch: int, hidden: int, layers: int, dim: int, out: int, like: torch.Tensor):
        new = lambda width: like.new_empty(steps, batch, width)  # noqa: E731
        self.pre = [new(hidden) for _ in range(layers)]
        self.post = [new(hidden) for _ in range(layers)]
        self.x, self.out = new(dim), new(out)
        self.generation = 0
        self.grid: torch.Tensor | None = None  # the rollout's times [T]
        self.t_emb: torch.Tensor | None = None  # the policy's time features on the grid [T, h] (no grad)
        self.extra: dict = {}  # a wrapper's per-rollout values (the Langevin scale on the grid)

    def fits(self, steps: int, batch: int, like: torch.Tensor) -> bool:
        return self.out.shape[:2] == (steps, batch) and self.out.dtype == like.dtype and self.out.device == like.device


CHUNK_ROWS = 4096  # rows per block of the replayed backward


class _Replay(torch.autograd.Function):
    """out = joint(s_embed(x) + t_emb) from recorded activations: the forward returns the recorded
    output, the backward runs the chain rule of GELU -> Linear -> ... -> Linear over the whole
    [T * B] batch at once. Inputs: t_emb [T, 1, h] (with grad), the tape, the output columns
    wanted (the first `columns`), then s_embed's and the joint Linears' (weight, bias) pairs."""

    @staticmethod
    def forward(ctx, t_emb, tape: Tape, columns: int, *params):
        ctx.tape, ctx.generation, ctx.columns = tape, tape.generation, columns
        ctx.save_for_backward(*params)
        return tape.out[..., :columns]

    @staticmethod
    def backward(ctx, grad_out):
        tape, params = ctx.tape, ctx.saved_tensors
        if tape.generation != ctx.generation:
            raise RuntimeError("the policy's tape was overwritten by another rollout before this loss's backward")
        steps, batch = tape.out.shape[:2]
        grads = [torch.zeros_like(p) for p in params]
        t_grad = grad_out.new_empty(steps, 1, tape.pre[0].shape[-1])
        chunk = max(1, CHUNK_ROWS // batch)  # a few steps at a time: the activations stay in cache
        last, cols = len(tape.pre) - 1, slice(0, ctx.columns)  # the last Linear: only the wanted rows
        for lo in range(0, steps, chunk):
            part = slice(lo, lo + chunk)
            flat = lambda t: t[part].reshape(-1, t.shape[-1])  # noqa: E731, B023
            g = flat(grad_out)
            for k in range(last, -1, -1):  # Linear k reads post[k]; GELU k reads pre[k]
                rows = cols if k == last else slice(None)
                grads[2 + 2 * k][rows].addmm_(g.t(), flat(tape.post[k]))
                grads[3 + 2 * k][rows].add_(g.sum(0))
                g = torch.ops.aten.gelu_backward(g @ params[2 + 2 * k][rows], flat(tape.pre[k]))
            grads[0].addmm_(g.t(), flat(tape.x))  # s_embed
            grads[1].add_(g.sum(0))
            t_grad[part] = g.view(-1, batch, g.shape[-1]).sum(1, keepdim=True)
        return (t_grad, None, None, *grads)


def clip_output(out: torch.Tensor, clip: float) -> torch.Tensor:
    """out clamped to [-clip, clip]; skipped (the same values and gradient) when nothing exceeds clip."""
    low, high = torch.aminmax(out)
    return out if bool(low >= -clip) and bool(high <= clip) else out.clamp(-clip, clip)


class PISPolicy(nn.Module):
    """Forward-policy network: [..., d], t -> [..., 2d] = [u | raw log-variance], clipped to
    [-clip, clip]. The last layer starts at zero (zero_init), so the initial drift is 0.

    `record` (no grad, one rollout step) and `replay` (every step at once, with grad) give the
    same output as forward without computing the network twice: see Tape."""

    needs_grad = False

    @checked
    def __init__(
        self,
        dim: PositiveInt,
        hidden: PositiveInt = 64,
        harmonics: PositiveInt = 64,
        num_layers: NonNegativeInt = 2,
        zero_init: bool = True,
        clip: PositiveFloat = 1e4,
    ):
        super().__init__()
        self.dim, self.clip = dim, float(clip)
        self.t_embed = time_embedding(harmonics, hidden, hidden)
        self.s_embed = nn.Linear(dim, hidden)
        self.joint = joint_mlp(hidden, 2 * dim, num_layers)
        if zero_init:
            nn.init.zeros_(self.joint[-1].weight)
            nn.init.zeros_(self.joint[-1].bias)

    def unclipped(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.joint(self.s_embed(x) + self.t_embed(t))  # [..., 2d]

    def forward(self, x: torch.Tensor, t: torch.Tensor, grad_log_r: torch.Tensor | None = None) -> torch.Tensor:
        return self.unclipped(x, t).clamp(-self.clip, self.clip)  # [..., 2d]

    def __getstate__(self) -> dict:
        """Pickles and deep copies leave the tape behind (buffers of a past rollout, not state)."""
        state = self.__dict__.copy()
        state.pop("_tape", None)
        return state

    # ----- one network pass per rollout (record during the no-grad rollout, replay for the loss) ----
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.joint if isinstance(m, nn.Linear)]

    def new_tape(self, grid: torch.Tensor, batch: int, like: torch.Tensor) -> Tape:
        """The policy's tape for a rollout of `batch` states on the time grid [T] (its buffers
        reused when they fit), with the grid's time features computed once."""
        steps = grid.shape[0]
        tape = self.__dict__.get("_tape")  # a plain attribute: not state, not moved by .to()
        if tape is None or not tape.fits(steps, batch, like):
            tape = self.__dict__["_tape"] = Tape(
                steps, batch, self.s_embed.out_features, len(self.linears()), self.dim, 2 * self.dim, like
            )
        tape.generation += 1
        tape.grid, tape.extra = grid, {}
        with torch.no_grad():
            tape.t_emb = self.t_embed(grid)
        return tape

    @torch.no_grad()
    def record_unclipped(self, x: torch.Tensor, tape: Tape, i: int) -> torch.Tensor:
        """unclipped(x [B, d], t_i) for step i, its activations written to the tape: [B, 2d]."""
        tape.x[i] = x
        h = torch.add(torch.addmm(self.s_embed.bias, x, self.s_embed.weight.t()), tape.t_emb[i], out=tape.pre[0][i])
        linears = self.linears()
        for k, linear in enumerate(linears):  # GELU k, then Linear k
            post = torch._C._nn.gelu(h, out=tape.post[k][i])
            target = tape.pre[k + 1][i] if k + 1 < len(linears) else tape.out[i]
            h = torch.addmm(linear.bias, post, linear.weight.t(), out=target)
        return h

    def replay_unclipped(self, tape: Tape, drift_only: bool = False) -> torch.Tensor:
        """unclipped at every recorded state, differentiable in the parameters: [T, B, 2d]
        (time-major, as the tape), or only its drift half [T, B, d]."""
        params = [p for m in (self.s_embed, *self.linears()) for p in (m.weight, m.bias)]
        columns = self.dim if drift_only else 2 * self.dim
        return _Replay.apply(self.t_embed(tape.grid)[:, None], tape, columns, *params)

    @torch.no_grad()
    def record(self, x: torch.Tensor, grad_log_r: torch.Tensor | None, tape: Tape, i: int) -> torch.Tensor:
        """forward(x [B, d], t_i) of rollout step i, recorded: [B, 2d]."""
        return self.record_unclipped(x, tape, i).clamp(-self.clip, self.clip)

    def replay(self, grad_log_r: torch.Tensor | None, tape: Tape, drift_only: bool = False) -> torch.Tensor:
        """forward at every recorded state, with gradient: [T, B, 2d], or [T, B, d] (drift_only:
        when the variance is not learned); grad_log_r unused (the Langevin policy's signature)."""
        return clip_output(self.replay_unclipped(tape, drift_only), self.clip)


class LangevinScale(nn.Module):
    """s(t) of the Langevin parametrisation: its own Fourier time features -> Linear(2h, hidden)
    -> (num_layers - 1) x [GELU, Linear] -> GELU -> Linear(hidden, 1 or d); the last layer has
    zero weights and bias `init` (0.01), so s(t) = init at the start. [N] -> [N, 1] or [N, d]."""

    @checked
    def __init__(
        self,
        dim: PositiveInt = 1,
        per_dimension: bool = False,
        hidden: PositiveInt = 64,
        harmonics: PositiveInt = 64,
        num_layers: PositiveInt = 3,
        init: float = 0.01,
    ):
        super().__init__()
        layers: list[nn.Module] = [FourierFeatures(harmonics), nn.Linear(2 * harmonics, hidden)]
        for _ in range(num_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.GELU(), nn.Linear(hidden, dim if per_dimension else 1)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, init)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)  # [N, 1] or [N, d]


class FlowNet(nn.Module):
    """State-conditional log-flow for DB / SubTB: [..., d], t -> [...]: a joint MLP with one
    output (default init) on state + time embeddings.

    share_embeddings=True (the reference code's `--conditional_flow_model`, the experiments'
    default): the embeddings are the policy's (`policy`, passed by the system); the flow owns
    only its joint MLP, and the flow loss trains the shared embeddings too, at the policy's
    learning rate. False: the flow has its own state / time embeddings (`harmonics` applies)."""

    uses_log_r = False

    @checked
    def __init__(
        self,
        dim: PositiveInt,
        hidden: PositiveInt = 64,
        harmonics: PositiveInt = 64,
        num_layers: NonNegativeInt = 2,
        share_embeddings: bool = False,
        policy: nn.Module | None = None,
    ):
        super().__init__()
        self.joint = joint_mlp(hidden, 1, num_layers)
        self._shared: tuple[nn.Module, ...] = ()  # a tuple, so the policy is not a submodule of the flow
        if share_embeddings:
            net = getattr(policy, "net", policy)  # the PIS network inside a Langevin policy
            if not (hasattr(net, "s_embed") and hasattr(net, "t_embed")):
                raise ArgumentError("share_embeddings", "needs a PIS-architecture policy to share its embeddings with")
            if net.s_embed.out_features != hidden:
                raise ArgumentError(
                    "hidden", f"must equal the policy's embedding width {net.s_embed.out_features} to share it, got {hidden}"
                )
            self._shared = (net,)
        else:
            self.t_embed = time_embedding(harmonics, hidden, hidden)
            self.s_embed = nn.Linear(dim, hidden)

    def embed(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        owner = self._shared[0] if self._shared else self
        return owner.s_embed(x) + owner.t_embed(t)

    def forward(self, x: torch.Tensor, t: torch.Tensor, log_r: torch.Tensor | None = None) -> torch.Tensor:
        return self.joint(self.embed(x, t)).squeeze(-1)  # [...]


def reference_log_prob(x: torch.Tensor, t: torch.Tensor, sigma2: float, dt: float) -> torch.Tensor:
    """log N(x; 0, sigma2 * max(t, dt) I): the marginal of the reference (driftless) process at t,
    with t = 0 read as the first grid time dt (max(i, 1) dt). [N, d], [N] -> [N]."""
    var = sigma2 * t.clamp(min=dt)  # [N]
    d = x.shape[-1]
    return -0.5 * (d * torch.log(2 * math.pi * var) + (x * x).sum(-1) / var)


class ForwardLookingFlow(nn.Module):
    """FL-SubTB flow: log F(x, t) = NN(x, t) + (1 - t) log N(x; 0, sigma2 max(t, 1/T) I) + t log R(x).
    `sigma2` and `T` must be the sampler's (its config interpolates them). [N, d], [N], [N] -> [N]."""

    uses_log_r = True

    @checked
    def __init__(self, net: nn.Module, sigma2: PositiveFloat, T: PositiveInt):
        super().__init__()
        self.net, self.sigma2, self.T = net, float(sigma2), T

    def forward(self, x: torch.Tensor, t: torch.Tensor, log_r: torch.Tensor | None = None) -> torch.Tensor:
        if log_r is None:
            raise ValueError("ForwardLookingFlow needs log R(x) at every state")
        ref = reference_log_prob(x, t, self.sigma2, 1.0 / self.T)
        return self.net(x, t) + (1 - t) * ref + t * log_r  # [N]


@checked
def forward_looking_flow(
    dim: PositiveInt,
    sigma2: PositiveFloat,
    T: PositiveInt,
    hidden: PositiveInt = 64,
    harmonics: PositiveInt = 64,
    num_layers: NonNegativeInt = 2,
    share_embeddings: bool = False,
    policy: nn.Module | None = None,
) -> ForwardLookingFlow:
    """FL-SubTB's flow on a fresh FlowNet (config: `_partial_: true`; the system passes the
    energy's dim and its policy)."""
    return ForwardLookingFlow(FlowNet(dim, hidden, harmonics, num_layers, share_embeddings, policy), sigma2, T)
