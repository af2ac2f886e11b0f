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
  (:mod:`.volumes`);
- ``ddti_xml``: DDTI thyroid ultrasound images with their XML reports (:mod:`.ddti`);
- ``mrnet_slices``: sagittal slices of MRNet's ``.npy`` knee volumes (:mod:`.mrnet`);
- ``pcam_png_names``: PatchCamelyon HDF5 rows under the PNG names revisiting-transfer's
  converter wrote (:mod:`.pcam_png`).
"""

from __future__ import annotations

from harness.data.readers import (
    binary_records,
    cbis_ddsm,
    csv_index,
    ddti,
    hdf5,
    image_folder,
    mrnet,
    npz_file,
    pcam_png,
    volumes,
)

__all__ = [
    "binary_records",
    "cbis_ddsm",
    "csv_index",
    "ddti",
    "hdf5",
    "image_folder",
    "mrnet",
    "npz_file",
    "pcam_png",
    "volumes",
]
