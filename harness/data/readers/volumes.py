"""The ``volume_slices`` reader: one axial slice of each CT volume listed by a CSV index.

STOIC 2021's layout (Revel et al., 2021), as ``aws s3 sync s3://stoic2021-training/``
writes it::

    stoic2021-training/data/mha/<PatientID>.mha       MetaImage CT volumes, in HU
    stoic2021-training/metadata/reference.csv         PatientID, probCOVID, probSevere

The index parameters are ``csv_images``' (``index``, ``path_column``, ``image_root``,
``path_suffix``, ``group_column``, ...): here ``path_column: PatientID``,
``image_root: stoic2021-training/data/mha`` and ``path_suffix: .mha``. Every CSV column
is kept as a raw string column for the label policy.

Each volume is read with SimpleITK (``.mha``, ``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``:
any format ITK reads). SimpleITK's image axes are (i, j, k) = (x, y, z) and
``GetArrayFromImage`` returns arrays indexed ``[z, y, x]``; a CT series is acquired as
axial slices, so the axial slice is a fixed k, i.e. array axis 0. The reader takes slice
``k = floor(position * n_slices)`` (the middle one, ``n_slices // 2``, by default) and
reads only that slice where the file format allows. Its values (HU, after the file's own
rescale) are clipped to ``window`` (default [-1000, 250], lung to soft tissue, as
SSL_medicalimaging's STOIC loader) and mapped linearly to 0..255, then cropped / resized
like every other reader. Needs SimpleITK (``pip install "medxfer[volumes]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import DatasetError
from harness.data.dicom import to_uint8
from harness.data.readers.csv_index import IndexParams, _read_index
from harness.data.readers.decode import GeometryParams, dicom_to_pil, fit_image
from harness.data.registry import register_reader
from harness.data.table import DatasetContext, RawDataset


@dataclass(frozen=True, kw_only=True)
class VolumeSliceParams(IndexParams, GeometryParams):
    """A CSV index of 3-D volumes; one axial slice of each, windowed to uint8 grayscale.

    Attributes:
        window: ``[low, high]`` values (HU for CT) mapped to 0 and 255; values outside
            are clipped.
        position: which axial slice, as a fraction of the slices: 0.5 is the middle one
            (``n // 2``), 0 the first (array index 0 of ``GetArrayFromImage``).
    """

    window: tuple[float, float] = (-1000.0, 250.0)
    position: float = 0.5

    def validate(self) -> None:
        """Check the index, the geometry, the window and the position."""
        IndexParams.validate(self)
        GeometryParams.validate(self)
        if not self.window[1] > self.window[0]:
            raise ValueError(f"'window' must be [low, high] with high > low, got {self.window}")
        if not 0.0 <= self.position <= 1.0:
            raise ValueError(f"'position' must be in [0, 1], got {self.position}")


def _sitk() -> Any:
    try:
        import SimpleITK
    except ImportError as exc:  # an optional dependency
        raise DatasetError(
            "the volume_slices reader needs SimpleITK, which is not installed: "
            'pip install "medxfer[volumes]" (or pip install SimpleITK)'
        ) from exc
    return SimpleITK


def axial_slice(path: Path, position: float = 0.5) -> np.ndarray:
    """Read one axial slice of a 3-D volume.

    Args:
        path: a volume file SimpleITK reads (``.mha``, ``.nii.gz`` ...).
        position: the slice as a fraction of the slices (0.5: ``n // 2``).

    Returns:
        float32 ``(y, x)``: ``GetArrayFromImage(volume)[k]`` with ``k = floor(position * n)``
        (clamped to the last slice), in the file's rescaled units (HU for CT).

    Raises:
        FileNotFoundError: when the file is missing.
        DatasetError: when SimpleITK is not installed.
        ValueError / RuntimeError: when the file is not a single-channel 3-D volume or
            cannot be decoded (the caller names the file).
    """
    sitk = _sitk()
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) != 3:
        raise ValueError(f"is a {len(size)}-D image, not a 3-D volume")
    if reader.GetNumberOfComponents() != 1:
        raise ValueError(f"has {reader.GetNumberOfComponents()} components per voxel, not 1")
    k = min(int(position * size[2]), size[2] - 1)
    reader.SetExtractIndex((0, 0, k))
    reader.SetExtractSize((size[0], size[1], 0))  # a 0 size drops the axis: a 2-D image
    return np.asarray(sitk.GetArrayFromImage(reader.Execute()), dtype=np.float32)


@register_reader("volume_slices", version=1, params=VolumeSliceParams)
def read_volume_slices(params: VolumeSliceParams, ctx: DatasetContext) -> RawDataset:
    """CT / MR volumes listed in a CSV: one axial slice of each, HU-windowed to uint8."""
    _sitk()  # fail at once, naming the extra, rather than on the first image

    def decode(path: Path) -> np.ndarray:
        values = axial_slice(path, params.position)
        return fit_image(dicom_to_pil(to_uint8(values, params.window)), params)

    return _read_index(params, ctx, decode)
