"""Width-first Pillow resizes: Pillow 6.2-12.3's bytes under any installed Pillow.

The digests below are what Pillow 6.2.2 and 9.5.0 gave (identical; Pillow 13.0 differs
on the first three) for ``tests/perf/pillow_resize_versions.py``'s arithmetic images,
recorded with ``OLD_PYTHON tests/perf/pillow_resize_versions.py digests old.json``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from perf.pillow_resize_versions import arithmetic_image
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import CenterCrop, InterpolationMode, Resize, v2
from torchvision.transforms import functional as F

from harness.config.cards import Preprocessing
from harness.data import pil_resize
from harness.data.decoded import geometric_transform
from harness.data.pil_resize import (
    WidthFirstResize,
    WidthFirstResizedCrop,
    resize_width_first,
    resized_size,
)
from harness.data.transforms import eval_transform
from harness.protocols.finetune.augment import feature_reuse_transform
from harness.protocols.finetune.data import train_transform

PILLOW_BEFORE_13 = {  # (height, width, channels, (width, height), filter): sha256
    (300, 211, 3, (224, 224), "BICUBIC"): (
        "cc7c30688c86eb55f06fd7afff1ed3a52b2fc86a34d1ccda73fd544b0d921ebc"
    ),
    (300, 211, 1, (224, 224), "BILINEAR"): (
        "4c7de0166b23043b66ca1d4127fa0ca4ded72db63f9230d879b16976fd1e0832"
    ),
    (1000, 50, 1, (160, 160), "LANCZOS"): (
        "c17c1708df74e1c04c5d593314b13fa2dd442a32a087d3a7e6e735e87f30fde0"
    ),
    (389, 320, 3, (224, 224), "BICUBIC"): (
        "e1d01b66506fe01df2c0d65bb64fde1b691da72b608710d9e7f093410ccfc488"
    ),
    (64, 64, 3, (160, 160), "BICUBIC"): (
        "b29c44c09e36e7ed52822efc014b35583399dfb3dadff283b339ef17ae9891eb"
    ),
}


@pytest.mark.parametrize("case", list(PILLOW_BEFORE_13))
def test_width_first_resize_gives_the_bytes_of_pillow_before_13(case: tuple) -> None:
    height, width, channels, size, name = case
    image = Image.fromarray(arithmetic_image(height, width, channels))
    resized = resize_width_first(image, size, getattr(Image.Resampling, name))
    assert resized.size == size
    assert hashlib.sha256(np.asarray(resized).tobytes()).hexdigest() == PILLOW_BEFORE_13[case]


@pytest.mark.parametrize("max_size", [None, 300])
def test_resized_size_is_torchvisions(max_size: int | None) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(5, 900, 2))
        image = Image.new("L", (width, height))
        for size in (224, [160], [100, 37]):
            if max_size is not None and not isinstance(size, int) and len(size) == 2:
                continue
            expected = F.resize(image, size, max_size=max_size).size[::-1]
            assert resized_size(height, width, size, max_size) == tuple(expected)


def test_width_first_resize_stands_in_for_torchvisions() -> None:
    image = Image.fromarray(arithmetic_image(300, 211, 3))
    for size in (256, (256, 256), 211):
        step = Resize(size, InterpolationMode.BICUBIC)
        ours = WidthFirstResize(step)(image)
        assert ours.size == step(image).size
        target = ours.size
        if target == image.size:
            assert ours is image  # torchvision returns the image itself too
        else:
            assert ours.tobytes() == resize_width_first(image, target, Image.BICUBIC).tobytes()
    tensor = torch.rand(3, 30, 20)
    step = Resize((16, 16), antialias=True)
    assert torch.equal(WidthFirstResize(step)(tensor), step(tensor))  # tensors: torchvision's


def test_eval_transforms_resize_width_first() -> None:
    pre = Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875, crop_mode="squash")
    array = arithmetic_image(300, 211, 3)
    side = int(224 / 0.875)
    expected = CenterCrop(224)(resize_width_first(Image.fromarray(array), (side, side), 2))
    assert np.array_equal(np.asarray(geometric_transform(pre)(Image.fromarray(array))), expected)
    as_tensor = F.normalize(F.to_tensor(expected), [0.5] * 3, [0.5] * 3)
    assert torch.equal(eval_transform(pre)(array), as_tensor)


# RandomResizedCrop(224) of arithmetic images, seeded, as Pillow 6.2.2, 9.5.0 and 12.3.0
# resize the crop in one call (Pillow 13.0 moves 30% and 13% of these pixels by one level)
CROPS_BEFORE_PILLOW_13 = {  # (height, width, channels, filter, module, seed): sha256
    (300, 211, 3, "bicubic", "v2", 1): (
        "11b2e1256fb979de4d89a92b895183bdcc7bbfbc9e05b7871d01949698d80e7e"
    ),
    (512, 640, 1, "bilinear", "v1", 19): (
        "a0782693b4b09a806763bc258973caa884d547406fe09c1dd405c83111257545"
    ),
}


def _random_resized_crop(module: str, size: int, interpolation: str) -> object:
    mode = InterpolationMode(interpolation)
    if module == "v1":
        return v1.RandomResizedCrop(size, interpolation=mode)
    return v2.RandomResizedCrop(size, interpolation=mode, antialias=True)


@pytest.mark.parametrize("case", list(CROPS_BEFORE_PILLOW_13))
def test_width_first_crop_gives_the_bytes_of_pillow_before_13(case: tuple) -> None:
    height, width, channels, interpolation, module, seed = case
    image = Image.fromarray(arithmetic_image(height, width, channels))
    torch.manual_seed(seed)
    crop = WidthFirstResizedCrop(_random_resized_crop(module, 224, interpolation))(image)
    assert crop.size == (224, 224)
    assert hashlib.sha256(np.asarray(crop).tobytes()).hexdigest() == CROPS_BEFORE_PILLOW_13[case]


@pytest.mark.parametrize("module", ["v1", "v2"])
def test_width_first_crop_draws_torchvisions_boxes(module: str) -> None:
    # upscales: every Pillow runs the width first here, so the bytes must be torchvision's
    image = Image.fromarray(arithmetic_image(64, 48, 3))
    step = _random_resized_crop(module, 160, "bicubic")
    for seed in range(30):
        torch.manual_seed(seed)
        expected, after_expected = np.asarray(step(image)), torch.rand(1)
        torch.manual_seed(seed)
        ours, after_ours = np.asarray(WidthFirstResizedCrop(step)(image)), torch.rand(1)
        assert np.array_equal(ours, expected)
        assert torch.equal(after_ours, after_expected)  # the same number of draws
    tensor = torch.rand(3, 30, 20)
    torch.manual_seed(0)
    expected_tensor = step(tensor)
    torch.manual_seed(0)
    assert torch.equal(WidthFirstResizedCrop(step)(tensor), expected_tensor)


def test_training_augmentations_resize_their_crops_width_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[tuple[int, int]] = []

    def recording(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
        sizes.append(size)
        return resize_width_first(image, size, resample)

    monkeypatch.setattr(pil_resize, "resize_width_first", recording)
    pre = Preprocessing(96, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    array = arithmetic_image(300, 211, 3)
    torch.manual_seed(0)
    assert train_transform(pre, (0.08, 1.0))(array).shape == (3, 96, 96)
    assert sizes == [(96, 96)]
    sizes.clear()
    torch.manual_seed(0)
    assert feature_reuse_transform(pre, (0.8, 1.2))(array).shape == (3, 96, 96)
    assert sizes == [(109, 109), (96, 96)]  # the square resize, then the crop
