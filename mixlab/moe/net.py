"""The cas771 multi-task MoE classifier (seed README's v2 "feature fusion" architecture).

SubModel = FeatureExtractor -> Expert -> Linear: the per-subset CNN. Its trunk and expert have
exactly the MoE's extractor / expert shapes, so the MoE is initialised from N sub-models by
averaging trunks and copying expert i from sub-model i (mixlab.moe.init).
Widths default to the reference (64, 128, 256, 512); smoke configs shrink them.
"""

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mixlab.core.validate import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    UnitFloat,
    checked,
)
from mixlab.nets.global_batchnorm import GlobalBatchNorm

Widths = Annotated[Sequence[PositiveInt], Field(min_length=4, max_length=4)]  # extractor channels (w0, w1, w2, w3)


def conv_block(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_convs: int = 1):
        super().__init__()
        self.convs = nn.Sequential(*[conv_block(cin if i == 0 else cout, cout) for i in range(num_convs)])
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(x) + self.shortcut(x))


class FeatureExtractor(nn.Module):
    """[B,3,H,W] -> [B,w3,H/4,W/4]: ConvBlock, Res(1 conv), pool, Res(2 convs), pool, 1x1 ConvBlock."""

    @checked
    def __init__(self, widths: Widths = (64, 128, 256, 512)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.out_channels = w3
        self.layers = nn.Sequential(
            conv_block(3, w0),
            ResidualBlock(w0, w1, 1),
            nn.MaxPool2d(2),
            ResidualBlock(w1, w2, 2),
            nn.MaxPool2d(2),
            conv_block(w2, w3, k=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Expert(nn.Module):
    """[B,C,h,w] -> [B,C]: depthwise 3x3, pointwise 1x1, BN, ReLU, Dropout, GAP, Dropout."""

    @checked
    def __init__(self, channels: PositiveInt = 512, dropout: UnitFloat = 0.5):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(F.relu(self.bn(self.pointwise(self.depthwise(x)))))
        return self.drop2(x.mean(dim=(2, 3)))


def init_weights(module: nn.Module) -> None:
    """Reference init: kaiming_normal (fan_out) convs, N(0, 0.01) linears with zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class SubModel(nn.Module):
    """Per-subset CNN: x [B,3,H,W] -> logits [B,num_classes]."""

    @checked
    def __init__(self, num_classes: PositiveInt, widths: Widths = (64, 128, 256, 512), dropout: UnitFloat = 0.5):
        super().__init__()
        self.extractor = FeatureExtractor(widths)
        self.expert = Expert(widths[-1], dropout)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.expert(self.extractor(x)))


class SafeBatchNorm1d(GlobalBatchNorm):
    """BatchNorm1d (over the global batch under DDP) that uses its running statistics for a training
    batch of one sample (plain BatchNorm1d raises there) instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class GatingNetwork(nn.Module):
    """Two paths on the pooled features p [B,D]:
    feature path -> gate features [B,F]; gate path -> logits z [B,E];
    gates = softmax(z / T + eps), eps ~ N(0, noise_std^2) in training mode only (`noise` [B,E] ~ N(0, 1)
    when the caller draws it, e.g. for the global batch under DDP; else drawn here).
    T is the buffer ``temperature`` (saved in checkpoints, set by TemperatureAnnealing)."""

    @checked
    def __init__(
        self,
        in_dim: PositiveInt,
        num_experts: PositiveInt,
        hidden: PositiveInt = 256,
        feature_dim: PositiveInt = 256,
        dropout: UnitFloat = 0.2,
        noise_std: NonNegativeFloat = 0.1,
        temperature: PositiveFloat = 2.0,
    ):
        super().__init__()
        self.noise_std = float(noise_std)
        self.feature_net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            SafeBatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, feature_dim),
            SafeBatchNorm1d(feature_dim),
            nn.ReLU(),
        )
        self.gate_net = nn.Sequential(
            nn.Linear(in_dim, hidden), SafeBatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_experts)
        )
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, pooled: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.gate_net(pooled) / self.temperature
        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * (torch.randn_like(logits) if noise is None else noise)
        return torch.softmax(logits, dim=-1), self.feature_net(pooled)


class MoEClassifier(nn.Module):
    """x [B,3,H,W] -> (logits [B,C], gates [B,E]).
    h = concat(sum_k g_k e_k [w3], gate features [F]) -> Linear(w3 + F -> C)."""

    @checked
    def __init__(
        self,
        num_classes: PositiveInt,
        num_experts: PositiveInt = 3,
        widths: Widths = (64, 128, 256, 512),
        gate_hidden: PositiveInt = 256,
        gate_features: PositiveInt = 256,
        dropout: UnitFloat = 0.5,
        gate_noise: NonNegativeFloat = 0.1,
        temperature: PositiveFloat = 2.0,
        gate_dropout: UnitFloat = 0.2,
    ):
        super().__init__()
        self.num_experts, self.num_classes = num_experts, num_classes
        self.extractor = FeatureExtractor(widths)
        self.experts = nn.ModuleList(Expert(widths[-1], dropout) for _ in range(num_experts))
        self.gate = GatingNetwork(
            widths[-1],
            num_experts,
            gate_hidden,
            gate_features,
            dropout=gate_dropout,
            noise_std=gate_noise,
            temperature=temperature,
        )
        self.classifier = nn.Linear(widths[-1] + gate_features, num_classes)
        init_weights(self)

    def expert_features(
        self, x: torch.Tensor, gate_noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expert features [B,E,w3], gates [B,E], gate features [B,F]); `gate_noise` [B,E]: see GatingNetwork."""
        feats = self.extractor(x)
        gates, gate_feats = self.gate(feats.mean(dim=(2, 3)), gate_noise)
        experts = torch.stack([expert(feats) for expert in self.experts], dim=1)
        return experts, gates, gate_feats

    def classify(self, experts: torch.Tensor, gates: torch.Tensor, gate_feats: torch.Tensor) -> torch.Tensor:
        combined = (gates.unsqueeze(-1) * experts).sum(dim=1)
        return self.classifier(torch.cat([combined, gate_feats], dim=-1))

    def forward(self, x: torch.Tensor, gate_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        experts, gates, gate_feats = self.expert_features(x, gate_noise)
        return self.classify(experts, gates, gate_feats), gates
