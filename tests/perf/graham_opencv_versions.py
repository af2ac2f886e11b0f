"""Graham's preprocessing (TFDS' btgraham-300) under two OpenCV versions: the same bytes?

TFDS built ``diabetic_retinopathy_detection/btgraham-300`` in 2019 with the OpenCV of
the time; the harness (``harness/data/readers/graham.py``) runs the same steps with the
installed one. This script runs the steps under any interpreter that has NumPy and
OpenCV, Python 3.7 and up so that 2019 wheels install, and says which step, if any,
first gives different bytes:

    python tests/perf/graham_opencv_versions.py inputs DIR
    python tests/perf/graham_opencv_versions.py process DIR NEW.json
    OLD_PYTHON tests/perf/graham_opencv_versions.py process DIR OLD.json
    python tests/perf/graham_opencv_versions.py compare OLD.json NEW.json
    OLD_PYTHON tests/perf/graham_opencv_versions.py golden


``inputs`` (needs Pillow) writes fundus-like JPEGs at the sizes of the Kaggle download
(a bright textured disc with vessel-like lines on black, 4:2:0 chroma like the camera
files) plus a black image (TFDS' no-radius fallback). ``process`` records the SHA-256 of
every step's output per image: the decode, the scaling, the blur, the local-average
subtraction, the disc mask, the crop and the JPEG TFDS stores. Where the harness
imports (Python 3.10 and up), it also checks that the harness's ``graham_jpeg`` gives
the script's JPEG, and runs the harness's ``blur: opencv-pre-4.2`` (its copy of the
fixed-point blur of OpenCV 3.4.1-4.1.2): ``compare`` then checks that copy's blur and
JPEG against the other run's real OpenCV. ``golden`` prints the digests of that blur on
small arithmetic images (no RNG, the same under any NumPy), the values
``tests/test_retinopathy_vtab.py`` holds. The steps follow TFDS' ``_btgraham_processing``
(tensorflow/datasets@0560e68:tensorflow_datasets/image_classification/
diabetic_retinopathy_detection.py) as the harness does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

RADIUS = 300
MASK_RATIO = 0.9
QUALITY = 72
# (width, height) of camera files in the Kaggle download, and two small ones
SIZES = [(3888, 2592), (4752, 3168), (2592, 1944), (3456, 2304), (1024, 681), (400, 315)]
STEPS = ("decode", "scale", "blur", "subtract", "mask", "crop", "jpeg")


def make_inputs(folder: Path, per_size: int) -> None:
    """Write ``per_size`` fundus-like JPEGs per size and one black image to ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, (width, height) in enumerate(SIZES):
        for copy in range(per_size):
            rng = np.random.default_rng(100 * index + copy)
            yy, xx = np.mgrid[:height, :width].astype(np.float32)
            radius = 0.45 * min(width, height) * rng.uniform(0.9, 1.1)
            dist = np.hypot(yy - height / 2, xx - width / 2) / radius
            shade = np.clip(1.0 - 0.5 * dist**2, 0.0, 1.0)[..., None]
            colour = np.array([190, 100, 45], np.float32) + rng.integers(-25, 25, 3)
            cells = rng.normal(0, 18, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
            texture = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
            image = shade * colour + texture
            for _ in range(12):  # dark vessel-like curves
                angle = rng.uniform(0, 2 * np.pi)
                curve = np.abs(
                    np.sin(angle) * (xx - width / 2)
                    - np.cos(angle) * (yy - height / 2)
                    + 40 * np.sin(dist * rng.uniform(3, 9))
                )
                image -= (curve < rng.uniform(2, 6) * width / 1000)[..., None] * 60.0
            image = np.where((dist < 1.0)[..., None], image, rng.integers(0, 6))
            pixels = np.clip(image, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(
                folder / f"{width}x{height}_{copy}.jpeg", "JPEG", quality=90, subsampling=2
            )
    black = np.zeros((315, 400, 3), np.uint8)
    Image.fromarray(black).save(folder / "black.jpeg", "JPEG", quality=90)


def array_digest(array: np.ndarray) -> str:
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(header + np.ascontiguousarray(array).tobytes()).hexdigest()


def _opencv_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def btgraham_steps(data: bytes, blur: Any = _opencv_blur) -> tuple[dict[str, str], bytes]:
    """Every step's output digest, and the JPEG bytes TFDS would store for ``data``.

    ``blur(image, sigma)`` is the local-average blur (the installed OpenCV's by default).
    """
    digests = {}
    image = cv2.imdecode(np.frombuffer(data, np.uint8), 3)
    digests["decode"] = array_digest(image)
    middle = image[image.shape[0] // 2].sum(axis=1)
    r = (middle > middle.mean() / 10.0).sum() / 2.0
    if r < 1.0:
        r = image.shape[0] / 2.0
    image = cv2.resize(image, dsize=None, fx=RADIUS / r, fy=RADIUS / r)
    digests["scale"] = array_digest(image)
    blurred = blur(image, RADIUS / 30)
    digests["blur"] = array_digest(blurred)
    image = cv2.addWeighted(image, 4, blurred, -4, 128)
    digests["subtract"] = array_digest(image)
    mask = np.zeros(image.shape)
    centre = (image.shape[1] // 2, image.shape[0] // 2)
    keep = int(RADIUS * MASK_RATIO)
    cv2.circle(mask, centre, keep, (1, 1, 1), -1)
    image = image * mask + (1 - mask) * 128
    digests["mask"] = array_digest(image)
    (cx, cy), (height, width) = centre, image.shape[:2]
    image = image[
        max(cy - keep, 0) : min(cy + keep, height), max(cx - keep, 0) : min(cx + keep, width)
    ]
    digests["crop"] = array_digest(image)
    ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode the processed image")
    stored = encoded.tobytes()
    digests["jpeg"] = hashlib.sha256(stored).hexdigest()
    return digests, stored


def _harness() -> Any:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from harness.data.readers import graham
    except (ImportError, SyntaxError, TypeError):  # older Pythons cannot import the harness
        return None
    return graham


def _harness_digests(graham: Any, data: bytes) -> dict[str, str]:
    """The harness's pre-4.2 blur of the scaled image and its JPEG under each blur."""
    digests = {}
    for blur in graham.BLURS:
        params = graham.GrahamParams(
            radius=RADIUS, mask_ratio=MASK_RATIO, crop=True, jpeg_quality=QUALITY, blur=blur
        )
        digests["jpeg " + blur] = hashlib.sha256(graham.graham_jpeg(data, params)).hexdigest()
    steps, _ = btgraham_steps(data, blur=graham.gaussian_blur_pre_4_2)
    digests["blur opencv-pre-4.2"] = steps["blur"]
    return digests


def process(folder: Path, out: Path) -> None:
    """Run the steps on every JPEG in ``folder``; write the digests and versions to ``out``."""
    graham = _harness()
    images, harness_equal, harness = {}, {}, {}
    for path in sorted(folder.glob("*.jpeg")):
        data = path.read_bytes()
        images[path.name], _ = btgraham_steps(data)
        if graham is not None:
            harness[path.name] = _harness_digests(graham, data)
            harness_equal[path.name] = (
                harness[path.name]["jpeg opencv"] == images[path.name]["jpeg"]
            )
    report = {
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "jpeg": _jpeg_library(),
        "images": images,
        "harness_equal": harness_equal or None,
        "harness": harness or None,
    }
    out.write_text(json.dumps(report, indent=1))
    mismatched = [name for name, same in harness_equal.items() if not same]
    print(
        "{}: OpenCV {} on Python {}, {} images".format(
            out, cv2.__version__, report["python"], len(images)
        )
    )
    if graham is not None:
        print(
            "harness graham_jpeg equal to the steps: {}".format(
                "no: " + ", ".join(mismatched) if mismatched else "all"
            )
        )


def _jpeg_library() -> str:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("JPEG:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def compare(first: Path, second: Path) -> int:
    """Print, per image, the first step whose bytes differ; return 1 if any differ."""
    a, b = (json.loads(path.read_text()) for path in (first, second))
    print(f"| | {first.name} | {second.name} |")
    print("|---|---|---|")
    for key in ("python", "opencv", "numpy", "jpeg"):
        print(f"| {key} | {a[key]} | {b[key]} |")
    names = sorted(set(a["images"]) | set(b["images"]))
    print("\n| image | first differing step |\n|---|---|")
    differ = 0
    for name in names:
        steps_a, steps_b = a["images"].get(name), b["images"].get(name)
        if steps_a is None or steps_b is None:
            verdict = "missing in one run"
        else:
            verdict = next((step for step in STEPS if steps_a[step] != steps_b[step]), "none")
        differ += verdict != "none"
        print(f"| {name} | {verdict} |")
    print(f"\n{differ} of {len(names)} images differ")
    for ours, theirs, path in ((a, b, second), (b, a, first)):
        if ours.get("harness") and not theirs.get("harness"):
            _compare_emulation(ours["harness"], theirs, path.name)
    return 1 if differ else 0


def _compare_emulation(harness: dict[str, dict[str, str]], real: dict[str, Any], name: str) -> None:
    """The harness's ``opencv-pre-4.2`` blur and JPEG against a real OpenCV's."""
    print("\nharness `blur: opencv-pre-4.2` against OpenCV {} ({}):".format(real["opencv"], name))
    print("\n| image | blur equal | JPEG equal |\n|---|---|---|")
    for image, steps in sorted(real["images"].items()):
        ours = harness.get(image, {})
        blur = ours.get("blur opencv-pre-4.2") == steps["blur"]
        jpeg = ours.get("jpeg opencv-pre-4.2") == steps["jpeg"]
        print(f"| {image} | {blur} | {jpeg} |")


def golden_images() -> list[np.ndarray]:
    """Small uint8 images made by integer arithmetic only (identical under any NumPy)."""
    out = []
    for height, width in ((40, 50), (97, 64), (300, 311)):
        index = np.arange(height * width * 3, dtype=np.uint64).reshape(height, width, 3)
        hashed = (index * np.uint64(2654435761)) >> np.uint64(13)
        yy = np.arange(height, dtype=np.uint64)[:, None, None]
        smooth = (yy * np.uint64(200) // np.uint64(height)).astype(np.uint64)
        out.append(((hashed % np.uint64(56)) + smooth).astype(np.uint8))
    return out


GOLDEN_SIGMAS = (0.5, 1.5, 10.0)


def golden() -> None:
    """Print ``cv2.GaussianBlur``'s digests on :func:`golden_images` for each sigma."""
    print(f"# OpenCV {cv2.__version__}")
    for image in golden_images():
        for sigma in GOLDEN_SIGMAS:
            blurred = cv2.GaussianBlur(image, (0, 0), sigma)
            print(f"{image.shape} {sigma} {array_digest(blurred)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("inputs", help="write the fundus-like input JPEGs")
    make.add_argument("folder", type=Path)
    make.add_argument("--per-size", type=int, default=2)
    run = sub.add_parser("process", help="run the steps, write their digests")
    run.add_argument("folder", type=Path)
    run.add_argument("out", type=Path)
    both = sub.add_parser("compare", help="the first differing step per image")
    both.add_argument("first", type=Path)
    both.add_argument("second", type=Path)
    sub.add_parser("golden", help="blur digests of small arithmetic images")
    args = parser.parse_args()
    if args.command == "inputs":
        make_inputs(args.folder, args.per_size)
        return 0
    if args.command == "process":
        process(args.folder, args.out)
        return 0
    if args.command == "golden":
        golden()
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    sys.exit(main())
