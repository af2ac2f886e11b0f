"""Datasets: readers, label policies, split rules and builders as registered entries; preparation.

Modules:
    registry: the registries (readers, label policies, split rules, builders) and the
        specs a dataset card holds.
    table: what the entries pass to each other (raw dataset, labels, split input).
    readers: ``npz``, ``csv_images``, ``dicom``, ``image_folder``.
    label_policies: ``identity``, ``class_map``, ``uncertain``, ``onehot_to_index``, ``multi_hot``.
    split_rules: ``predefined``, ``seeded_fractions``, ``disjoint_regions``.
    builders: deterministic builders of the embedded demo datasets (pip-shipped images).
    pipeline: running a card's reader, label policy and split rule.
    prepare: where a card's data lives, building / decoding it, loading splits.
    npz: the MedMNIST ``.npz`` layout (reader + atomic writer), :class:`SplitData`.
    dicom: reading DICOM frames as float32 and windowing them to uint8.

Every problem with a dataset raises :class:`DatasetError` (a ``ValueError``) naming the
card, file and key or field at fault; a dataset that must be fetched by the user raises
:class:`DatasetNotPrepared`.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, malformed, or cannot be built."""


class DatasetNotPrepared(DatasetError):
    """A dataset card's source is not on disk and cannot be built locally."""


__all__ = ["DatasetError", "DatasetNotPrepared"]
