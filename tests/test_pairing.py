"""Multi-view pairing rules on constructed splits, and views / studies carried end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from harness.config.cards import load_dataset_card_file
from harness.data.npz import SplitData, read_npz, write_npz
from harness.data.pipeline import make_splits, raw_from_splits
from harness.data.registry import SPLIT_RULES
from harness.protocols import multiview as mv
from harness.protocols.pairing import (
    PairingUnavailable,
    draw_pairs,
    frontal_lateral_pairs,
    left_right_equal_grade_pairs,
)
from harness.protocols.registry import CaseNotApplicable

DATASETS = Path(__file__).resolve().parent.parent / "datasets"


def split(
    labels: list, groups: object = None, views: object = None, studies: object = None
) -> SplitData:
    n = len(labels)
    return SplitData(
        images=np.zeros((n, 2, 2), np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        groups=None if groups is None else np.asarray(groups, dtype=np.int64),
        views=None if views is None else np.asarray(views),
        studies=None if studies is None else np.asarray(studies, dtype=np.int64),
    )


def chexpert_like() -> SplitData:
    """CheXpert rows: patient 1 study 1 (frontal, lateral), study 2 (frontal only), patient 2
    study 3 (lateral, frontal, frontal: listed out of order), study 4 (lateral only), patient 3
    study 5 (frontal, two laterals)."""
    views = ["Frontal", "Lateral", "Frontal", "Lateral", "Frontal", "Frontal", "Lateral"]
    views += ["frontal", "lateral", "lateral"]
    studies = [1, 1, 2, 3, 3, 3, 4, 5, 5, 5]
    groups = [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    return split([[0, 1]] * 10, groups, np.char.lower(views), studies)


def test_frontal_lateral_pairs_each_lateral_with_its_studys_first_frontal() -> None:
    pairs = frontal_lateral_pairs(chexpert_like())
    assert pairs.tolist() == [[0, 1], [4, 3], [7, 8], [7, 9]]


def test_frontal_lateral_needs_studies_not_patients() -> None:
    data = chexpert_like()
    by_patient = dataclasses.replace(data, studies=None)  # groups: patient-level fallback
    assert frontal_lateral_pairs(by_patient).tolist() == [[0, 1], [4, 3], [4, 6], [7, 8], [7, 9]]
    with pytest.raises(PairingUnavailable, match="needs each image's view"):
        frontal_lateral_pairs(dataclasses.replace(data, views=None))
    with pytest.raises(PairingUnavailable, match="study or group ids"):
        frontal_lateral_pairs(dataclasses.replace(data, studies=None, groups=None))


def test_left_right_equal_grade_pairs_only_patients_whose_eyes_agree() -> None:
    # trainLabels.csv: 10_left 0, 10_right 0, 13_left 0, 13_right 2, 15_left 1, 15_right 1,
    # 16_left 4 (no right eye), then 17_right 3 listed before 17_left 3.
    views = ["left", "right", "left", "right", "left", "right", "left", "right", "left"]
    groups = [10, 10, 13, 13, 15, 15, 16, 17, 17]
    labels = [0, 0, 0, 2, 1, 1, 4, 3, 3]
    pairs = left_right_equal_grade_pairs(split(labels, groups, views))
    assert pairs.tolist() == [[0, 1], [4, 5], [8, 7]]


def test_draw_pairs_keeps_all_or_draws_distinct_pairs_deterministically() -> None:
    candidates = np.stack([np.arange(0, 200, 2), np.arange(1, 200, 2)], axis=1)
    assert draw_pairs(candidates, 500, seed=0).tolist() == candidates.tolist()
    drawn = draw_pairs(candidates, 30, seed=1)
    assert len({tuple(p) for p in drawn.tolist()}) == 30
    assert {tuple(p) for p in drawn.tolist()} <= {tuple(p) for p in candidates.tolist()}
    np.testing.assert_array_equal(drawn, draw_pairs(candidates, 30, seed=1))
    assert not np.array_equal(drawn, draw_pairs(candidates, 30, seed=2))
    with pytest.raises(ValueError, match="no image pairs"):
        draw_pairs(np.zeros((0, 2)), 5, seed=0)


def test_multiview_split_pairs_follows_the_cards_rule() -> None:
    assert mv.pairing_rule({"rule": "frontal_lateral"}, "x.yaml") == "frontal_lateral"
    config = mv.MultiviewConfig(pairing_rule="frontal_lateral", num_pairs=3)
    pairs = mv.split_pairs(chexpert_like(), config)
    assert len(pairs) == 3
    assert {tuple(p) for p in pairs.tolist()} <= {(0, 1), (4, 3), (7, 8), (7, 9)}
    same = mv.split_pairs(chexpert_like(), mv.MultiviewConfig(num_pairs=100))
    assert len(same) == 3 + 6 + 3  # every same-patient pair (groups of 3, 4, 3)
    no_views = dataclasses.replace(chexpert_like(), views=None)
    with pytest.raises(CaseNotApplicable, match="view"):
        mv.split_pairs(no_views, config)
    eyes = split([0, 1], [5, 5], ["left", "right"])
    with pytest.raises(CaseNotApplicable, match=r"left_right_equal_grade.*no image pairs"):
        mv.split_pairs(eyes, mv.MultiviewConfig(pairing_rule="left_right_equal_grade"))


def test_views_and_studies_survive_take_and_the_npz_round_trip(tmp_path: Path) -> None:
    data = chexpert_like()
    part = data.take(np.array([3, 4, 6]))
    assert part.views.tolist() == ["lateral", "frontal", "lateral"]
    assert part.studies.tolist() == [3, 3, 4] and part.groups.tolist() == [2, 2, 2]
    path = tmp_path / "x.npz"
    write_npz(path, {"train": data, "val": part, "test": part})
    back = read_npz(path, "multilabel", 2)
    assert back["train"].views.tolist() == data.views.tolist()
    assert back["val"].studies.tolist() == [3, 3, 4]
    assert frontal_lateral_pairs(back["train"]).tolist() == [[0, 1], [4, 3], [7, 8], [7, 9]]


def test_make_splits_carries_lowercased_views_and_study_codes() -> None:
    card = load_dataset_card_file(DATASETS / "demo_modality.yaml")
    card = dataclasses.replace(
        card, split=SPLIT_RULES.parse({"rule": "predefined"}, "x.yaml"), label_policy=None
    )
    parts = {}
    for k, name in enumerate(("train", "val", "test")):
        images = np.arange(4 * k, 4 * k + 4, dtype=np.uint8).reshape(4, 1, 1) * np.ones(
            (1, 2, 2), np.uint8
        )
        parts[name] = SplitData(
            images,
            np.zeros(4, np.int64),
            groups=np.array([k, k, k + 10, k + 10]),
            views=np.array([" Frontal", "LATERAL", "Frontal", "Lateral"]),
            studies=np.array([100 + k, 100 + k, 200 + k, 300 + k]),
        )
    out = make_splits(card, raw_from_splits(parts))
    assert out["val"].views.tolist() == ["frontal", "lateral", "frontal", "lateral"]
    studies = out["test"].studies.tolist()
    assert studies[0] == studies[1] != studies[2] != studies[3]
    assert frontal_lateral_pairs(out["train"]).tolist() == [[0, 1]]
