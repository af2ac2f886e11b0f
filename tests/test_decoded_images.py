"""Resize once, normalise in batches: identical features, a trusted-by-content cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config.cards import Preprocessing
from harness.data.decoded import geometry_key, normalise_batch, resize_crop
from harness.data.transforms import eval_transform
from harness.features import extract, images_digest
from harness.features_stream import extract_resized, resized_images

PRESETS = {
    "lite0_bicubic": Preprocessing(48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "resnet_bilinear": Preprocessing(
        40, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875
    ),
    "squash_full": Preprocessing(
        32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 1.0, crop_mode="squash"
    ),
    "histogram": Preprocessing(32, (0, 0, 0), (1, 1, 1), "bicubic", 0.9, histogram_normalize=True),
}


def _images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(3, 37, 53), (3, 70, 45, 3)])
def test_resize_then_batched_normalise_equals_the_per_image_transform(
    name: str, shape: tuple[int, ...]
) -> None:
    pre = PRESETS[name]
    images = _images(shape)
    transform = eval_transform(pre)
    expected = torch.stack([transform(image) for image in images])
    resized = resize_crop(images, pre)
    assert resized.dtype == np.uint8 and resized.shape == (3, pre.input_size, pre.input_size, 3)
    got = normalise_batch(torch.from_numpy(resized), pre, torch.device("cpu"))
    assert torch.equal(got, expected)


def test_streamed_features_equal_extract_and_fill_a_memory_map(tmp_path: Path) -> None:
    pre = PRESETS["resnet_bilinear"]
    images = _images((10, 50, 50))
    model = TinyNet()
    expected = extract(model, images, pre, torch.device("cpu"), batch_size=4)
    resized = resized_images(images, images_digest(images), pre, tmp_path)
    out = np.lib.format.open_memmap(tmp_path / "f.npy", "w+", np.float32, expected.shape)
    got = extract_resized(model, resized, pre, torch.device("cpu"), batch_size=4, out=out)
    assert got is out
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), expected)


def test_resized_copy_is_reused_and_shared_across_models_of_one_geometry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.features_stream as stream

    images = _images((5, 30, 30))
    digest = images_digest(images)
    pre = PRESETS["lite0_bicubic"]
    calls = []
    real = stream.resize_crop_batches
    monkeypatch.setattr(
        stream, "resize_crop_batches", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    first = resized_images(images, digest, pre, tmp_path)
    # another model with the same geometry (other mean / std) hits the same copy
    other = Preprocessing(48, (0.1, 0.2, 0.3), (0.3, 0.3, 0.3))
    second = resized_images(images, digest, other, tmp_path)
    assert len(calls) == 1 and np.array_equal(first, second)
    assert geometry_key(digest, pre) == geometry_key(digest, other)
    assert geometry_key(digest, pre) != geometry_key(digest, PRESETS["squash_full"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.parametrize("damage", ["truncate", "wrong_key", "no_sidecar", "garbage_sidecar"])
def test_a_damaged_or_foreign_copy_is_a_miss_and_is_remade(tmp_path: Path, damage: str) -> None:
    images = _images((4, 30, 30))
    digest = images_digest(images)
    pre = PRESETS["lite0_bicubic"]
    good = np.array(resized_images(images, digest, pre, tmp_path))
    key = geometry_key(digest, pre)
    path, sidecar = tmp_path / f"{key}.npy", tmp_path / f"{key}.json"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "wrong_key":
        other = _images((4, 30, 30), seed=1)  # another array's copy put in its place
        foreign = tmp_path / "other"
        resized_images(other, images_digest(other), pre, foreign)
        (foreign / f"{geometry_key(images_digest(other), pre)}.npy").replace(path)
        sidecar.write_text(sidecar.read_text().replace(key, "0" * 32))
    elif damage == "no_sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text("{not json")
    again = resized_images(images, digest, pre, tmp_path)
    np.testing.assert_array_equal(again, good)
