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
from torchvision.transforms import CenterCrop, InterpolationMode, Resize
from torchvision.transforms import functional as F

from harness.config.cards import Preprocessing
from harness.data.decoded import geometric_transform
from harness.data.pil_resize import WidthFirstResize, resize_width_first, resized_size
from harness.data.transforms import eval_transform

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
