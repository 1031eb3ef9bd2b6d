"""A user's own network, written as people write them in plain PyTorch (no edgecompress imports).

``PlainCNN`` is the classic tutorial net: conv-ReLU-pool twice, then two Linear layers, no BatchNorm. edgecompress
imports this module only because ``bring_your_own.yaml`` lists it under ``trust_factories``; a factory is called
with the keyword arguments its signature accepts (here ``num_classes``).
"""

from __future__ import annotations

import torch
from torch import nn


class PlainCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * 2 * 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # not x.view(-1, 256): a hard-coded size cannot be pruned
        return self.fc2(torch.relu(self.fc1(x)))


def plain_cnn(num_classes: int = 10) -> nn.Module:
    """The factory ``bring_your_own.yaml`` names: ``my_models:plain_cnn``."""
    return PlainCNN(num_classes)
