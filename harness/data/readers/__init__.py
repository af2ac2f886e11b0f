"""The built-in dataset readers; importing this package registers them.

- ``npz``: a MedMNIST-layout archive (:mod:`.npz_file`);
- ``csv_images``: image files listed by a CSV index (:mod:`.csv_index`);
- ``dicom``: DICOM files listed by a CSV index (:mod:`.csv_index`);
- ``image_folder``: one sub-folder per class, optionally per split (:mod:`.image_folder`);
- ``hdf5``: images and labels as HDF5 datasets per split, PatchCamelyon (:mod:`.hdf5`).
"""

from __future__ import annotations

from harness.data.readers import csv_index, hdf5, image_folder, npz_file

__all__ = ["csv_index", "hdf5", "image_folder", "npz_file"]
