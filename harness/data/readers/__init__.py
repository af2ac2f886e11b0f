"""The built-in dataset readers; importing this package registers them.

- ``npz``: a MedMNIST-layout archive (:mod:`.npz_file`);
- ``csv_images``: image files listed by a CSV index (:mod:`.csv_index`);
- ``dicom``: DICOM files listed by a CSV index (:mod:`.csv_index`);
- ``cbis_ddsm``: CBIS-DDSM full mammograms found by their TCIA subject folder
  (:mod:`.cbis_ddsm`);
- ``image_folder``: one sub-folder per class, optionally per split (:mod:`.image_folder`);
- ``hdf5``: images and labels as HDF5 datasets per split, PatchCamelyon (:mod:`.hdf5`);
- ``cifar_binary``, ``stl10_binary``: raw binary image records, CIFAR and STL-10
  (:mod:`.binary_records`);
- ``volume_slices``: one axial slice of each CT volume listed by a CSV, STOIC
  (:mod:`.volumes`).
"""

from __future__ import annotations

from harness.data.readers import (
    binary_records,
    cbis_ddsm,
    csv_index,
    hdf5,
    image_folder,
    npz_file,
    volumes,
)

__all__ = [
    "binary_records",
    "cbis_ddsm",
    "csv_index",
    "hdf5",
    "image_folder",
    "npz_file",
    "volumes",
]
