"""VTAB's Retinopathy cards: TFDS' btgraham-300 images and splits from the Kaggle download.

A tiny EyePACS download is written in its real layout (``train/`` and ``test/`` JPEGs,
``trainLabels.csv``, ``retinopathy_solution.csv`` with its ``Usage`` column). The
reference below follows TFDS' ``_btgraham_processing`` step by step as its source
documents it (tensorflow/datasets@0560e68:tensorflow_datasets/image_classification/
diabetic_retinopathy_detection.py), VTAB's TF1 bilinear resize is written as two
interpolation matrices, and the record order as TFDS' Hasher documents it: ascending
``int(md5(split name + key).hexdigest(), 16)`` with the image name as key. The blur of
OpenCV 3.4.1-4.1.2 (``blur: opencv-pre-4.2``) is checked against digests that the real
OpenCV 4.1.2 and 3.4.5 gave (``tests/perf/graham_opencv_versions.py golden``) and
against a plain integer reference of opencv/opencv#9863's fixed-point kernel.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_split_tfds_order import card_reading

from harness.config.cards import CardError, load_dataset_card_file
from harness.data import DatasetError
from harness.data.npz import read_npz_meta
from harness.data.prepare import load_splits, prepare
from harness.data.readers.graham import GrahamParams, gaussian_blur_pre_4_2, graham_jpeg

cv2 = pytest.importorskip("cv2")
from perf.graham_opencv_versions import GOLDEN_SIGMAS, array_digest, golden_images  # noqa: E402

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
TRAIN = [f"{patient}_{eye}" for patient in (1, 3, 4, 7, 9, 12) for eye in ("left", "right")]
SOLUTION = [  # image, level, Usage
    *((f"{p}_{e}", "Public") for p in (2, 5, 6) for e in ("left", "right")),
    *((f"{p}_{e}", "Private") for p in (8, 11) for e in ("left", "right")),
]
# The same keys sorted by TFDS' own tensorflow_datasets/core/hashing.py (tensorflow-datasets
# 4.9.10 from PyPI, ``sorted(keys, key=Hasher(salt).hash_key)``), not by this file's md5.
TFDS_TRAIN_ORDER = ["9_right", "3_left", "3_right", "12_right", "7_left", "4_right", "1_right",
                    "7_right", "1_left", "4_left", "9_left", "12_left"]  # fmt: skip
TFDS_VALIDATION_ORDER = ["2_right", "6_right", "5_right", "5_left", "2_left", "6_left"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fundus(seed: int, height: int = 150, width: int = 200) -> bytes:
    """A fundus-like JPEG: a textured bright disc on black, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.42 * width) ** 2
    colour = np.array([170, 90, 40]) + rng.integers(-20, 20, 3)
    texture = rng.normal(0, 25, (height // 10 + 1, width // 10 + 1, 3)).repeat(10, 0).repeat(10, 1)
    image = np.where(disc[..., None], colour + texture[:height, :width], 0)
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


# cv2.GaussianBlur of OpenCV 4.1.2 and 3.4.5 (identical) on golden_images(), per sigma
OPENCV_4_1_BLUR = [
    "38812d019d331fd0bdb3eec26147660815220206f38c00e2c14d4f02f3d8e1e5",
    "c547e9abfbbcc1e9870d679dd1b486c5997df3a76511853cb7d9d8a3894e9be7",
    "293a0729f19abdf1ccf23b14bed42d585a42ebc98a91f86ec328bcf5af09dbdf",
    "79641e182da1d23e493a98299365f7c0ea8f02f352f79f76924f11689dfe3d07",
    "47d0e15047c69c39ff8268a628b232aefbd58c4f979191475c1c91e2dbbae6e9",
    "49ce0bf74383a91bb143ee6bea2cd3f9ec0f2079f22a508e678a5e9058f59eaf",
    "a292e439ddcf03d0f4f2c8288b3f868d5aa70ae029e1fb378e9fbf54b26e4ef1",
    "0cd1e75330e607eecec0c76679e474f4faa12ff82e632ab8ae0aea2195fb0aaf",
    "5739f0fe5df5eb3389cd7a96f975f3a903b05344943d4d5294bcb57286152b3e",
]


def fixed_point_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV < 4.2's 8-bit GaussianBlur as opencv/opencv#9863 describes it, written plainly.

    Kernel: the normalised Gaussian rounded to 1/256 steps with no correction of its sum;
    two exact integer passes with REFLECT_101 borders; round half up from 16 bits.
    """
    size = int(np.rint(sigma * 6 + 1)) | 1
    half = size // 2
    weights = [np.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-half, half + 1)]
    fixed = [int(np.floor(w / sum(weights) * 256 + 0.5)) for w in weights]

    def reflect_101(index: int, length: int) -> int:
        while not 0 <= index < length:
            index = -index if index < 0 else 2 * (length - 1) - index
        return index

    def one_pass(values: np.ndarray, axis: int) -> np.ndarray:
        length = values.shape[axis]
        out = np.zeros(values.shape, dtype=np.int64)
        for tap, weight in enumerate(fixed):
            index = [reflect_101(i + tap - half, length) for i in range(length)]
            out += weight * np.take(values, index, axis=axis)
        return out

    both = one_pass(one_pass(image.astype(np.int64), 1), 0)
    return np.clip((both + 32768) // 65536, 0, 255).astype(np.uint8)


def tfds_btgraham(data: bytes, radius: int = 300, blur: Callable | None = None) -> bytes:
    """TFDS' stored bytes for one Kaggle JPEG, as its builder documents the steps."""
    blur = blur or (lambda image, sigma: cv2.GaussianBlur(image, (0, 0), sigma))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), 3)
    row = image[image.shape[0] // 2].sum(axis=1)
    r = (row > row.mean() / 10).sum() / 2 or image.shape[0] / 2
    image = cv2.resize(image, None, fx=radius / r, fy=radius / r)
    image = cv2.addWeighted(image, 4, blur(image, radius / 30), -4, 128)
    keep = int(0.9 * radius)
    cx, cy = image.shape[1] // 2, image.shape[0] // 2
    mask = np.zeros(image.shape)
    cv2.circle(mask, (cx, cy), keep, (1, 1, 1), -1)
    image = (image * mask + (1 - mask) * 128)[
        max(cy - keep, 0) : cy + keep, max(cx - keep, 0) : cx + keep
    ]
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 72])[1].tobytes()


def tf1_resize(image: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (no half-pixel centres, no antialias) as interpolation matrices."""

    def matrix(n_in: int) -> np.ndarray:
        weights = np.zeros((size, n_in))
        for i in range(size):
            where = i * n_in / size
            low = int(np.floor(where))
            weights[i, low] += 1 - (where - low)
            weights[i, min(low + 1, n_in - 1)] += where - low
        return weights

    rows, cols = matrix(image.shape[0]), matrix(image.shape[1])
    columns_first = np.tensordot(image.astype(np.float64), cols, axes=([1], [1]))  # (h, c, j)
    return np.tensordot(rows, columns_first, axes=([1], [0])).transpose(0, 2, 1)


def tfds_order(salt: str, keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: int(hashlib.md5((salt + k).encode()).hexdigest(), 16))


def test_the_md5_reading_is_tfds_hasher_order() -> None:
    assert tfds_order("train", TRAIN) == TFDS_TRAIN_ORDER
    public = [name for name, usage in SOLUTION if usage == "Public"]
    assert tfds_order("validation", public) == TFDS_VALIDATION_ORDER


def write_eyepacs(root: Path) -> dict[str, bytes]:
    """The Kaggle layout; returns each image name's original JPEG bytes."""
    files: dict[str, bytes] = {}
    for folder, names in (("train", TRAIN), ("test", [name for name, _ in SOLUTION])):
        (root / folder).mkdir(parents=True)
        for name in names:
            files[name] = fundus(len(files), height=140 + 4 * len(files))
            (root / folder / f"{name}.jpeg").write_bytes(files[name])
    with open(root / "trainLabels.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["image", "level"])
        writer.writerows([name, k % 5] for k, name in enumerate(TRAIN))
    with open(root / "retinopathy_solution.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["image", "level", "Usage"])
        writer.writerows([name, k % 5, usage] for k, (name, usage) in enumerate(SOLUTION))
    return files


def names_of(images: np.ndarray, expected: dict[str, np.ndarray]) -> list[str]:
    """Which original image each loaded one is (its reference within one grey level)."""
    found = []
    for image in images:
        close = [n for n, ref in expected.items() if np.abs(image - ref).max() <= 1.0]
        assert len(close) == 1, close
        found.append(close[0])
    return found


def test_graham_bytes_are_tfds_bytes_including_the_no_radius_fallback() -> None:
    params = GrahamParams()
    for seed in (0, 1):
        original = fundus(seed)
        assert graham_jpeg(original, params) == tfds_btgraham(original)
    black = io.BytesIO()
    Image.new("RGB", (64, 48)).save(black, "JPEG")
    assert graham_jpeg(black.getvalue(), params) == tfds_btgraham(black.getvalue())
    smaller = GrahamParams(radius=40)
    assert graham_jpeg(fundus(2), smaller) == tfds_btgraham(fundus(2), radius=40)
    with pytest.raises(ValueError, match="OpenCV cannot decode it"):
        graham_jpeg(b"not a jpeg", params)


@pytest.mark.parametrize("case", range(9))
def test_pre_4_2_blur_is_opencv_4_1s_bit_for_bit(case: int) -> None:
    image = golden_images()[case // 3]
    sigma = GOLDEN_SIGMAS[case % 3]
    ours = gaussian_blur_pre_4_2(image, sigma)
    assert array_digest(ours) == OPENCV_4_1_BLUR[case]
    assert np.array_equal(ours, fixed_point_blur(image, sigma))


def test_pre_4_2_blur_gives_the_brighter_images_tfds_stored_in_2019() -> None:
    old = GrahamParams(blur="opencv-pre-4.2")
    for seed in (0, 1):
        assert graham_jpeg(fundus(seed), old) == tfds_btgraham(fundus(seed), blur=fixed_point_blur)
    # the 2019 kernel sums to 252/256 per pass at sigma 10: a darker local average,
    # hence a brighter disc once it is subtracted four times
    stored = {
        blur: np.asarray(Image.open(io.BytesIO(graham_jpeg(fundus(0), GrahamParams(blur=blur)))))
        for blur in ("opencv", "opencv-pre-4.2")
    }
    height, width = stored["opencv"].shape[:2]
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.4 * height) ** 2
    brighter = stored["opencv-pre-4.2"].astype(float) - stored["opencv"]
    assert 8 < brighter[disc].mean() < 20
    with pytest.raises(ValueError, match="needs a uint8 image and sigma > 0"):
        gaussian_blur_pre_4_2(np.zeros((4, 4), np.float32), 1.0)


def test_vtab1k_card_gives_tfds_first_records_in_grahams_preprocessing(tmp_path: Path) -> None:
    files = write_eyepacs(tmp_path / "eyepacs")
    expected = {}
    for name, data in files.items():
        stored = tfds_btgraham(data, blur=fixed_point_blur)
        stored = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
        expected[name] = tf1_resize(stored, 224)
    splits = load_splits(card_reading(tmp_path / "eyepacs", "eyepacs_vtab1k", train=5, val=3))
    assert all(s.images.shape[1:] == (224, 224, 3) for s in splits.values())
    private = [name for name, usage in SOLUTION if usage == "Private"]
    assert sorted(names_of(splits["train"].images, expected)) == sorted(TFDS_TRAIN_ORDER[:5])
    assert sorted(names_of(splits["val"].images, expected)) == sorted(TFDS_VALIDATION_ORDER[:3])
    assert sorted(names_of(splits["test"].images, expected)) == sorted(private)
    levels = {name: k % 5 for k, name in enumerate(TRAIN)}
    train_names = names_of(splits["train"].images, expected)
    assert splits["train"].labels.tolist() == [levels[n] for n in train_names]


def test_full_card_splits_the_test_solution_by_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_eyepacs(tmp_path / "eyepacs")
    card = card_reading(tmp_path / "eyepacs", "eyepacs_vtab")
    splits = load_splits(card)

    def opencv_of_archive() -> str:
        return json.loads(read_npz_meta(prepare(card))["key"])["image_processing"]["opencv"]

    assert opencv_of_archive() == cv2.__version__
    with monkeypatch.context() as patched:  # another OpenCV blurs otherwise: decoded again
        patched.setattr(cv2, "__version__", "4.1.2")
        assert opencv_of_archive() == "4.1.2"
    assert {name: len(s.labels) for name, s in splits.items()} == {
        "train": len(TRAIN),
        "val": 6,
        "test": 4,
    }
    public_levels = [k % 5 for k, (_, usage) in enumerate(SOLUTION) if usage == "Public"]
    assert sorted(splits["val"].labels.tolist()) == sorted(public_levels)


def test_committed_cards_are_vtabs_task(tmp_path: Path) -> None:
    small = load_dataset_card_file(DATASETS / "eyepacs_vtab1k.yaml")
    assert (small.split.name, small.split.params.train, small.split.params.val) == (
        "tfds_record_order",
        800,
        200,
    )
    assert small.split.params.key_format == "{stem}"
    reader = small.reader.params
    assert reader.graham == GrahamParams(
        radius=300, mask_ratio=0.9, crop=True, jpeg_quality=72, blur="opencv-pre-4.2"
    )
    assert (reader.size, reader.fit, reader.interpolation) == (224, "stretch", "tf1_bilinear")
    assert reader.split_where == {
        "validation": {"Usage": ("Public",)},
        "test": {"Usage": ("Private",)},
    }


def test_missing_opencv_and_bad_fields_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_eyepacs(tmp_path / "eyepacs")
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(DatasetError, match=r'needs OpenCV: pip install "medxfer\[retinopathy\]"'):
        load_splits(card_reading(tmp_path / "eyepacs", "eyepacs_vtab1k", train=5, val=3))
    monkeypatch.undo()
    text = (DATASETS / "eyepacs_vtab1k.yaml").read_text()
    bad = tmp_path / "cards"
    bad.mkdir()
    for old, new, message in (
        ("    validation: {Usage", "    valid: {Usage", r"'split_where' names splits"),
        ("graham: {radius: 300", "graham: {radius: 2", r"'graham\.radius' must be in"),
        ("blur: opencv-pre-4.2", "blur: opencv-4.1", r"'graham\.blur' must be one of"),
        ("  mode: RGB", "  mode: L", r"'graham' gives colour images"),
        ('key_format: "{stem}"', 'key_format: "{name}"', r"may use only \{split\}"),
    ):
        path = bad / "eyepacs_vtab1k.yaml"
        path.write_text(text.replace(old, new))
        with pytest.raises(CardError, match=message):
            load_dataset_card_file(path)
