"""Pillow's resize under two versions: which resizes give other bytes, and does an explicit
horizontal-then-vertical pass order give the old ones?

Pillow 13 runs the vertical pass first when the height shrinks much more than the width
(python-pillow/Pillow#9549); every earlier Pillow ran the horizontal pass first. This
script resizes small integer-arithmetic images (the same under any NumPy, no RNG) of 38
shapes to 6 sizes with bilinear, bicubic and Lanczos, in RGB and L, once in one call and
once as two calls (width first, then height), and records each result's SHA-256. It
does the same for 40 crops of each of three images resized to 224x224 (what a training
augmentation's ``RandomResizedCrop`` does):

    OLD_PYTHON tests/perf/pillow_resize_versions.py digests old.json   # e.g. Pillow 9.5
    python tests/perf/pillow_resize_versions.py digests new.json
    python tests/perf/pillow_resize_versions.py compare old.json new.json

``compare`` counts the resizes whose one-call bytes differ between the two runs, and
those where the second run's two-call bytes equal the first run's one-call bytes.
Runs on Python 3.7 and up (so that 2019-2022 Pillow wheels install).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
CROPPED = [(512, 640), (1024, 1024), (300, 211)]  # (height, width) of the cropped images
SIZES = [(224, 224), (160, 160), (256, 256), (100, 40), (40, 100), (299, 299)]  # (w, h)


def shapes() -> list[tuple[int, int]]:
    """(height, width) of the test images: typical ones, then 30 from a fixed sequence."""
    fixed = [(300, 211), (389, 320), (2828, 2320), (100, 29), (1000, 50), (211, 300)]
    fixed += [(64, 64), (512, 384)]
    sequence = [(37 * k * k + 11 * k) % 680 + 20 for k in range(1, 61)]
    return fixed + [(sequence[i], sequence[i + 1]) for i in range(0, len(sequence), 2)]


def crop_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """40 ``(left, top, right, bottom)`` boxes of 30-99% of each side, from fixed sequences."""
    boxes = []
    for k in range(40):
        box_width = width * (30 + (k * 37) % 70) // 100
        box_height = height * (30 + (k * 53) % 70) // 100
        left = (k * 131) % (width - box_width + 1)
        top = (k * 71) % (height - box_height + 1)
        boxes.append((left, top, left + box_width, top + box_height))
    return boxes


def arithmetic_image(height: int, width: int, channels: int) -> np.ndarray:
    """A textured uint8 image with a vertical gradient, by integer arithmetic only."""
    index = np.arange(height * width * channels, dtype=np.uint64)
    index = index.reshape(height, width, channels)
    texture = ((index * np.uint64(2654435761)) >> np.uint64(13)) % np.uint64(56)
    rows = np.arange(height, dtype=np.uint64)[:, None, None]
    image = (texture + rows * np.uint64(200) // np.uint64(height)).astype(np.uint8)
    return image if channels == 3 else image[..., 0]


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


def digests(out: Path) -> None:
    """Write one-call and two-call digests of every (shape, mode, size, filter) to ``out``."""
    results = {}
    for height, width in shapes():
        for channels in (3, 1):
            image = Image.fromarray(arithmetic_image(height, width, channels))
            for size in SIZES:
                for name, resample in FILTERS.items():
                    key = f"{height}x{width}x{channels} to {size[0]}x{size[1]} {name}"
                    one = image.resize(size, resample)
                    two = image.resize((size[0], height), resample).resize(size, resample)
                    results[key] = {"one_call": _digest(one), "two_calls": _digest(two)}
    for height, width in CROPPED:
        for channels in (3, 1):
            image = Image.fromarray(arithmetic_image(height, width, channels))
            for box in crop_boxes(height, width):
                crop = image.crop(box)
                for name in ("bilinear", "bicubic"):
                    resample = FILTERS[name]
                    key = f"{height}x{width}x{channels} crop {box} to 224x224 {name}"
                    one = crop.resize((224, 224), resample)
                    two = crop.resize((224, crop.height), resample).resize((224, 224), resample)
                    results[key] = {"one_call": _digest(one), "two_calls": _digest(two)}
    report = {"pillow": PIL.__version__, "python": sys.version.split()[0], "resizes": results}
    out.write_text(json.dumps(report, indent=1))
    same = sum(v["one_call"] == v["two_calls"] for v in results.values())
    print(f"{out}: Pillow {PIL.__version__}, {len(results)} resizes, one call == two calls: {same}")


def compare(first: Path, second: Path) -> int:
    """Print how many one-call results differ, and how many the two-call order restores."""
    a, b = (json.loads(path.read_text()) for path in (first, second))
    keys = sorted(set(a["resizes"]) & set(b["resizes"]))
    differ = [k for k in keys if a["resizes"][k]["one_call"] != b["resizes"][k]["one_call"]]
    restored = [k for k in keys if a["resizes"][k]["one_call"] == b["resizes"][k]["two_calls"]]
    print(f"Pillow {a['pillow']} against {b['pillow']}: {len(keys)} resizes")
    print(f"- one call gives other bytes: {len(differ)} ({len(differ) / len(keys):.0%})")
    print(
        f"- {b['pillow']} in two calls (width, then height) gives {a['pillow']}'s one-call bytes:"
    )
    print(f"  {len(restored)} of {len(keys)}")
    for key in differ[:5]:
        print(f"  e.g. {key}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("digests", help="resize the test images, write the digests")
    run.add_argument("out", type=Path)
    both = sub.add_parser("compare", help="compare two runs' digests")
    both.add_argument("first", type=Path)
    both.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.command == "digests":
        digests(args.out)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    sys.exit(main())
