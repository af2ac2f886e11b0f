"""Dataset readers, demo builders and preparation.

Modules:
    npz: the MedMNIST ``.npz`` layout (reader + atomic writer), :class:`SplitData`.
    dicom: reading DICOM frames as float32 and windowing them to uint8.
    demo: deterministic builders of the embedded demo datasets (pip-shipped images).
    prepare: where a dataset card's file lives, building / locating it, loading splits.

Every problem with a dataset raises :class:`DatasetError` (a ``ValueError``) naming the
file and the key at fault; a dataset that must be fetched by the user raises
:class:`DatasetNotPrepared`.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, malformed, or cannot be built."""


class DatasetNotPrepared(DatasetError):
    """A dataset card's file is not on disk and cannot be built locally."""


__all__ = ["DatasetError", "DatasetNotPrepared"]
