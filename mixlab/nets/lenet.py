"""The small MNIST CNN used as the seed's evaluation backbone (FID/P/R in a 128-d feature space).

conv(1->32,3,p1)-ReLU-maxpool2 -> conv(32->64,3,p1)-ReLU-maxpool2 -> flatten
-> Linear(3136->128)-ReLU [features] -> Linear(128->10) [logits]; 421,642 parameters.
Inputs are [N,1,28,28] in [-1,1]: no resize, no RGB conversion.
"""

import torch
from torch import nn

from mixlab.core.validate import PositiveInt, checked


class MNISTClassifier(nn.Module):
    """LeNet-style digit classifier whose post-ReLU penultimate layer serves as a feature space."""

    num_features = 128

    @checked
    def __init__(self, num_classes: PositiveInt = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),  # [N,32,28,28]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [N,32,14,14]
            nn.Conv2d(32, 64, 3, padding=1),  # [N,64,14,14]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [N,64,7,7]
            nn.Flatten(),  # [N,3136]
            nn.Linear(64 * 7 * 7, self.num_features),  # [N,128]
            nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, num_classes)  # [N,10]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N,1,28,28] in [-1,1] -> [N,128] post-ReLU penultimate features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N,1,28,28] in [-1,1] -> [N,10] class logits."""
        return self.head(self.body(x))
