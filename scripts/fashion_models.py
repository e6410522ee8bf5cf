"""Small Fashion-MNIST CNNs: the models ovrange bundles as defaults, and that benchmarks inject faults into.

Both take RAW pixel values (0..255, float32, NCHW ``[N, 1, 28, 28]``) and normalise as their first operation, so
the exported OpenVINO IR can be fed decoded images directly, as POT's "simplified" engine (and
:func:`ovrange.data.image_folder`) does. The normalisation constants are Python floats, not parameters, so they
become IR constants and do not appear in the state_dict.
"""

from __future__ import annotations

import torch
from torch import nn

# Fashion-MNIST training-set pixel statistics on the 0..1 scale.
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
NUM_CLASSES = 10


class RawNormalize(nn.Module):
    """``(x / 255 - mean) / std``: lets the model take raw 0..255 pixels."""

    def __init__(self, mean: float = FASHION_MEAN, std: float = FASHION_STD):
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - self.mean) / self.std


class FashionLeNet(nn.Module):
    """LeNet-5 (ReLU, max-pool) for 28x28 grayscale images; raw 0..255 input, 10 logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = RawNormalize()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # 6x14x14
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),             # 16x5x5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


class FashionSevenAct(nn.Module):
    """A LeNet-sized CNN using each of ReLU, SiLU, PReLU, ELU, GELU, Sigmoid and Tanh, to exercise every
    activation type ovrange protects. In OpenVINO these become Relu, Swish, PRelu, Elu, Gelu, Sigmoid, Tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = RawNormalize()
        # Both poolings come early so that a CPU training epoch costs little more than LeNet's.
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),       # 6x14x14
            nn.Conv2d(6, 16, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),      # 16x7x7
            nn.Conv2d(16, 16, 3, padding=1), nn.ELU(),                       # 16x7x7
            nn.Conv2d(16, 16, 3, padding=1), nn.PReLU(16),                   # 16x7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 120), nn.GELU(),
            nn.Linear(120, 84), nn.Sigmoid(),
            nn.Linear(84, 64), nn.Tanh(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

