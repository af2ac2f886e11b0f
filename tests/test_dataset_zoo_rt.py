"""revisiting-transfer's targets on miniature copies of their downloads, in the study's folds.

Each test writes the official download's layout (BUSI's class folders with their masks,
DDTI's ``<case>_<k>.jpg`` + ``<case>.xml``) and revisiting-transfer's fold CSVs as the
study committed them (``,path,class`` rows naming ``../../../data/<target>/<file>``) under
``tmp_path``, and reads the committed card through its reader, label policy and the
``fold_files`` split rule. The rule needs each image's path (``SplitInput.paths``); until
the pipeline passes it, :func:`rt_splits` passes it exactly as the pipeline will: the
reader's file paths relative to the dataset folder, for the rows the label policy kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_dataset_zoo import (  # noqa: F401  (home: the autouse MEDXFER_HOME fixture)
    ISIC2018,
    by_row,
    committed,
    home,
    image,
    write_csv,
    write_isic,
)

import harness.data.readers.ddti  # (registers ddti_xml until readers/__init__ does)
import harness.data.readers.mrnet  # (registers mrnet_slices until readers/__init__ does)
import harness.data.readers.pcam_png  # (registers pcam_png_names until readers/__init__ does)
import harness.data.split_folds  # noqa: F401  (registers fold_files until BUILTIN_MODULES does)
from harness.config.cards import DatasetCard
from harness.data import DatasetError
from harness.data.npz import SplitData
from harness.data.pipeline import context
from harness.data.registry import LABEL_POLICIES, READERS, SPLIT_RULES
from harness.data.table import SplitInput


@dataclasses.dataclass(frozen=True, eq=False)
class _SplitInputWithPaths(SplitInput):
    """SplitInput plus the image paths the ``fold_files`` rule reads."""

    paths: np.ndarray | None = None


def rt_splits(card: DatasetCard) -> tuple[dict[str, SplitData], dict[str, list[str]]]:
    """The card's splits (images, labels, groups) and each split's image paths."""
    ctx = context(card)
    raw = READERS.run(card.reader, ctx)
    policy = card.label_policy or LABEL_POLICIES.parse({"name": "identity"}, ctx.card)
    labels = LABEL_POLICIES.run(policy, raw, ctx)
    rows = np.arange(len(raw)) if labels.keep is None else np.flatnonzero(labels.keep)
    values = np.asarray(labels.values)[rows]
    groups = None if raw.groups is None else np.asarray(raw.groups)[rows]
    paths = np.asarray([p.relative_to(ctx.root).as_posix() for p in raw.images.paths])[rows]
    data = _SplitInputWithPaths(
        values,
        groups,
        None,
        lambda index: raw.images.take(rows[index]),
        source_rows=rows,
        n_source=len(raw),
        paths=paths,
    )
    assignment = SPLIT_RULES.run(card.split, data, ctx)
    splits, names = {}, {}
    for split, index in assignment.items():
        index = np.asarray(index, dtype=np.int64)
        splits[split] = SplitData(
            images=raw.images.take(rows[index]),
            labels=values[index],
            groups=None if groups is None else groups[index],
        )
        names[split] = [Path(p).name for p in paths[index]]
    return splits, names


def write_folds(folder: Path, target: str, folds: dict[str, list[tuple[str, ...]]], pid: bool):
    """revisiting-transfer's fold CSVs of fold 1: pandas' index column, [pid,] path, class."""
    for split, rows in folds.items():
        header = ["", "pid", "path", "class"] if pid else ["", "path", "class"]
        body = []
        for number, row in enumerate(rows):
            *ids, name, label = row
            body.append([number, *ids, f"../../../data/{target}/{name}", label])
        write_csv(folder / f"{split}_fold1.csv", header, body)


# --------------------------------------------------------------------------- BUSI


BUSI = {  # file -> row encoded in the image
    "benign/benign (1).png": 1,
    "benign/benign (2).png": 2,
    "benign/benign (3).png": 3,
    "benign/benign (4).png": 4,
    "normal/normal (1).png": 5,
    "normal/normal (2).png": 6,
    "malignant/malignant (1).png": 7,
    "malignant/malignant (2).png": 8,
    "malignant/malignant (3).png": 9,
    "malignant/malignant (4).png": 10,
}
BUSI_FOLD1 = {
    "train": [
        ("benign (1).png", "benign"),
        ("normal (1).png", "benign"),
        ("malignant (1).png", "malignant"),
        ("malignant (2).png", "malignant"),
        ("benign (2).png", "benign"),
    ],
    "val": [("benign (3).png", "benign"), ("malignant (3).png", "malignant")],
    "test": [("normal (2).png", "benign"), ("malignant (4).png", "malignant")],
}  # fmt: skip  ("benign (4).png" is in no fold: the rule leaves it out)


def write_busi(root: Path) -> None:
    """Dataset_BUSI_with_GT/<class>/<class> (n).png with masks, and the study's fold CSVs."""
    for name, row in BUSI.items():
        path = root / "Dataset_BUSI_with_GT" / name
        image(path, row, rgb=True)
        image(path.with_name(path.stem + "_mask.png"), 60, rgb=True)  # masks: not images
    image(root / "Dataset_BUSI_with_GT/benign/benign (1)_mask_1.png", 61, rgb=True)
    write_folds(root / "revisiting-transfer/breast", "breast", BUSI_FOLD1, pid=False)


def test_breast_ultrasound_rt_gives_the_study_fold_with_normal_merged(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    write_busi(root)
    card = committed("breast_ultrasound_rt", root)
    assert card.classes == ("benign", "malignant") and card.split.params.fold == 1
    splits, names = rt_splits(card)
    benign, malignant = card.classes.index("benign"), card.classes.index("malignant")
    code = {"benign": benign, "malignant": malignant}
    for split, rows in BUSI_FOLD1.items():
        assert sorted(names[split]) == sorted(name for name, _ in rows), split
        expected = {BUSI[f"{n.split()[0]}/{n}"]: code[label] for n, label in rows}
        assert by_row({split: splits[split]})[split] == expected
    assert sum(len(s) for s in splits.values()) == 9  # the unlisted image and all masks left out


def test_fold_files_rejects_a_listed_image_the_dataset_lacks(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    write_busi(root)
    (root / "Dataset_BUSI_with_GT/malignant/malignant (4).png").unlink()
    card = committed("breast_ultrasound_rt", root)
    with pytest.raises(DatasetError, match=r"test_fold1.csv line 3 lists 'malignant \(4\).png'"):
        rt_splits(card)
    params = dataclasses.replace(card.split.params, missing="drop")
    card = dataclasses.replace(card, split=dataclasses.replace(card.split, params=params))
    assert rt_splits(card)[1]["test"] == ["normal (2).png"]


def test_fold_files_matches_relative_paths_and_refuses_a_path_in_two_splits(
    tmp_path: Path,
) -> None:
    root = tmp_path / "busi"
    write_busi(root)
    card = committed("breast_ultrasound_rt", root)
    by_path = dataclasses.replace(
        card.split.params, match="path", strip_prefix="../../../data/breast/"
    )
    folds = {s: [(f"Dataset_BUSI_with_GT/{n.split()[0]}/{n}", c) for n, c in rows]
             for s, rows in BUSI_FOLD1.items()}  # fmt: skip
    write_folds(root / "revisiting-transfer/breast", "breast", folds, pid=False)
    card = dataclasses.replace(card, split=dataclasses.replace(card.split, params=by_path))
    assert sorted(rt_splits(card)[1]["val"]) == ["benign (3).png", "malignant (3).png"]
    folds["test"].append(folds["train"][0])
    write_folds(root / "revisiting-transfer/breast", "breast", folds, pid=False)
    with pytest.raises(DatasetError, match="listed for both train and test"):
        rt_splits(card)


# --------------------------------------------------------------------------- DDTI

# case -> (TI-RADS element text or None for no element or "-" for no report, images)
DDTI = {
    "1": ("4a", 2),
    "2": ("2", 1),
    "3": ("5", 2),
    "4": ("3", 1),
    "5": ("4c", 1),
    "6": ("4b", 2),
    "7": (None, 1),  # a report without <tirads>: TI-RADS 1, benign (the study's "1.0")
    "8": ("-", 1),  # no report: dropped, as the study's inner join drops it
}
DDTI_CLASS = {"1": "malignant", "2": "benign", "3": "malignant", "4": "benign",
              "5": "malignant", "6": "malignant", "7": "benign"}  # fmt: skip
DDTI_FOLD1 = {"train": ["1", "2", "4", "7"], "val": ["3"], "test": ["5", "6"]}


def write_ddti(root: Path) -> dict[str, int]:
    """<case>_<k>.jpg and <case>.xml as DDTI ships them; the study's fold CSVs (by case)."""
    rows: dict[str, int] = {}
    for case, (tirads, count) in DDTI.items():
        for k in range(1, count + 1):
            rows[f"{case}_{k}.jpg"] = len(rows) + 1
            image(root / f"{case}_{k}.jpg", rows[f"{case}_{k}.jpg"], rgb=True)
        if tirads == "-":
            continue
        element = "" if tirads is None else f"<tirads>{tirads}</tirads>"
        (root / f"{case}.xml").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<case><number>{case}</number><age>49</age>'
            f"<sex>F</sex><composition>solid</composition><echogenicity>hypoechogenicity"
            f"</echogenicity><margins>well defined</margins><calcifications>non"
            f"</calcifications>{element}<reportbacaf/><reporteco/><mark><image>1</image>"
            f"<svg>[]</svg></mark></case>\n",
            encoding="utf-8",
        )
    folds = {
        split: [(case, name, DDTI_CLASS[case]) for case in cases for name in rows
                if name.split("_")[0] == case]
        for split, cases in DDTI_FOLD1.items()
    }  # fmt: skip
    write_folds(root / "revisiting-transfer/thyroid", "thyroid", folds, pid=True)
    return rows


def test_thyroid_ultrasound_rt_labels_from_tirads_in_patient_folds(tmp_path: Path) -> None:
    root = tmp_path / "ddti"
    rows = write_ddti(root)
    card = committed("thyroid_ultrasound_rt", root)
    splits, names = rt_splits(card)
    for split, cases in DDTI_FOLD1.items():
        expected = {
            rows[name]: card.classes.index(DDTI_CLASS[name.split("_")[0]])
            for name in rows
            if name.split("_")[0] in cases
        }
        assert by_row({split: splits[split]})[split] == expected, split
        assert {n.split("_")[0] for n in names[split]} == set(cases)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    owner = {g: s for s, data in splits.items() for g in data.groups}
    assert len(owner) == 7 and all(owner[c] == s for s, cs in DDTI_FOLD1.items() for c in cs)


def test_fold_files_refuses_a_patient_in_two_splits(tmp_path: Path) -> None:
    root = tmp_path / "ddti"
    write_ddti(root)
    folds = root / "revisiting-transfer/thyroid"
    train = (folds / "train_fold1.csv").read_text().splitlines()
    moved = next(line for line in train if line.split(",")[2].endswith("/1_2.jpg"))
    (folds / "train_fold1.csv").write_text("\n".join(x for x in train if x != moved) + "\n")
    with open(folds / "val_fold1.csv", "a") as handle:
        handle.write(moved + "\n")
    card = committed("thyroid_ultrasound_rt", root)
    with pytest.raises(DatasetError, match="group"):
        rt_splits(card)


def test_ddti_reader_reads_tirads_and_cases(tmp_path: Path) -> None:
    root = tmp_path / "ddti"
    write_ddti(root)
    card = committed("thyroid_ultrasound_rt", root)
    raw = READERS.run(card.reader, context(card))
    by_name = {p.name: i for i, p in enumerate(raw.images.paths)}
    assert raw.columns["tirads"][by_name["1_2.jpg"]] == "4a"
    assert raw.columns["label"][by_name["7_1.jpg"]] == "benign"
    assert raw.columns["label"][by_name["8_1.jpg"]] == ""
    assert raw.groups[by_name["6_2.jpg"]] == "6"


# --------------------------------------------------------------------------- ISIC 2018


def test_isic2018_rt_gives_the_study_fold_by_relative_path(tmp_path: Path) -> None:
    root = tmp_path / "isic"
    gt = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
    labels = write_isic(root, gt, "ISIC2018_Task3_Training_Input", ISIC2018, 21)
    stems = [
        f"ISIC_{24306 + row:07d}" + ("_downsampled" if row % 5 == 4 else "") for row in range(21)
    ]  # fmt: skip  (write_isic's names)
    parts = {"train": range(0, 14), "val": range(14, 16), "test": range(16, 20)}  # row 20: none
    folds = {
        split: [(f"ISIC2018/ISIC2018_Task3_Training_Input/{stems[r]}.jpg", ISIC2018[labels[r]])
                for r in rows]
        for split, rows in parts.items()
    }  # fmt: skip
    write_folds(root / "revisiting-transfer/isic", "", folds, pid=False)
    for path in (root / "revisiting-transfer/isic").glob("*.csv"):  # "../../../data//x" -> one /
        path.write_text(path.read_text().replace("data//", "data/"))
    card = committed("isic2018_rt", root)
    splits, _ = rt_splits(card)
    for split, rows in parts.items():
        assert by_row({split: splits[split]})[split] == {r: labels[r] for r in rows}, split


# --------------------------------------------------------------------------- MRNet

# case -> volume folder, {task: label}; slices: (task, case, slice, split, class)
MRNET_CASES = {"0000": "train", "0001": "train", "0002": "train", "0003": "train", "1130": "valid"}
MRNET_LABELS = {
    "train-acl.csv": {"0000": 1, "0001": 0, "0002": 0, "0003": 1},
    "valid-acl.csv": {"1130": 1},
    "train-meniscus.csv": {"0000": 0, "0001": 1, "0002": 0, "0003": 0},
    "valid-abnormal.csv": {"1130": 1},  # the study's meniscus labels of valid cases
    "valid-meniscus.csv": {"1130": 0},  # not read: the study reads valid-abnormal.csv
}
MRNET_SLICES = [
    ("acl", "0000", 10, "train", "acl"),
    ("acl", "0000", 11, "train", "acl"),
    ("meniscus", "0000", 12, "train", "normal"),
    ("acl", "0001", 5, "train", "normal"),
    ("meniscus", "0001", 6, "train", "meniscus"),
    ("meniscus", "0001", 7, "train", "meniscus"),
    ("acl", "0002", 3, "val", "normal"),
    ("acl", "1130", 1, "test", "acl"),
    ("meniscus", "1130", 2, "test", "meniscus"),
    ("acl", "0003", 4, "test", "acl"),
]


def write_mrnet(root: Path) -> dict[tuple[str, int], int]:
    """MRNet's .npy volumes and header-less label CSVs, and the study's knee fold CSVs."""
    rows: dict[tuple[str, int], int] = {}
    for case, folder in MRNET_CASES.items():
        volume = np.zeros((16, 32, 32), dtype=np.uint8)
        for _, slice_case, index, _, _ in MRNET_SLICES:
            if slice_case == case:
                row = rows.setdefault((case, index), len(rows) + 1)
                volume[index, :16], volume[index, 16:] = 4 * (row // 64), 4 * (row % 64)
        path = root / folder / "sagittal" / f"{case}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, volume)
    for name, labels in MRNET_LABELS.items():
        (root / name).write_text("".join(f"{c},{v}\n" for c, v in labels.items()))
    header = ["", "0", "1_x", "2", "3", "4", "5", "6", "7", "pid", "1_y", "class", "path"]
    for split in ("train", "val", "test"):
        body = []
        for number, (task, case, index, where, label) in enumerate(MRNET_SLICES):
            if where == split:
                name = f"{case}_sagittal_{index}.000000.png"
                path = f"../../../data/knee/images/{task}/{name}"
                flag = 0 if label == "normal" else 1
                body.append([number, "..", "..", "..", "data", "knee", "images", task, name, case,
                             flag, label, path])  # fmt: skip
        write_csv(root / f"revisiting-transfer/knee/{split}_fold1.csv", header, body)
    return rows


def test_mrnet_knee_rt_slices_from_volumes_in_the_study_folds(tmp_path: Path) -> None:
    root = tmp_path / "mrnet"
    rows = write_mrnet(root)
    card = committed("mrnet_knee_rt", root)
    splits, names = rt_splits(card)
    for split in ("train", "val", "test"):
        listed = [s for s in MRNET_SLICES if s[3] == split]
        expected = {rows[(c, i)]: card.classes.index(label) for _, c, i, _, label in listed}
        assert by_row({split: splits[split]})[split] == expected, split
        assert sorted(names[split]) == sorted(
            f"{c}_sagittal_{i}.000000.png" for _, c, i, _, _ in listed
        )
    assert {g for g in splits["test"].groups} == {"1130", "0003"}


def test_mrnet_reader_names_a_missing_volume(tmp_path: Path) -> None:
    root = tmp_path / "mrnet"
    write_mrnet(root)
    (root / "valid/sagittal/1130.npy").unlink()
    card = committed("mrnet_knee_rt", root)
    with pytest.raises(DatasetError, match=r"volume 1130.npy \(sagittal\) not found"):
        rt_splits(card)


# --------------------------------------------------------------------------- PCam-small

PCAM_Y = {"train": [0, 1, 0, 1, 1, 0], "valid": [0, 0, 1]}
# the export's file -> (split, row in split): valid 0 overwrote train 0 (same name)
PCAM_FOLD1 = {
    "train": [("1_label=1.png", "train", 1), ("1_label=0.png", "valid", 1),
              ("3_label=1.png", "train", 3), ("0_label=0.png", "valid", 0)],
    "val": [("2_label=1.png", "valid", 2), ("4_label=1.png", "train", 4)],
    "test": [("2_label=0.png", "train", 2), ("5_label=0.png", "train", 5)],
}  # fmt: skip


def write_pcam(root: Path) -> None:
    """PCam's train / valid .h5 pairs (rows encoded in the images) and the study's folds."""
    h5py = pytest.importorskip("h5py")
    root.mkdir(parents=True, exist_ok=True)
    offset = {"train": 1, "valid": 1 + len(PCAM_Y["train"])}
    for split, labels in PCAM_Y.items():
        images = np.zeros((len(labels), 32, 32, 3), dtype=np.uint8)
        for index in range(len(labels)):
            row = offset[split] + index
            images[index, :16], images[index, 16:] = 4 * (row // 64), 4 * (row % 64)
        y = np.asarray(labels, dtype=np.uint8).reshape(-1, 1, 1, 1)
        for kind, array in (("x", images), ("y", y)):
            with h5py.File(root / f"camelyonpatch_level_2_split_{split}_{kind}.h5", "w") as h:
                h.create_dataset(kind, data=array)
    folds = {s: [(f"PCam/png_images/{name}", "yes" if "=1" in name else "no")
                 for name, _, _ in rows] for s, rows in PCAM_FOLD1.items()}  # fmt: skip
    write_folds(root / "revisiting-transfer/pcam-small", "", folds, pid=False)
    for path in (root / "revisiting-transfer/pcam-small").glob("*.csv"):
        path.write_text(path.read_text().replace("data//", "data/"))


def test_pcam_small_rt_names_h5_rows_as_the_png_export(tmp_path: Path) -> None:
    root = tmp_path / "pcam"
    write_pcam(root)
    card = committed("pcam_small_rt", root)
    splits, names = rt_splits(card)
    offset = {"train": 1, "valid": 1 + len(PCAM_Y["train"])}
    for split, rows in PCAM_FOLD1.items():
        expected = {offset[s] + i: PCAM_Y[s][i] for _, s, i in rows}
        assert by_row({split: splits[split]})[split] == expected, split
        assert sorted(names[split]) == sorted(name for name, _, _ in rows)
