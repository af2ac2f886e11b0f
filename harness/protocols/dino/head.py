"""DINO's projection head, its loss and its schedules, as medical_transformers trains them.

ChrisMats/medical_transformers@ecd460a:self_supervised/DINO/models.py (``DINOHead``,
``DINOLoss``) follows facebookresearch/dino's head: three linear layers with GELU
(hidden 2048, bottleneck 256, truncated-normal weights of std 0.02, zero biases), an L2
normalisation, then a bias-free linear layer to ``out_dim`` under weight normalisation
whose gain is fixed at 1 (``norm_last_layer``): each output row is a unit vector.
The loss is the cross-entropy between the teacher's centred, sharpened softmax of the two
global views and the student's softmax (temperature 0.1) of every other view; the centre
is an exponential moving average of the teacher's outputs, updated after the loss.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class NormalisedLinear(nn.Module):
    """``weight_norm(Linear(in, out, bias=False))`` with its gain fixed at 1: unit rows."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_features, out_features, bias=False).weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight_v, dim=1))


class DinoHead(nn.Module):
    """The projection head: MLP, L2 normalisation, the unit-row last layer."""

    def __init__(
        self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256
    ) -> None:
        """Create the head.

        Args:
            in_dim: Width of the backbone's pooled features.
            out_dim: The prototypes (medical_transformers' ``projection_size``).
            hidden_dim: Width of the two hidden layers.
            bottleneck_dim: Width before the last layer.
        """
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = NormalisedLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temperatures(
    warmup: float, final: float, warmup_epochs: int, schedule_epochs: int
) -> np.ndarray:
    """The teacher temperature of each epoch (0-based): a linear warm-up, then constant.

    medical_transformers builds it for ``nepochs`` (1000 by default) whatever the run's
    length, so a 25-epoch run stops inside the 30-epoch warm-up.
    """
    if not 0 < warmup_epochs <= schedule_epochs:
        raise ValueError("teacher_temperatures needs 0 < warmup_epochs <= schedule_epochs")
    return np.concatenate(
        (
            np.linspace(warmup, final, warmup_epochs),
            np.ones(schedule_epochs - warmup_epochs) * final,
        )
    )


def cosine_schedule(base: float, final: float, iterations: int) -> np.ndarray:
    """medical_transformers' ``CosineSchedulerWithWarmup`` without warm-up: ``iterations``
    values from ``base`` to (nearly) ``final``, ``final + (base - final)(1 + cos(pi i / T)) / 2``."""
    if iterations < 1:
        raise ValueError(f"cosine_schedule needs at least one iteration, got {iterations}")
    steps = np.arange(iterations)
    return final + 0.5 * (base - final) * (1 + np.cos(math.pi * steps / iterations))


class DinoLoss(nn.Module):
    """Cross-entropy of the student's views against the teacher's global views."""

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        temperatures: np.ndarray,
        student_temperature: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        """Create the loss.

        Args:
            out_dim: The head's output width.
            n_crops: Views per image (2 global + the local ones).
            temperatures: The teacher temperature per epoch (:func:`teacher_temperatures`).
            student_temperature: The student's softmax temperature.
            center_momentum: Momentum of the centre's moving average.
        """
        super().__init__()
        self.n_crops = n_crops
        self.temperatures = temperatures
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, epoch: int) -> torch.Tensor:
        """The loss of one batch; updates the centre afterwards.

        Args:
            student: (n_crops * B, out_dim) student outputs, view-major.
            teacher: (2 * B, out_dim) teacher outputs of the two global views.
            epoch: The 0-based epoch (indexes the teacher temperature).
        """
        student_views = (student / self.student_temperature).chunk(self.n_crops)
        temperature = float(self.temperatures[epoch])
        targets = F.softmax((teacher - self.center) / temperature, dim=-1).detach().chunk(2)
        total, terms = student.new_zeros(()), 0
        for t, target in enumerate(targets):
            for v, view in enumerate(student_views):
                if v == t:  # the same view seen by both networks
                    continue
                total = total + torch.sum(-target * F.log_softmax(view, dim=-1), dim=-1).mean()
                terms += 1
        self._update_center(teacher)
        return total / terms

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        batch_center = teacher.sum(dim=0, keepdim=True) / len(teacher)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
