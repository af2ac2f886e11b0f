"""What the Keras peers (revisiting-transfer, cats-scans) compute, in torch.

* :class:`KerasAdam`: ``tf.keras.optimizers.Adam`` (TF 2.x). It adds ``epsilon`` (1e-7)
  to the *uncorrected* ``sqrt(v)`` and folds both bias corrections into the step size,
  ``lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``; torch's Adam adds its 1e-8 to the
  corrected ``sqrt(v_hat)``. No weight decay (neither peer sets one).
* :func:`keras_affine_params` / :func:`keras_matrix` / :func:`keras_augment`:
  ``ImageDataGenerator.random_transform`` as keras-preprocessing 1.1 defines it
  (``get_random_transform`` then ``apply_affine_transform``): rotation, height and width
  shift, shear (degrees), per-axis zoom, composed as rotation @ shift @ shear @ zoom about
  the centre ``(h / 2 + 0.5, w / 2 + 0.5)``, resampled with linear interpolation and
  ``fill_mode="nearest"`` (edge pixels repeated), then the horizontal flip.
* :class:`BalancedClassLoss`: ``model.fit(class_weight=...)`` with sklearn's "balanced"
  weights ``n / (C * n_c)``: each sample's loss times its class weight, summed and divided
  by the batch size (Keras' ``SUM_OVER_BATCH_SIZE``; torch's weighted cross-entropy
  divides by the summed weights instead).

Sources: DovileDo/revisiting-transfer@54853c3:src/fine-tuning.py and
vcheplygina/cats-scans@9bc5d8a:src/models/tf_generators_models_kfold.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

KERAS_EPSILON = 1e-7


class KerasAdam(torch.optim.Optimizer):
    """Keras' Adam update (see the module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = KERAS_EPSILON,
    ) -> None:
        """Create the optimizer.

        Args:
            params: Parameters or parameter groups.
            lr: Learning rate.
            betas: ``beta_1``, ``beta_2``.
            eps: Keras' ``epsilon``.
        """
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                lr_t = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-lr_t)
        return loss


def keras_affine_params(
    rotation: float, shift: float, shear: float, zoom: float, hflip: bool, h: int, w: int
) -> dict[str, float]:
    """One draw of ``get_random_transform``, from torch's global RNG.

    Args:
        rotation: ``rotation_range`` (degrees).
        shift: ``height_shift_range`` = ``width_shift_range`` (fractions of the side).
        shear: ``shear_range`` (degrees).
        zoom: ``zoom_range`` z: zx, zy drawn from [1 - z, 1 + z] independently.
        hflip: ``horizontal_flip``.
        h: Image height.
        w: Image width.

    Returns:
        ``theta, tx, ty, shear, zx, zy, flip`` (tx is the row shift in pixels).
    """

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    theta = uniform(-rotation, rotation) if rotation else 0.0
    tx = uniform(-shift, shift) * h if shift else 0.0
    ty = uniform(-shift, shift) * w if shift else 0.0
    sh = uniform(-shear, shear) if shear else 0.0
    zx, zy = (uniform(1 - zoom, 1 + zoom), uniform(1 - zoom, 1 + zoom)) if zoom else (1.0, 1.0)
    flip = float(torch.rand(())) < 0.5 if hflip else False
    return {"theta": theta, "tx": tx, "ty": ty, "shear": sh, "zx": zx, "zy": zy, "flip": flip}


def keras_matrix(
    theta: float, tx: float, ty: float, shear: float, zx: float, zy: float, h: int, w: int
) -> np.ndarray:
    """``apply_affine_transform``'s matrix: output (row, col, 1) -> input (row, col, 1).

    Args:
        theta: Rotation (degrees).
        tx: Row shift (pixels).
        ty: Column shift (pixels).
        shear: Shear (degrees).
        zx: Row zoom.
        zy: Column zoom.
        h: Image height.
        w: Image width.

    Returns:
        float64 (3, 3).
    """
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)
    shearing = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zooming = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]], dtype=np.float64)
    matrix = rotation @ shift @ shearing @ zooming
    ox, oy = h / 2 + 0.5, w / 2 + 0.5
    offset = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]])
    reset = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    return offset @ matrix @ reset


def keras_warp(x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Resample (C, H, W) with an output -> input matrix, linear, edges repeated.

    Args:
        x: Float image.
        matrix: From :func:`keras_matrix`.

    Returns:
        The warped image, same shape.
    """
    _, h, w = x.shape
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    m = torch.as_tensor(matrix, dtype=torch.float64)
    src_r = m[0, 0] * rows + m[0, 1] * cols + m[0, 2]
    src_c = m[1, 0] * rows + m[1, 1] * cols + m[1, 2]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels
    grid = torch.stack([2 * src_c / max(w - 1, 1) - 1, 2 * src_r / max(h - 1, 1) - 1], dim=-1)
    out = nn.functional.grid_sample(
        x[None].double(), grid[None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0].to(x.dtype)


def keras_augment(
    x: torch.Tensor, rotation: float, shift: float, shear: float, zoom: float, hflip: bool
) -> torch.Tensor:
    """A random Keras transform of a (C, H, W) float image (affine, then the flip)."""
    _, h, w = x.shape
    p = keras_affine_params(rotation, shift, shear, zoom, hflip, h, w)
    if any((p["theta"], p["tx"], p["ty"], p["shear"], p["zx"] != 1, p["zy"] != 1)):
        x = keras_warp(
            x, keras_matrix(p["theta"], p["tx"], p["ty"], p["shear"], p["zx"], p["zy"], h, w)
        )
    return torch.flip(x, dims=(2,)) if p["flip"] else x


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn's ``compute_class_weight("balanced")``: ``n / (C * n_c)``.

    Raises:
        ValueError: When a class has no training example.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if np.any(counts == 0):
        raise ValueError(
            f"class weighting: class(es) {np.flatnonzero(counts == 0).tolist()} "
            "have no training example"
        )
    return len(labels) / (num_classes * counts.astype(np.float64))


class BalancedClassLoss(nn.Module):
    """Per-sample loss times its class weight, averaged over the batch (Keras)."""

    def __init__(self, weights: np.ndarray, bce: bool) -> None:
        """Create the loss.

        Args:
            weights: Class weights (C,).
            bce: Single sigmoid output with float (N, 1) targets; else softmax CE.
        """
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.bce = bce

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch loss."""
        if self.bce:
            per = nn.functional.binary_cross_entropy_with_logits(
                logits, targets, reduction="none"
            ).mean(dim=1)
            classes = targets[:, 0].long()
        else:
            per = nn.functional.cross_entropy(logits, targets, reduction="none")
            classes = targets
        return (per * self.weights[classes]).mean()
