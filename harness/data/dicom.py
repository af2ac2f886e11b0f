"""Reading DICOM pixel data as float32 frames, and windowing frames to uint8.

Only uncompressed transfer syntaxes are expected to decode: no JPEG / JPEG 2000 /
RLE plugins are installed by default. A file that is not DICOM, has no pixel data
or cannot be decoded raises :class:`~harness.data.DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data import DatasetError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom_frames(path: Path, *, invert_monochrome1: bool = True) -> np.ndarray:
    """Read every frame of a DICOM file as float32 grayscale.

    The modality LUT / rescale slope and intercept are applied (also when they sit in
    the functional groups of an enhanced multi-frame file); palette and YBR colour are
    converted to RGB and RGB to luminance (ITU-R 601 weights).

    Args:
        path: a DICOM file.
        invert_monochrome1: flip MONOCHROME1 data so that larger means brighter (the
            DICOM display convention).

    Returns:
        float32 array ``(F, H, W)`` (``F = 1`` for a single-frame file).

    Raises:
        DatasetError: naming the file when it is missing, not DICOM, has no pixel data,
            or its pixel data cannot be decoded.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: DICOM file not found")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable DICOM file: {exc}") from exc
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise DatasetError(f"{path}: DICOM file has no pixel data")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable data
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise DatasetError(
            f"{path}: cannot decode pixel data ({name}): {exc}. Only uncompressed DICOM is "
            "supported without extra pydicom decoding plugins."
        ) from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        frames = _to_frames(pixels, ds, n_frames, samples, photometric)
    except (ValueError, KeyError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{path}: cannot interpret pixel data: {exc}") from exc
    if invert_monochrome1 and photometric == "MONOCHROME1":
        frames = frames.max() + frames.min() - frames
    return np.ascontiguousarray(frames, dtype=np.float32)


def to_uint8(
    frame: np.ndarray,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Window an image to uint8.

    Args:
        frame: any real-valued array (e.g. one frame from :func:`read_dicom_frames`).
        window: ``(low, high)`` values mapped to 0 and 255; by default the robust
            ``percentiles`` of the frame.
        percentiles: lower and upper percentiles used when ``window`` is None.

    Returns:
        uint8 array of the same shape; a constant frame maps to zeros.
    """
    values = np.asarray(frame, dtype=np.float32)
    if window is None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return np.zeros(values.shape, dtype=np.uint8)
        low, high = (float(v) for v in np.percentile(finite, percentiles))
    else:
        low, high = float(window[0]), float(window[1])
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- helpers


def _to_frames(pixels: np.ndarray, ds, n_frames: int, samples: int, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    arr = np.asarray(pixels)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 3:
        if arr.ndim == 3:
            arr = arr[None]
        return arr.astype(np.float32) @ LUMA
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or len(arr) != n_frames:
        raise ValueError(f"unexpected pixel array shape {arr.shape} for {n_frames} frame(s)")
    return _rescale(arr, ds)


def _rescale(arr: np.ndarray, ds) -> np.ndarray:
    """Apply the modality LUT / rescale, from the top level or the functional groups."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    out = arr.astype(np.float32)
    for index in range(len(out)):
        item = per_frame[index] if index < len(per_frame) else None
        slope, intercept = _frame_rescale(item)
        if slope is None:
            slope, intercept = _frame_rescale(shared)
        if slope is not None:
            out[index] = out[index] * slope + intercept
    return out


def _frame_rescale(group) -> tuple[float | None, float]:
    transform = _first_item(group, "PixelValueTransformationSequence")
    if transform is None or "RescaleSlope" not in transform:
        return None, 0.0
    return float(transform.RescaleSlope), float(transform.get("RescaleIntercept", 0.0))


def _first_item(ds, keyword: str):
    if ds is None:
        return None
    sequence = ds.get(keyword)
    return sequence[0] if sequence else None
