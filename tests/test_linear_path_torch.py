"""The path solver on a torch device: the same objective, basis and fits as on NumPy.

The torch arithmetic is checked on torch's CPU device, which every machine has, against
the NumPy solver; the last test runs the whole probe on CUDA when a GPU is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.linear import LinearConfig, run
from harness.protocols.linear_basis import principal_basis
from harness.protocols.linear_path import _Problem
from harness.protocols.linear_path_torch import (
    TorchProblem,
    principal_basis_on,
    resolve_solver_device,
)

SHAPES = [(240, 24, 3), (240, 24, 2), (60, 120, 4), (60, 120, 2)]


def _features(n: int, dim: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n + dim + n_classes)
    labels = np.arange(n) % n_classes
    means = 0.5 * rng.normal(size=(n_classes, dim))
    x = (means[labels] + rng.normal(size=(n, dim))) * np.exp(rng.normal(size=dim))
    return x, labels


@pytest.mark.parametrize(("n", "dim", "n_classes"), SHAPES)
def test_basis_spans_the_same_axes(n: int, dim: int, n_classes: int) -> None:
    x, _ = _features(n, dim, n_classes)
    ours, reference = principal_basis_on(x, "cpu"), principal_basis(x)
    assert ours.full == reference.full == (n >= dim)
    np.testing.assert_allclose(ours.mean, reference.mean, rtol=1e-12)
    np.testing.assert_allclose(ours.variance, reference.variance, rtol=1e-9, atol=1e-12)
    # Eigenvectors are defined up to sign: compare the projection of the data instead.
    np.testing.assert_allclose(
        (x - ours.mean) @ ours.axes @ ours.axes.T,
        (x - reference.mean) @ reference.axes @ reference.axes.T,
        atol=1e-9,
    )


@pytest.mark.parametrize(("n", "dim", "n_classes"), SHAPES)
def test_objective_and_gradient_equal_numpy(n: int, dim: int, n_classes: int) -> None:
    x, y = _features(n, dim, n_classes)
    basis = principal_basis(x)
    host, device = _Problem(x, y, n_classes, basis), TorchProblem(x, y, n_classes, basis, "cpu")
    theta = np.random.default_rng(1).normal(size=host.rank * host.k + host.k)
    for c in (1e-3, 1.0, 100.0):
        host.set_c(c)
        device.set_c(c)
        value, grad = host.value_and_grad(theta)
        t_value, t_grad = device.value_and_grad(theta)
        assert t_value == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(t_grad, grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "dim", "n_classes"), SHAPES)
def test_warm_started_path_reaches_the_same_fits(n: int, dim: int, n_classes: int) -> None:
    x, y = _features(n, dim, n_classes)
    basis = principal_basis(x)
    problems = [_Problem(x, y, n_classes, basis), TorchProblem(x, y, n_classes, basis, "cpu")]
    paths: list[list] = [[], []]
    for problem, path in zip(problems, paths, strict=True):
        previous = None
        for c in (1e-3, 0.1, 1.0, 10.0):
            path.append(problem.solve(c, previous, tol=1e-8, max_iter=10_000))
            previous = problem.coordinates
    for host_fit, device_fit in zip(*paths, strict=True):
        assert device_fit.converged and host_fit.converged
        np.testing.assert_allclose(
            device_fit.predict_proba(x), host_fit.predict_proba(x), atol=1e-6
        )


def test_device_setting_resolves_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_solver_device("auto") == "cpu"
    assert resolve_solver_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match=r"device 'cuda'.*no GPU"):
        resolve_solver_device("cuda")
    with pytest.raises(ValueError, match=r"LinearConfig\.device must be one of"):
        LinearConfig(device="tpu")


def _blobs(seed: int) -> tuple[SplitFeatures, SplitFeatures, SplitFeatures]:
    rng = np.random.default_rng(seed)
    means = 0.4 * rng.normal(size=(4, 48))

    def split(n: int) -> SplitFeatures:
        labels = np.arange(n) % 4
        features = means[labels] + rng.normal(size=(n, 48))
        return SplitFeatures(features.astype(np.float32), labels.astype(np.int64))

    return split(300), split(150), split(150)


def test_record_names_the_solver_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy", "roc_auc"))
    result = run(*_blobs(3), task, LinearConfig(n_c=6))
    assert result.details["solver_device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_probe_matches_the_cpu_probe() -> None:
    task = TaskInfo("multiclass", 4, "accuracy", ("accuracy", "roc_auc"))
    grid = (1e-4, 1e-2, 1.0, 100.0)
    cpu = run(*_blobs(5), task, LinearConfig(c_values=grid, tol=1e-8, device="cpu"))
    gpu = run(*_blobs(5), task, LinearConfig(c_values=grid, tol=1e-8, device="cuda"))
    assert gpu.details["solver_device"] == "cuda"
    assert gpu.hyperparameters == cpu.hyperparameters
    assert gpu.metrics == pytest.approx(cpu.metrics, abs=1e-6)
