"""Multi-view pairing rules: which images of a split are two views of one thing.

- ``same_group``: any two images sharing a group id (patient, source image);
- ``frontal_lateral``: CheXpert's lateral view paired with the frontal view of the same
  study, as SSL_medicalimaging pairs them;
- ``left_right_equal_grade``: EyePACS' left and right eye of one patient, when both eyes
  have the same grade, as SSL_medicalimaging pairs them.

The view rules read the split's ``views`` (lowercase ``frontal`` / ``lateral`` /
``left`` / ``right``, carried from the reader) and ``studies`` (the study of each image;
without them, views pair within a group).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from harness.data.npz import SplitData

PairFinder = Callable[[SplitData], np.ndarray]


class PairingUnavailable(ValueError):
    """The split lacks what a pairing rule needs (groups, views); the case does not apply."""


def frontal_lateral_pairs(split: SplitData) -> np.ndarray:
    """Every lateral image with the first frontal image of its study.

    jonahanton/SSL_medicalimaging@77fceef:datasets/custom_chexpert_dataset.py keeps the
    ``Frontal/Lateral == "Lateral"`` rows (``find_only_laterals``) and loads, for each, the
    ``view1_frontal.jpg`` of the same ``patientN/studyM`` folder
    (``group_additional_images``). Here the study's frontal image listed first stands in for
    ``view1_frontal.jpg``; a study without a frontal image gives no pair.

    Returns:
        int64 ``(P, 2)``: ``(frontal, lateral)`` rows, ordered by lateral row.

    Raises:
        PairingUnavailable: when the split has no views, or no study (nor group) ids.
    """
    views, units = _views_and_units(split, "frontal_lateral")
    frontal = views == "frontal"
    first_frontal: dict[object, int] = {}
    for row in np.flatnonzero(frontal).tolist():
        first_frontal.setdefault(units[row].item(), row)
    pairs = [
        (first_frontal[units[row].item()], row)
        for row in np.flatnonzero(views == "lateral").tolist()
        if units[row].item() in first_frontal
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def left_right_equal_grade_pairs(split: SplitData) -> np.ndarray:
    """A patient's left and right eye when both have the same label.

    jonahanton/SSL_medicalimaging@77fceef:datasets/custom_diabetic_retinopathy_dataset.py
    (``return_only_right_views``) takes alternate rows of ``trainLabels.csv`` (``10_left``,
    ``10_right``, ...), keeps a patient when ``level`` matches on both eyes and pairs
    ``<id>_left.jpeg`` with ``<id>_right.jpeg``. Here eyes pair by group (patient) and view
    name, so the CSV's row order does not matter; each patient's first left and first right
    image pair.

    Returns:
        int64 ``(P, 2)``: ``(left, right)`` rows, ordered by left row.

    Raises:
        PairingUnavailable: when the split has no views, or no group ids.
    """
    views, units = _views_and_units(split, "left_right_equal_grade")
    labels = np.asarray(split.labels).reshape(len(split), -1)
    right: dict[object, int] = {}
    for row in np.flatnonzero(views == "right").tolist():
        right.setdefault(units[row].item(), row)
    pairs = []
    seen: set[object] = set()
    for row in np.flatnonzero(views == "left").tolist():
        unit = units[row].item()
        if unit in seen or unit not in right:
            continue
        seen.add(unit)
        if np.array_equal(labels[row], labels[right[unit]]):
            pairs.append((row, right[unit]))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


VIEW_RULES: dict[str, PairFinder] = {
    "frontal_lateral": frontal_lateral_pairs,
    "left_right_equal_grade": left_right_equal_grade_pairs,
}
PAIRING_RULES = ("same_group", *VIEW_RULES)


def draw_pairs(candidates: np.ndarray, max_pairs: int, seed: int) -> np.ndarray:
    """All candidate pairs, or ``max_pairs`` of them drawn without replacement (seeded).

    Returns:
        int64 ``(P, 2)``, in the candidates' order.

    Raises:
        ValueError: when there are no candidates.
    """
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1, 2)
    if not len(candidates):
        raise ValueError("no image pairs can be formed")
    if len(candidates) <= max_pairs:
        return candidates
    rng = np.random.default_rng(seed)
    return candidates[np.sort(rng.choice(len(candidates), size=max_pairs, replace=False))]


def _views_and_units(split: SplitData, rule: str) -> tuple[np.ndarray, np.ndarray]:
    if split.views is None:
        raise PairingUnavailable(
            f"pairing rule {rule!r} needs each image's view, which the dataset does not carry "
            "(the reader must give views)"
        )
    units = split.studies if split.studies is not None else split.groups
    if units is None:
        raise PairingUnavailable(f"pairing rule {rule!r} needs study or group ids")
    return np.char.lower(np.asarray(split.views).astype(str)), np.asarray(units)
