"""Automatic extraction batch size (issue 13): halving on out-of-memory, the CPU memory
rule, the setting in the feature key, and features that do not depend on the choice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cases import toy_dataset_card

from harness import batch_size as auto
from harness import features
from harness.config.cards import Preprocessing, get_model_card

PRE = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0)


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(auto.BATCH_ENV, raising=False)
    monkeypatch.delenv(auto.MAX_ENV, raising=False)
    auto.clear_memo()


class _Limited(torch.nn.Module):
    """Channel means; 'runs out of device memory' on batches above ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.tried: list[int] = []
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tried.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {len(x)})")
        return self.conv(x).mean(dim=(2, 3))


def module_forward(module: torch.nn.Module) -> Callable[[int], None]:
    def forward(size: int) -> None:
        module(torch.zeros(size, 3, 8, 8))

    return forward


@pytest.mark.parametrize(
    ("limit", "chosen"), [(1000, 256), (256, 256), (200, 128), (24, 16), (1, 1)]
)
def test_probing_halves_from_the_maximum_to_the_largest_batch_that_fits(
    limit: int, chosen: int
) -> None:
    module = _Limited(limit)
    emptied = []
    size = auto.largest_fitting(module_forward(module), 256, lambda: emptied.append(1))
    assert size == chosen
    assert module.tried == [256 >> i for i in range(len(module.tried))]  # powers of two down
    assert module.tried[-1] == chosen and len(emptied) == len(module.tried) - 1


def test_the_cuda_probe_halves_the_real_forward() -> None:
    module = _Limited(40)
    device = torch.device("cpu")  # the probe logic is the same; only the cache emptying differs
    assert auto.cuda_batch_size(module, PRE, device, "fp32", maximum=128) == 32
    assert module.tried == [128, 64, 32]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        auto.cuda_batch_size(_Limited(0), PRE, device, "fp32", maximum=8)


def test_other_errors_are_not_taken_for_out_of_memory() -> None:
    def broken(size: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        auto.largest_fitting(broken, 64)
    assert auto.is_out_of_memory(RuntimeError("CUDA error: out of memory"))


@pytest.mark.parametrize(
    ("budget", "per_image", "maximum", "chosen"),
    [
        (1 << 30, 1 << 20, 256, 256),  # 1,024 fit: clipped to the maximum
        (100 << 20, 1 << 20, 256, 64),  # 100 fit: the power of two below
        (3 << 20, 1 << 20, 256, 2),
        (1 << 10, 1 << 20, 256, 1),  # not even one: still 1
        (1 << 40, 1, 48, 48),  # the maximum need not be a power of two
    ],
)
def test_the_cpu_rule_stays_within_bounds(
    budget: int, per_image: int, maximum: int, chosen: int
) -> None:
    assert auto.cpu_batch_size(per_image, maximum, budget) == chosen


def test_the_cpu_rule_uses_a_share_of_the_available_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auto, "available_memory", lambda: 512 << 20)
    module = _Limited(10_000)
    per_image = auto.activation_bytes(module, PRE, torch.device("cpu"), "fp32")
    # the input (3x16x16 float32) and the conv output (4x14x14 float32), per image
    assert per_image == 3 * 16 * 16 * 4 + 4 * 14 * 14 * 4
    expected = auto.cpu_batch_size(per_image, 256, int((512 << 20) * auto.CPU_FRACTION))
    got = auto.resolve_batch_size("auto", module, PRE, torch.device("cpu"), maximum=256)
    assert got == expected == 256
    monkeypatch.setattr(auto, "available_memory", lambda: 2 << 20)
    auto.clear_memo()
    small = auto.resolve_batch_size("auto", module, PRE, torch.device("cpu"), maximum=256)
    assert 1 <= small < 256 and small & (small - 1) == 0
    # memoised per (model, input size, device, precision); capped by the split's size
    assert auto.resolve_batch_size("auto", module, PRE, torch.device("cpu"), n_images=3) == min(
        small, 4
    )
    assert auto.resolve_batch_size(32, module, PRE, torch.device("cpu")) == 32


def test_settings_are_checked_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert auto.batch_size_setting(64) == 64
    monkeypatch.setenv(auto.BATCH_ENV, "AUTO")
    assert auto.batch_size_setting(64) == "auto"
    monkeypatch.setenv(auto.BATCH_ENV, "12")
    assert auto.batch_size_setting(64) == 12
    for bad in ("0", "-3", "big", "1.5"):
        monkeypatch.setenv(auto.BATCH_ENV, bad)
        with pytest.raises(ValueError, match=auto.BATCH_ENV):
            auto.batch_size_setting(64)
    monkeypatch.setenv(auto.MAX_ENV, "64")
    assert auto.max_batch_size() == auto.max_batch_size("cpu") == 64
    monkeypatch.setenv(auto.MAX_ENV, "auto")
    with pytest.raises(ValueError, match=auto.MAX_ENV):
        auto.max_batch_size()


def test_the_cpu_picks_at_most_sixteen_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto.max_batch_size("cuda") == auto.DEFAULT_MAX == 256
    assert auto.max_batch_size("cpu") == auto.CPU_DEFAULT_MAX == 16
    monkeypatch.setattr(auto, "available_memory", lambda: 1 << 40)  # memory allows 256+
    module = _Limited(10_000)
    assert auto.resolve_batch_size("auto", module, PRE, torch.device("cpu")) == 16
    monkeypatch.setenv(auto.MAX_ENV, "128")
    auto.clear_memo()
    assert auto.resolve_batch_size("auto", module, PRE, torch.device("cpu")) == 128


def test_auto_is_the_key_and_the_features_match_a_fixed_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    card = get_model_card("mobilenet_v2.random")
    images = np.random.default_rng(0).integers(0, 256, (13, 20, 20), dtype=np.uint8)
    loads = []

    def load() -> torch.nn.Module:
        loads.append(1)
        torch.manual_seed(0)
        return _Limited(1000)

    def run(setting: object) -> tuple[np.ndarray, features.CacheInfo]:
        return features.cached_features(
            card,
            "w",
            toy_dataset_card(),
            "train",
            images,
            PRE,
            load,
            device="cpu",
            batch_size=setting,
        )

    per_image = 3 * 16 * 16 * 4 + 4 * 14 * 14 * 4
    # a budget for 5 images: the CPU rule picks 4
    monkeypatch.setattr(auto, "available_memory", lambda: int(5 * per_image / auto.CPU_FRACTION))
    fixed, info_fixed = run(8)
    chosen, info_auto = run("auto")
    assert info_auto.key != info_fixed.key  # the setting, not the resolved size, is keyed
    assert features.feature_key_payload(
        card, "w", toy_dataset_card(), "train", features.images_digest(images), PRE, "pooled", "fp32",
        "auto",
    )["batch_size"] == "auto"  # fmt: skip
    assert not info_auto.hit
    meta = _meta(info_auto.path)
    assert meta["batch_size"] == 4 and meta["batch_size_setting"] == "auto"
    np.testing.assert_allclose(chosen, fixed, rtol=0, atol=1e-5)
    before = len(loads)
    again, info_again = run("auto")
    assert info_again.hit and len(loads) == before  # a hit never loads the model to probe
    np.testing.assert_array_equal(again, chosen)
    monkeypatch.setenv(auto.BATCH_ENV, "auto")  # the environment overrides the profile's 64
    _, info_env = run(64)
    assert info_env.hit and info_env.key == info_auto.key


def _meta(path: Path) -> dict:
    import json

    with np.load(path) as payload:
        return json.loads(str(payload["meta"]))
