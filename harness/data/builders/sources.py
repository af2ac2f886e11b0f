"""Source images of the demo builders, all shipped in pip packages (nothing downloads).

DICOM files come from ``pydicom`` (its ``test_files``) and ``pydicom-data``; the fundus
photograph is scikit-image's ``data.retina()``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from harness.data import DatasetError
from harness.data.dicom import read_dicom_frames, to_uint8

DEFAULT_COUNTS = {"train": 600, "val": 200, "test": 300}
MODALITY_CLASSES = ("CR", "CT", "MR", "NM", "US")
MODALITY_FILES = (
    "RG1_UNCI.dcm",
    "RG3_UNCI.dcm",
    "693_UNCI.dcm",
    "eCT_Supplemental.dcm",
    "MR2_UNCI.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "JPEG2000_UNC.dcm",
    "US1_UNCI.dcm",
    "gdcm-US-ALOKA-16.dcm",
)
LESION_CLASSES = ("normal", "lesion")
# The pip-shipped CR files look conventional (bone bright, lung dark) as stored; the
# MONOCHROME1 inversion would turn them into film negatives, so the demos keep them as-is.
INVERT_MONOCHROME1 = False


def pip_dicom_dirs() -> list[Path]:
    """Return the folders holding the DICOM files shipped by ``pydicom`` and ``pydicom-data``."""
    import pydicom.data

    dirs = [Path(os.path.dirname(pydicom.data.__file__)) / "test_files"]
    try:
        import data_store

        dirs.append(Path(os.path.dirname(data_store.__file__)) / "data")
    except ImportError:
        pass
    return dirs


def pip_dicom_path(name: str) -> Path:
    """Return the path of a DICOM file shipped in ``pydicom`` or ``pydicom-data``.

    Args:
        name: a bare file name such as ``RG1_UNCI.dcm``.

    Raises:
        DatasetError: when no installed package ships that file.
    """
    if not name or Path(name).name != name:
        raise DatasetError(f"{name!r}: expected a bare DICOM file name")
    dirs = pip_dicom_dirs()
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(
        f"{name}: no such DICOM file in {', '.join(map(str, dirs))} "
        "(is the 'pydicom-data' package installed?)"
    )


def modality_tag(path: Path) -> str:
    """Return the Modality tag (0008,0060) of a DICOM file.

    Raises:
        DatasetError: when the file is unreadable or has no Modality.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable DICOM file: {exc}") from exc
    modality = str(ds.get("Modality", "")).strip()
    if not modality:
        raise DatasetError(f"{path}: DICOM file has no Modality tag")
    return modality


@functools.lru_cache(maxsize=16)
def dicom_unit_frames(path: str) -> np.ndarray:
    """Frames of a DICOM file windowed per frame to [0, 1] (read-only, cached)."""
    frames = read_dicom_frames(Path(path), invert_monochrome1=INVERT_MONOCHROME1)
    unit = np.stack([to_uint8(frame) for frame in frames]).astype(np.float32) / 255.0
    unit.setflags(write=False)
    return unit


@functools.lru_cache(maxsize=1)
def retina() -> np.ndarray:
    """scikit-image's fundus photograph as float32 RGB in [0, 1] (read-only, cached)."""
    from skimage import data

    image = data.retina().astype(np.float32) / 255.0
    image.setflags(write=False)
    return image
