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

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, SubsetRandomSampler

from harness.data.npz import SplitData
from harness.protocols.invariance_sampling import legacy_cov_indices

PairFinder = Callable[[SplitData], np.ndarray]


class PairingUnavailable(ValueError):
    """The split lacks what a pairing rule needs (groups, views); the case does not apply."""


#: The peers' ``--batch-size`` default, the covariance loader's batch.
COV_BATCH_SIZE = 256


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


def pairs_from_groups(groups: np.ndarray, max_pairs: int, seed: int) -> np.ndarray:
    """Pairs of different images that share a group id, seeded.

    Every unordered pair ``(i, j)``, ``i < j``, with ``groups[i] == groups[j]`` is a
    candidate. All candidates are returned when there are at most ``max_pairs`` of them,
    otherwise ``max_pairs`` distinct ones drawn uniformly without replacement (without
    listing all candidates, so large groups stay cheap).

    Args:
        groups: (N,) group ids (any sortable dtype).
        max_pairs: Most pairs returned, >= 1.
        seed: Seed of the draw.

    Returns:
        int64 array (P, 2) of image indices, ``pairs[:, 0] < pairs[:, 1]``, ordered by
        group then position.

    Raises:
        ValueError: When no two images share a group, or on malformed input.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D (N,), got shape {groups.shape}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if len(groups) == 0:
        raise ValueError("groups is empty: no image pairs can be formed")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    per_group = (counts.astype(np.int64) * (counts - 1)) // 2
    total = int(per_group.sum())
    if total == 0:
        raise ValueError(
            f"no two of the {len(groups)} images share a group id ({len(counts)} groups): "
            "multi-view pairs need groups with at least 2 images"
        )
    if total <= max_pairs:
        flat = np.arange(total, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(total, size=max_pairs, replace=False)).astype(np.int64)
    ends = np.cumsum(per_group)
    group = np.searchsorted(ends, flat, side="right")
    local = flat - (ends[group] - per_group[group])
    # Pair number k within a group -> (a, b), a < b, numbered by b: k = b(b-1)/2 + a.
    b = np.floor((1 + np.sqrt(1 + 8 * local.astype(np.float64))) / 2).astype(np.int64)
    b -= (b * (b - 1)) // 2 > local
    b += ((b + 1) * b) // 2 <= local
    a = local - (b * (b - 1)) // 2
    first = order[starts[group] + a]
    second = order[starts[group] + b]
    # The stable sort keeps positions ascending within a group, so first < second.
    return np.stack([first, second], axis=1).astype(np.int64)


def pairs_across_groups(groups: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """Random pairs of images from different groups (the chance baseline), seeded.

    Each ordered pair of images with different group ids is equally likely; pairs are
    drawn with replacement.

    Args:
        groups: (N,) group ids.
        n_pairs: Number of pairs.
        seed: Seed of the draw.

    Returns:
        int64 array (n_pairs, 2); empty (0, 2) when all images share one group.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D (N,), got shape {groups.shape}")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    n = len(groups)
    if len(counts) < 2 or n_pairs < 1:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    others = n - counts[inverse]  # images outside each image's group
    rng = np.random.default_rng([seed, 1])
    # First image weighted by how many partners it has, second uniform among them.
    first = rng.choice(n, size=n_pairs, p=others / others.sum())
    g = inverse[first]
    r = (rng.random(n_pairs) * others[first]).astype(np.int64)
    # Position r in the group-sorted list with the first image's group cut out.
    position = np.where(r < starts[g], r, r + counts[g])
    second = order[position]
    return np.stack([first, second], axis=1).astype(np.int64)


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


def pooled_split(splits: Mapping[str, SplitData], names: Sequence[str]) -> SplitData:
    """The per-image ids of several splits concatenated in ``names`` order (the peers'
    ``ConcatDataset([train, test])``).

    Pairing reads only labels, groups, views and studies, so the images are left out: the
    pooled split's ``images`` is a zero-width ``(N, 0)`` placeholder.

    Args:
        splits: The dataset's splits by name.
        names: The splits to pool, in order.

    Returns:
        One split of all their rows.

    Raises:
        PairingUnavailable: When some but not all of the splits carry an id kind.
    """
    parts = [splits[name] for name in names]
    ids: dict[str, np.ndarray | None] = {}
    for kind in ("groups", "views", "studies"):
        values = [getattr(part, kind) for part in parts]
        if all(value is None for value in values):
            ids[kind] = None
        elif any(value is None for value in values):
            raise PairingUnavailable(f"only some of the pooled splits {list(names)} carry {kind}")
        else:
            ids[kind] = np.concatenate([np.asarray(value) for value in values])
    labels = np.concatenate([np.asarray(part.labels) for part in parts])
    return SplitData(images=np.zeros((len(labels), 0), np.uint8), labels=labels, **ids)


def legacy_draws(
    n_pool: int,
    n_candidates: int,
    num_pairs: int,
    cov_images: int | None,
    cov_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The covariance rows and pair draws of SSL_medicalimaging's multi-view run.

    jonahanton/SSL_medicalimaging@77fceef:invariances/invariances_multiview.py seeds
    ``np.random.seed(0)`` and ``torch.manual_seed(0)``; the covariance uses every pooled
    image when there are fewer than 1000, else ``np.random.choice(N, max(1000, int(0.1 N)))``
    rows (with replacement) read through a ``SubsetRandomSampler`` loader; then each of the
    ``--num-images`` pairs is ``next(iter(DataLoader(pairs, batch_size=1, shuffle=True)))``:
    a fresh shuffle per pair, so pairs are drawn uniformly **with** replacement from torch's
    global generator. Here the same loaders run over index ranges (torch's generator is
    restored afterwards), so the draws are the peer's for the installed torch's sampler.

    Args:
        n_pool: Images the covariance draw picks from.
        n_candidates: Candidate pairs the pair draws pick from (>= 1).
        num_pairs: Pair draws.
        cov_images: Below this many pooled images all are used; None: always all.
        cov_fraction: A larger pool draws ``max(cov_images, int(cov_fraction * n_pool))``.
        seed: Seed of NumPy's legacy generator and of torch's.

    Returns:
        ``(cov_rows, picks)``: int64 covariance rows (repeats kept) and int64 indices into
        the candidates, in draw order.
    """
    if n_candidates < 1:
        raise ValueError("no image pairs can be formed")
    cov_rows = legacy_cov_indices(n_pool, cov_images, cov_fraction, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _replay_cov_loader(n_pool, cov_rows, cov_images)  # consumes torch's generator
        loader = DataLoader(range(n_candidates), batch_size=1, shuffle=True)
        picks = [int(next(iter(loader))[0]) for _ in range(num_pairs)]
    return cov_rows, np.asarray(picks, dtype=np.int64)


def legacy_cov_batches(
    n_pool: int, cov_images: int | None, cov_fraction: float, seed: int
) -> list[np.ndarray]:
    """The batches of the peer's covariance loader: which pooled rows shared a forward pass.

    The pool in order, 256 at a time, below ``cov_images``; else the rows of
    :func:`~harness.protocols.invariance_sampling.legacy_cov_indices` in the order the
    ``SubsetRandomSampler`` gives them after ``torch.manual_seed(seed)`` (see
    :func:`legacy_draws`; torch's generator is restored afterwards).

    Returns:
        int64 pooled row indices of each batch, in loader order.
    """
    cov_rows = legacy_cov_indices(n_pool, cov_images, cov_fraction, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _replay_cov_loader(n_pool, cov_rows, cov_images)


def _replay_cov_loader(
    n_pool: int, cov_rows: np.ndarray, cov_images: int | None
) -> list[np.ndarray]:
    """Run the peer's covariance ``DataLoader`` over row indices; its batches, in order."""
    subsampled = cov_images is not None and n_pool >= cov_images
    sampler = SubsetRandomSampler(cov_rows.tolist()) if subsampled else None
    loader = DataLoader(range(n_pool), batch_size=COV_BATCH_SIZE, sampler=sampler)
    return [batch.numpy().astype(np.int64) for batch in loader]


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
