"""Views and studies read from CSV indexes, multi-view pairs on the committed cards, the
profile subset keeping them, and the ``index.parquet`` beside each decoded folder dataset.

The datasets are miniature copies of the official layouts (CheXpert-v1.0-small's CSVs and
patientN/studyM folders, EyePACS' trainLabels.csv and train/ test/ folders), written under
``tmp_path`` with the helpers of ``test_dataset_zoo.py``; each image encodes its row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_dataset_zoo import (  # noqa: F401  (home: the autouse MEDXFER_HOME fixture)
    CHEXPERT_HEADER,
    by_row,
    committed,
    home,
    image,
    write_chexpert,
    write_csv,
)

from harness.config.card_fields import CardError
from harness.config.profiles import Profile
from harness.data import DatasetError
from harness.data.npz import SplitData
from harness.data.prepare import index_file, load_splits, prepare
from harness.data.registry import READERS
from harness.protocols import multiview as mv
from harness.protocols.case import subset_splits
from harness.protocols.registry import CaseNotApplicable

VIEW = CHEXPERT_HEADER.index("Frontal/Lateral")


def image_rows(data: SplitData) -> list[int]:
    """The row value each image of a split encodes, in the split's order."""
    return list(by_row({"x": data})["x"])


def card_pairs(card: object, data: SplitData) -> set[tuple[int, int]]:
    """The multiview protocol's pairs under the card's rule, as image row values."""
    rule = mv.pairing_rule(card.pairing, card.name)  # type: ignore[attr-defined]
    try:
        pairs = mv.split_pairs(data, mv.MultiviewConfig(pairing_rule=rule, num_pairs=1000))
    except CaseNotApplicable as exc:
        assert "no image pairs can be formed" in str(exc)
        return set()
    rows = image_rows(data)
    return {(rows[a], rows[b]) for a, b in pairs.tolist()}


# --------------------------------------------------------------------------- CheXpert


def test_chexpert_multiview_keeps_laterals_with_views_studies_and_pairs(tmp_path: Path) -> None:
    made = write_chexpert(tmp_path / "chexpert")
    card = committed("chexpert_multiview", tmp_path / "chexpert")
    assert card.pairing["rule"] == "frontal_lateral"
    splits = load_splits(card)
    every = [r for rows in made.values() for r in rows]
    entry_of = {int(r[-1]): r for r in every}  # image value -> CSV row (path, ..., value)
    assert sum(len(s) for s in splits.values()) == len(every)  # laterals kept
    for name, data in splits.items():
        rows = image_rows(data)
        assert data.views.tolist() == [entry_of[r][VIEW].lower() for r in rows], name
        study = ["/".join(entry_of[r][0].split("/")[2:4]) for r in rows]  # patientN/studyM
        codes = data.studies.tolist()
        for i in range(len(rows)):
            for j in range(len(rows)):
                assert (codes[i] == codes[j]) == (study[i] == study[j])
        # each lateral (patients 3, 6, ... study 1) with the frontal of its study
        expected = set()
        for lateral in (r for r in rows if entry_of[r][VIEW] == "Lateral"):
            frontal = entry_of[lateral][0].replace("view2_lateral", "view1_frontal")
            expected.add((next(r for r in rows if entry_of[r][0] == frontal), lateral))
        assert card_pairs(card, data) == expected, name
    assert len(card_pairs(card, splits["test"])) == 2  # valid patients 64542 and 64545
    assert not splits["test"].views.flags.writeable
    assert not splits["test"].studies.flags.writeable


def test_chexpert_frontal_card_carries_no_views(tmp_path: Path) -> None:
    write_chexpert(tmp_path / "chexpert")
    splits = load_splits(committed("chexpert", tmp_path / "chexpert"))
    assert splits["train"].views is None and splits["train"].studies is None


def test_a_blank_view_is_an_error_naming_the_csv_line(tmp_path: Path) -> None:
    root = tmp_path / "chexpert"
    made = write_chexpert(root)
    rows = [r[:-1] for r in made["train"]]
    rows[4][VIEW] = ""
    write_csv(root / "CheXpert-v1.0-small/train.csv", CHEXPERT_HEADER, rows)
    with pytest.raises(DatasetError, match=r"train\.csv line 6 has a blank 'Frontal/Lateral'"):
        load_splits(committed("chexpert_multiview", root))


def test_a_path_without_a_study_is_an_error_naming_the_csv_line(tmp_path: Path) -> None:
    root = tmp_path / "chexpert"
    made = write_chexpert(root)
    rows = [r[:-1] for r in made["valid"]]
    rows[2][0] = rows[2][0].replace("/study1/", "/visit1/")
    image(root / rows[2][0], 0)
    write_csv(root / "CheXpert-v1.0-small/valid.csv", CHEXPERT_HEADER, rows)
    with pytest.raises(DatasetError, match=r"study_pattern.*does not match.*valid\.csv line 4"):
        load_splits(committed("chexpert_multiview", root))


@pytest.mark.parametrize(
    "fields, culprit",
    [
        ({"view_pattern": "_(left|right"}, "'view_pattern' is not a valid regex"),
        ({"view_column": "v", "study_pattern": "(study"}, "'study_pattern' is not a valid regex"),
        ({"study_column": "Study"}, "'study_column' / 'study_pattern' pair views"),
    ],
)
def test_view_and_study_fields_are_checked_when_the_card_loads(fields: dict, culprit: str) -> None:
    raw = {"format": "csv_images", "index": "a.csv", **fields}
    with pytest.raises(CardError, match=f"x.yaml: field 'reader': {culprit}"):
        READERS.parse(raw, "x.yaml")


# --------------------------------------------------------------------------- EyePACS

# (patient, left grade, right grade); None: that eye is missing
EYES_TRAIN = [(10, 0, 0), (13, 0, 2), (15, 1, 1), (16, 4, None), (17, 3, 3), (19, 2, 1),
              (20, 0, 0), (22, 1, 1), (23, 2, 2), (25, 4, 4), (30, 0, 1), (31, 3, 3),
              (40, 0, 0), (41, 2, 2), (44, 1, 0), (49, 0, 0)]  # fmt: skip
EYES_TEST = [(1, 0, 0), (2, 1, 3), (3, 2, 2), (5, None, 4)]


def write_eyepacs(root: Path) -> dict[str, int]:
    """trainLabels.csv, retinopathy_solution.csv, train/ and test/; image name -> value."""
    values: dict[str, int] = {}
    tables = {}
    for folder, eyes in (("train", EYES_TRAIN), ("test", EYES_TEST)):
        rows = []
        for patient, left, right in eyes:
            order = [("left", left), ("right", right)]
            if patient == 17:  # listed right eye first: pairing must not rely on row order
                order.reverse()
            for eye, level in order:
                if level is not None:
                    rows.append((f"{patient}_{eye}", level))
        for name, _ in rows:
            values[name] = len(values)
            image(root / folder / f"{name}.jpeg", values[name], rgb=True)
        tables[folder] = rows
    write_csv(root / "trainLabels.csv", ["image", "level"], tables["train"])
    write_csv(
        root / "retinopathy_solution.csv",
        ["image", "level", "Usage"],
        [(n, lv, "Public" if k % 3 else "Private") for k, (n, lv) in enumerate(tables["test"])],
    )
    return values


def test_eyepacs_views_and_left_right_equal_grade_pairs(tmp_path: Path) -> None:
    values = write_eyepacs(tmp_path / "eyepacs")
    name_of = {v: n for n, v in values.items()}
    card = committed("eyepacs", tmp_path / "eyepacs")
    assert card.pairing["rule"] == "left_right_equal_grade"
    splits = load_splits(card)
    equal = {p for p, lv, rv in EYES_TRAIN + EYES_TEST if lv is not None and lv == rv}
    found = set()
    for data in splits.values():
        rows = image_rows(data)
        assert data.views.tolist() == [name_of[r].split("_")[1] for r in rows]
        assert data.studies is None
        found |= card_pairs(card, data)
    assert found == {(values[f"{p}_left"], values[f"{p}_right"]) for p in equal}
    test_pairs = {(values[f"{p}_left"], values[f"{p}_right"]) for p in (1, 3)}
    assert card_pairs(card, splits["test"]) == test_pairs  # 2: grades differ, 5: one eye


@pytest.mark.parametrize(
    "name, field",
    [("18_left2", "view_pattern' '_(left|right)$'"), ("18_center", "group_pattern'")],
)
def test_an_image_name_without_an_eye_is_an_error_naming_the_csv_line(
    tmp_path: Path, name: str, field: str
) -> None:
    root = tmp_path / "eyepacs"
    write_eyepacs(root)
    image(root / "train" / f"{name}.jpeg", 0, rgb=True)
    lines = (root / "trainLabels.csv").read_text().splitlines()
    lines.insert(3, f"{name},0")
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        load_splits(committed("eyepacs", root))
    assert f"field 'reader.{field}" in str(caught.value)
    assert f"does not match '{name}" in str(caught.value)
    assert str(caught.value).endswith("(trainLabels.csv line 4)")


# --------------------------------------------------------------------------- subset


def test_profile_subset_keeps_views_studies_and_groups_with_their_images() -> None:
    n = 40
    data = SplitData(
        images=np.arange(n, dtype=np.uint8).reshape(n, 1, 1) * np.ones((1, 2, 2), np.uint8),
        labels=np.arange(n) % 2,
        groups=np.arange(n) // 4,
        views=np.where(np.arange(n) % 2, "lateral", "frontal"),
        studies=np.arange(n) // 2 + 100,
    )
    profile = Profile("tiny", input_size=None, max_per_split={"train": 10}, seed=3)
    out = subset_splits({"train": data, "test": data}, profile)
    assert out["test"] is data
    part = out["train"]
    assert len(part) == 10 and len(np.unique(part.images[:, 0, 0])) == 10
    kept = part.images[:, 0, 0].astype(np.int64)  # each image holds its row
    assert part.labels.tolist() == (kept % 2).tolist()
    assert part.groups.tolist() == (kept // 4).tolist()
    assert part.views.tolist() == ["lateral" if k % 2 else "frontal" for k in kept]
    assert part.studies.tolist() == (kept // 2 + 100).tolist()


# --------------------------------------------------------------------------- index.parquet


def test_index_parquet_lists_every_prepared_image(tmp_path: Path) -> None:
    made = write_chexpert(tmp_path / "chexpert")
    card = committed("chexpert_multiview", tmp_path / "chexpert")
    splits = load_splits(card)
    table = pq.read_table(index_file(card))
    assert table.column_names == ["path", "label", "patient", "split", "view", "study", "row"]
    index = table.to_pylist()
    every = {r[0]: r for rows in made.values() for r in rows}
    assert len(index) == len(every) == len({e["path"] for e in index})
    assert {e["path"] for e in index} == set(every)
    for name, data in splits.items():
        listed = [e for e in index if e["split"] == name]
        assert len(listed) == len(data)
        # the index lists a split in the archive's order, with its labels
        assert [int(every[e["path"]][-1]) for e in listed] == image_rows(data)
        assert [e["label"] for e in listed] == [",".join(map(str, v)) for v in data.labels.tolist()]
        assert [e["view"] for e in listed] == data.views.tolist()
    owner: dict[str, str] = {}
    for e in index:
        assert owner.setdefault(e["patient"], e["split"]) == e["split"], e["patient"]
        assert e["path"].split("/")[2] == f"patient{e['patient']}"
        assert e["path"].split("/")[2:4] == e["study"].split("/")
    assert {e["split"] for e in index if "/valid/" in e["path"]} == {"test"}


def test_index_parquet_is_rewritten_when_missing_or_stale(tmp_path: Path) -> None:
    values = write_eyepacs(tmp_path / "eyepacs")
    card = committed("eyepacs", tmp_path / "eyepacs")
    prepare(card)
    path = index_file(card)
    first = pq.read_table(path).to_pylist()
    assert {e["label"] for e in first} == {"0", "1", "2", "3", "4"}
    assert {e["view"] for e in first} == {"left", "right"} and {e["study"] for e in first} == {None}
    assert sorted(e["path"] for e in first) == sorted(
        f"{'test' if int(n.split('_')[0]) < 10 else 'train'}/{n}.jpeg" for n in values
    )
    path.unlink()
    prepare(card)
    assert pq.read_table(path).to_pylist() == first
    path.write_bytes(b"not parquet")
    prepare(card)
    assert pq.read_table(path).to_pylist() == first
    # a card change re-prepares the archive, and the index with it
    params = dataclasses.replace(card.split.params, val_fraction=0.25)
    smaller = dataclasses.replace(card, split=dataclasses.replace(card.split, params=params))
    splits = load_splits(smaller)
    again = pq.read_table(path).to_pylist()
    assert sum(e["split"] == "val" for e in again) == len(splits["val"])
    assert sum(e["split"] == "val" for e in again) > sum(e["split"] == "val" for e in first)
