"""The feature cache: keys, hits, atomic files, one extraction per key across processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cases import toy_dataset_card

from harness import features
from harness.cache.atomic import TMP_INFIX
from harness.config.cards import get_model_card
from harness.zoo import build_model

MODEL = "mobilenet_v2.random"


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(n, 32, 32), dtype=np.uint8)


def _extract(images: np.ndarray, split: str = "train", size: int = 32, load=None, dataset=None):
    card = get_model_card(MODEL)
    loaded = build_model(card)
    return features.cached_features(
        card,
        loaded.weights_id,
        dataset or toy_dataset_card(),
        split,
        images,
        card.preprocessing.with_input_size(size),
        load or (lambda: loaded.module),
        device="cpu",
        batch_size=4,
    )


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    return tmp_path


def test_second_call_is_a_hit_with_identical_features() -> None:
    images = _images()
    first, info1 = _extract(images)
    second, info2 = _extract(images)
    assert not info1.hit and info2.hit
    assert first.shape == (6, 1280) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    kinds = [event["event"] for event in features.read_events()]
    assert kinds == ["extract", "hit"]


def test_cached_features_equal_a_direct_forward_pass() -> None:
    images = _images()
    cached, _ = _extract(images)
    card = get_model_card(MODEL)
    direct = features.extract(
        build_model(card).module,
        images,
        card.preprocessing.with_input_size(32),
        features.resolve_device("cpu"),
        batch_size=6,
    )
    # relative to the features' own scale (init statistics leave them near 1e-9)
    np.testing.assert_allclose(cached, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max())


@pytest.mark.parametrize(
    "change",
    ["images", "split", "input_size", "dataset_version"],
)
def test_key_changes_with_everything_that_decides_the_features(change: str) -> None:
    base = dict(images=_images(), split="train", size=32, dataset=toy_dataset_card())
    _, info = _extract(**base)
    changed = dict(base)
    if change == "images":
        changed["images"] = _images(seed=1)
    elif change == "split":
        changed["split"] = "val"
    elif change == "input_size":
        changed["size"] = 40
    else:
        changed["dataset"] = toy_dataset_card(version=2)
    _, other = _extract(**changed)
    assert other.key != info.key and not other.hit


def test_a_pillow_or_torch_upgrade_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import PIL

    card = get_model_card(MODEL)
    args = (card, "0" * 64, toy_dataset_card(), "train", "a" * 64, card.preprocessing)
    before = features.feature_key(*args, "pooled", "fp32", 64)
    monkeypatch.setattr(PIL, "__version__", "12.3.0")  # Pillow 13 resizes some shapes otherwise
    after_pillow = features.feature_key(*args, "pooled", "fp32", 64)
    monkeypatch.setattr(features.torch, "__version__", "0.0.1")
    after_torch = features.feature_key(*args, "pooled", "fp32", 64)
    assert len({before, after_pillow, after_torch}) == 3


def test_weights_change_the_key() -> None:
    card = get_model_card(MODEL)
    args = (toy_dataset_card(), "train", "a" * 64, card.preprocessing, "pooled", "fp32", 64)
    assert features.feature_key(card, "0" * 64, *args) != features.feature_key(
        card, "1" * 64, *args
    )


def test_corrupt_cache_file_is_extracted_again(caplog: pytest.LogCaptureFixture) -> None:
    images = _images()
    reference, info = _extract(images)
    info.path.write_bytes(b"not an npz file")
    again, info2 = _extract(images)
    assert not info2.hit
    np.testing.assert_array_equal(reference, again)
    assert "unreadable" in caplog.text


def test_leftover_temporary_from_a_killed_writer_is_ignored_and_removed() -> None:
    images = _images()
    card = get_model_card(MODEL)
    loaded = build_model(card)
    key = features.feature_key(
        card,
        loaded.weights_id,
        toy_dataset_card(),
        "train",
        features.images_digest(images),
        card.preprocessing.with_input_size(32),
        "pooled",
        "fp32",
        4,
    )
    folder = features.feature_dir() / card.name / "toy"
    folder.mkdir(parents=True)
    stale = folder / f"train-{key}.npz{TMP_INFIX}abc.npz"
    stale.write_bytes(b"half a file")
    assert features.list_cache() == []
    _, info = _extract(images)
    assert not info.hit and info.path.is_file()
    assert not stale.exists()
    assert len(features.list_cache()) == 1


def _slow_worker(home: str, queue: multiprocessing.Queue) -> None:
    import os

    os.environ["MEDXFER_HOME"] = home

    def slow_load() -> torch.nn.Module:
        time.sleep(1.0)  # hold the lock long enough for the other process to wait on it
        return build_model(get_model_card(MODEL)).module

    result, info = _extract(_images(), load=slow_load)
    queue.put((info.hit, float(result.sum())))


def test_two_processes_extract_a_key_once(_home: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_slow_worker, args=(str(_home), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    outcomes = sorted(queue.get(timeout=5) for _ in workers)
    assert [hit for hit, _ in outcomes] == [False, True]
    assert outcomes[0][1] == pytest.approx(outcomes[1][1])
    extracts = [e for e in features.read_events() if e["event"] == "extract"]
    assert len(extracts) == 1


class _ShapeRecorder(torch.nn.Module):
    """A per-image feature map that records the batch shape of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(x.shape[0])
        return x.mean(dim=(2, 3))


def test_every_forward_pass_has_the_batch_size_and_padding_is_dropped() -> None:
    # oneDNN picks another kernel for small batches (where depends on the thread count),
    # so extraction always feeds full batches and drops the padded rows.
    images = _images(n=10)
    recorder = _ShapeRecorder()
    pre = get_model_card(MODEL).preprocessing.with_input_size(32)
    out = features.extract(recorder, images, pre, features.resolve_device("cpu"), batch_size=4)
    assert recorder.shapes == [4, 4, 4]
    assert out.shape == (10, 3)
    alone = features.extract(recorder, images[8:], pre, features.resolve_device("cpu"), 4)
    np.testing.assert_array_equal(out[8:], alone)


def test_precision_and_batch_size_enter_the_key() -> None:
    card = get_model_card(MODEL)
    args = (toy_dataset_card(), "train", "a" * 64, card.preprocessing, "pooled")
    keys = {
        features.feature_key(card, "0" * 64, *args, precision, batch)
        for precision in ("fp32", "bf16")
        for batch in (32, 64)
    }
    assert len(keys) == 4


def test_cache_file_records_the_precision_decision() -> None:
    _, info = _extract(_images())
    assert info.precision == {
        "requested": "fp32",
        "effective": "fp32",
        "reason": "",
        "relative_error": None,
        "zero_rows": 0,
        "nonfinite_rows": 0,
    }
    _, hit = _extract(_images())
    assert hit.hit and hit.precision == info.precision
