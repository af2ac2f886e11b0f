"""The path solver's arithmetic on a torch device (a GPU when CUDA is present).

Same objective, preconditioning, warm-started ascending path and stopping rule as
:mod:`harness.protocols.linear_path`; only where the arrays live changes. The training
features, the axes and the targets are copied to the device once per path, in float64;
L-BFGS (:mod:`harness.protocols.linear_lbfgs`) keeps running on the host over the small parameter vector
(``R K + K`` values), and each objective evaluation moves only that vector and its
gradient across. The passes over the data (``N x R x K`` products) and the
eigendecomposition of the Gram matrix run on the device.

On the same inputs the results equal the host solver's to rounding (float64 on both;
reductions are summed in a different order), so the chosen C can differ only where two
C values tie to the last bits of a validation score.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.protocols.linear_basis import _RANK_TOLERANCE, Basis
from harness.protocols.linear_path import _CURVATURE, _Problem


def resolve_solver_device(device: str) -> str:
    """The device a ``LinearConfig.device`` setting runs on.

    Args:
        device: ``cpu``, ``cuda`` or ``auto`` (``cuda`` when torch sees a GPU).

    Returns:
        ``cpu`` or ``cuda``.

    Raises:
        RuntimeError: ``cuda`` was asked for and torch sees no GPU.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("linear probe: device 'cuda' was asked for but torch sees no GPU")
    return device


def principal_basis_on(x: np.ndarray, device: str, rotate_rows: bool = False) -> Basis:
    """:func:`harness.protocols.linear_basis.principal_basis` computed on ``device``.

    Args:
        x: Features (N, D), float64.
        device: A torch device name.
        rotate_rows: As in :func:`~harness.protocols.linear_basis.principal_basis`.

    Returns:
        The basis, as host arrays.
    """
    n, d = x.shape
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(device)
    mean = xt.mean(dim=0)
    xc = xt - mean
    if n >= d:
        variance, axes = torch.linalg.eigh(xc.T @ xc / n)
        rotated = _host(xc @ axes) if rotate_rows else None
        variance = np.clip(_host(variance), 0.0, None)
        return Basis(_host(mean), variance, True, rotated, _host(axes))
    variance, left = torch.linalg.eigh(xc @ xc.T / n)
    floor = _RANK_TOLERANCE * max(float(variance.max()), np.finfo(float).tiny)
    keep = variance > floor
    variance, left = variance[keep], left[:, keep]
    root = torch.sqrt(n * variance)
    return Basis(
        _host(mean), _host(variance), False, _host(left * root), _host(xc), _host(left / root)
    )


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class TorchProblem(_Problem):
    """:class:`harness.protocols.linear_path._Problem` with its data on a torch device."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, n_classes: int, basis: Basis, device: str
    ) -> None:
        super().__init__(x, y, n_classes, basis)
        self.device = torch.device(device)
        to = self._to_device
        self.t_target = to(self.target)
        self.t_data = to(self.data)
        self.t_axes = to(basis.axes) if self.rotated is None else None
        self.t_scale = to(self.scale)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(self.device)

    def set_c(self, c: float) -> None:
        super().set_c(c)
        self.t_scale = self._to_device(self.scale)

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        rk = self.rank * self.k
        t = self._to_device(theta)
        u = t[:rk].reshape(self.rank, self.k)
        b = t[rk:] / np.sqrt(_CURVATURE)
        v = self.t_scale[:, None] * u
        w = v if self.t_axes is None else self.t_axes @ v
        logits = self.t_data @ w + b
        target = self.t_target
        if self.sigmoid:
            loss = -torch.sum(
                target * torch.nn.functional.logsigmoid(logits)
                + (1.0 - target) * torch.nn.functional.logsigmoid(-logits)
            )
            residual = torch.sigmoid(logits) - target
        else:
            log_p = torch.log_softmax(logits, dim=1)
            loss = -torch.sum(target * log_p)
            residual = torch.exp(log_p) - target
        value = loss / self.n + 0.5 * self.lam * torch.sum(v * v)
        grad_w = self.t_data.T @ residual / self.n
        grad_v = (grad_w if self.t_axes is None else self.t_axes.T @ grad_w) + self.lam * v
        grad_u = self.t_scale[:, None] * grad_v
        grad_b = residual.sum(dim=0) / self.n / np.sqrt(_CURVATURE)
        grad = torch.cat([grad_u.reshape(-1), grad_b])
        return float(value), _host(grad)
