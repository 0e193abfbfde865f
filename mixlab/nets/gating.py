"""Small networks that look at (x_sigma, sigma) and judge the experts (the reference's shapes).

GatingNet: logits over K experts (68,868 params at K=4). ScoringHead: one scalar "how good
will this expert be here" (17,345 params); resilient MCL stacks K of them. Both take the
input already scaled to unit variance (x / sqrt(sigma^2 + sigma_data^2)) and c = ln(sigma)/4.
"""

import torch
from torch import nn

from mixlab.core.validate import PositiveInt, checked
from mixlab.nets.scorenet import sinusoidal_embedding


class _SigmaImageNet(nn.Module):
    """sinusoidal(c) -> MLP, a 2-layer strided CNN -> avg pool, concatenated -> MLP -> out."""

    def __init__(self, out_dim: int, emb_dim: int, hidden: int, ch: tuple[int, int], in_channels: int = 1):
        super().__init__()
        self.emb_dim = emb_dim
        self.sigma_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, ch[0], 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch[0], ch[1], 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(hidden + ch[1], hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.sigma_mlp(sinusoidal_embedding(c_noise, self.emb_dim)), self.cnn(x)], dim=1)  # [B, hidden + ch1]
        return self.head(h)


class GatingNet(_SigmaImageNet):
    """(x [B,C,H,W], c_noise [B]) -> logits [B, K]."""

    @checked
    def __init__(
        self, num_experts: PositiveInt, emb_dim: PositiveInt = 64, hidden: PositiveInt = 128, in_channels: PositiveInt = 1
    ):
        super().__init__(num_experts, emb_dim, hidden, (32, 64), in_channels)
        self.num_experts = num_experts


class ScoringHead(_SigmaImageNet):
    """(x [B,C,H,W], c_noise [B]) -> [B, 1] competence score of one expert."""

    @checked
    def __init__(self, emb_dim: PositiveInt = 32, hidden: PositiveInt = 64, in_channels: PositiveInt = 1):
        super().__init__(1, emb_dim, hidden, (16, 32), in_channels)
