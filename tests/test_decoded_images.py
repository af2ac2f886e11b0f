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
    "grey_first": Preprocessing(
        32, (0.286,) * 3, (0.267,) * 3, "bilinear", 0.875, crop_mode="squash", channels="grey-first"
    ),
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
    # Pillow resizes: under another version the copy is made again, not trusted by name
    import PIL

    key = geometry_key(digest, pre)
    monkeypatch.setattr(PIL, "__version__", "12.3.0")
    assert geometry_key(digest, pre) != key
    again = resized_images(images, digest, pre, tmp_path)
    assert len(calls) == 2 and np.array_equal(first, again)


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


class _FailingRows(np.ndarray):
    """A uint8 image array whose rows past ``fail_at`` cannot be read (a bad disk block)."""

    fail_at = 6

    def __getitem__(self, key: object) -> np.ndarray:
        if isinstance(key, slice) and (key.stop or 0) > self.fail_at:
            raise OSError("read error in the decoded-image cache")
        return np.asarray(super().__getitem__(key))


def test_a_read_error_in_the_reader_thread_is_raised_not_hung() -> None:
    pre = PRESETS["lite0_bicubic"]
    resized = resize_crop(_images((10, 50, 50)), pre).view(_FailingRows)
    with pytest.raises(OSError, match="read error in the decoded-image cache"):
        extract_resized(TinyNet(), resized, pre, torch.device("cpu"), batch_size=4)


def test_a_failing_forward_stops_the_reader() -> None:
    import threading

    pre = PRESETS["lite0_bicubic"]
    resized = resize_crop(_images((40, 50, 50)), pre)

    class Exploding(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("forward failed")

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="forward failed"):
        extract_resized(Exploding(), resized, pre, torch.device("cpu"), batch_size=4)
    assert threading.active_count() == before


def test_rows_of_a_stored_copy_are_read_from_its_file_and_views_are_copied(
    tmp_path: Path,
) -> None:
    from harness.features_stream import _RowReader

    images = _images((9, 5, 5, 3))
    np.save(tmp_path / "rows.npy", images)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    for array, by_file in ((mapped, True), (mapped[2:], False), (images, False)):
        with _RowReader(array) as reader:
            assert (reader.handle is not None) == by_file
            got = reader.read(1, 6, np.empty((5, 5, 5, 3), np.uint8))
        np.testing.assert_array_equal(got, np.asarray(array)[1:6])
    # A file cut short after it was mapped: the read names it instead of returning zeros.
    (tmp_path / "short.npy").write_bytes((tmp_path / "rows.npy").read_bytes()[:-80])
    truncated = np.memmap(tmp_path / "short.npy", np.uint8, "r", offset=128, shape=(7, 5, 5, 3))
    with (
        _RowReader(truncated) as reader,
        pytest.raises(OSError, match=r"short\.npy: file ends before row 9"),
    ):
        reader.read(0, 9, np.empty((9, 5, 5, 3), np.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_features_on_cuda_equal_extract_on_cuda(tmp_path: Path) -> None:
    # The pinned reader, its side stream and the lagging feature copy change when data
    # moves, not what is computed: the same batches on the same device, bit for bit.
    pre = PRESETS["resnet_bilinear"]
    images = _images((37, 50, 50))
    cuda = torch.device("cuda")
    model = TinyNet()
    expected = extract(model, images, pre, cuda, batch_size=8)
    resized = resized_images(images, images_digest(images), pre, tmp_path)
    np.testing.assert_array_equal(
        extract_resized(model, resized, pre, cuda, batch_size=8), expected
    )
