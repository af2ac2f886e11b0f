"""The committed real-dataset cards, each read from a miniature copy of its official layout.

Every test writes the download's real file names, CSV headers and value encodings and its
folder structure (a few tiny images) under ``tmp_path``, points the committed card at it
(only ``root`` and ``size`` change) and loads it through ``load_splits``. Each image
encodes its row in two flat halves, so labels and splits are checked image by image.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.config.cards import DatasetCard, load_dataset_card_file
from harness.data import DatasetError
from harness.data.npz import SplitData
from harness.data.prepare import load_splits

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
STEP = 4  # images encode their row in steps of 4: robust to JPEG rounding


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def committed(name: str, root: Path, size: int = 16) -> DatasetCard:
    """The committed card ``name`` with its reader pointed at ``root`` (and small images)."""
    card = load_dataset_card_file(DATASETS / f"{name}.yaml")
    changes: dict[str, object] = {"root": str(root)}
    if hasattr(card.reader.params, "size"):
        changes["size"] = size
    params = dataclasses.replace(card.reader.params, **changes)
    return dataclasses.replace(card, reader=dataclasses.replace(card.reader, params=params))


def image(path: Path, row: int, rgb: bool = False) -> None:
    """A 24x32 image encoding ``row``: top half ``STEP * (row // 64)``, bottom ``STEP * (row % 64)``.

    The halves meet on a JPEG block boundary, so JPEG files decode back to the row too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((32, 24, 3) if rgb else (32, 24), dtype=np.uint8)
    array[:16], array[16:] = STEP * (row // 64), STEP * (row % 64)
    Image.fromarray(array).save(path, **({"quality": 95} if path.suffix != ".png" else {}))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV written as the source writes it (plain ``,``, no quoting unless needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def by_row(splits: dict[str, SplitData]) -> dict[str, dict[int, list[int] | int]]:
    """Split -> {row encoded in the image: label}."""
    out: dict[str, dict[int, list[int] | int]] = {}
    for split, data in splits.items():
        top = data.images[:, 1].reshape(len(data), -1).mean(axis=1)
        bottom = data.images[:, -2].reshape(len(data), -1).mean(axis=1)
        rows = 64 * np.rint(top / STEP).astype(int) + np.rint(bottom / STEP).astype(int)
        out[split] = {int(r): label.tolist() for r, label in zip(rows, data.labels, strict=True)}
        assert len(out[split]) == len(data), f"{split}: two images with one row value"
    return out


def assert_groups_disjoint(splits: dict[str, SplitData]) -> None:
    """No group (patient) has images in two splits."""
    owner: dict[str, str] = {}
    for split, data in splits.items():
        assert data.groups is not None, split
        for group in set(data.groups.tolist()):
            assert owner.setdefault(group, split) == split, f"{group} in {owner[group]} and {split}"


# --------------------------------------------------------------------------- CheXpert

CHEXPERT_FINDINGS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def chexpert_rows(rng: np.random.Generator, split: str, patients: range) -> list[list[str]]:
    rows = []
    for patient in patients:
        for study in range(1, 1 + int(rng.integers(1, 3))):
            views = ["Frontal", "Lateral"] if study == 1 and patient % 3 == 0 else ["Frontal"]
            for k, view in enumerate(views, start=1):
                file = f"view{k}_{view.lower()}.jpg"
                path = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/{file}"
                codes = ["1.0", "0.0"] if split == "valid" else ["1.0", "0.0", "-1.0", ""]
                labels = [str(c) for c in rng.choice(codes, size=len(CHEXPERT_FINDINGS))]
                ap = "" if view == "Lateral" else str(rng.choice(["AP", "PA"]))
                rows.append([path, "Female", str(50 + patient % 30), view, ap, *labels])
    return rows


def write_chexpert(root: Path) -> dict[str, list[list[str]]]:
    rng = np.random.default_rng(0)
    made = {
        "train": chexpert_rows(rng, "train", range(1, 31)),
        "valid": chexpert_rows(rng, "valid", range(64541, 64546)),
    }
    row = 0
    for split, rows in made.items():
        write_csv(root / f"CheXpert-v1.0-small/{split}.csv", CHEXPERT_HEADER, rows)
        for entry in rows:
            image(root / entry[0], row)
            entry.append(str(row))  # remember each row's image value (not in the CSV)
            row += 1
    return made


@pytest.mark.parametrize("name, uncertain", [("chexpert", 1), ("chexpert_uzeros", 0)])
def test_chexpert_small_layout(tmp_path: Path, name: str, uncertain: int) -> None:
    made = write_chexpert(tmp_path / "chexpert")
    card = committed(name, tmp_path / "chexpert")
    splits = load_splits(card)
    found = by_row(splits)
    code = {"1.0": 1, "0.0": 0, "-1.0": uncertain, "": 0}
    columns = [CHEXPERT_HEADER.index(c) for c in FIVE]

    def expected(rows: list[list[str]]) -> dict[int, list[int]]:
        frontal = [r for r in rows if r[3] == "Frontal"]
        return {int(r[-1]): [code[r[c]] for c in columns] for r in frontal}

    assert found["test"] == expected(made["valid"])  # the official valid set, frontal only
    assert {**found["train"], **found["val"]} == expected(made["train"])
    assert 0 < len(splits["val"]) < len(splits["train"])
    assert_groups_disjoint(splits)
    assert splits["test"].images.shape[1:] == (16, 16)
    assert any(r[c] == "-1.0" for r in made["train"] for c in columns)


# --------------------------------------------------------------------------- NIH ChestX-ray14

NIH_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
    "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
    "OriginalImagePixelSpacing[x", "y]", "",
]  # fmt: skip  # the official header: unquoted commas inside brackets, a trailing comma
NIH_FINDINGS = [
    "No Finding", "Effusion", "Cardiomegaly|Effusion", "Pneumonia", "Mass", "Hernia",
    "Nodule", "Infiltration|Pneumonia", "Pneumothorax", "Pleural_Thickening", "Atelectasis",
]  # fmt: skip


def write_nih(root: Path) -> list[tuple[str, str, int]]:
    """Data_Entry_2017.csv, the official lists and images_00N/images/*.png; (name, labels, patient)."""
    made = []
    for patient in range(1, 121):
        for follow_up in range(1 + patient % 2):
            made.append((f"{patient:08d}_{follow_up:03d}.png", patient))
    rows, entries = [], []
    for row, (name, patient) in enumerate(made):
        findings = NIH_FINDINGS[row % len(NIH_FINDINGS)]
        folder = "images_001" if row < 60 else "images_002"
        image(root / folder / "images" / name, row)
        rows.append([name, findings, name[9:12].lstrip("0") or "0", patient, 58, "M", "PA",
                     2682, 2749, 0.143, 0.143])  # fmt: skip
        entries.append((name, findings, patient))
    write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows)
    test = [name for name, _, patient in entries if patient > 90]
    train = [name for name, _, patient in entries if patient <= 90]
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return entries


def test_chestxray14_official_layout_and_lists(tmp_path: Path) -> None:
    entries = write_nih(tmp_path / "nih")
    card = committed("chestxray14", tmp_path / "nih")
    splits = load_splits(card)
    found = by_row(splits)
    expected = {}
    for row, (_, findings, _) in enumerate(entries):
        names = findings.split("|")
        expected[row] = [int(c in names) for c in card.classes]
    test_rows = {row for row, (_, _, patient) in enumerate(entries) if patient > 90}
    assert found["test"] == {row: expected[row] for row in sorted(test_rows)}
    assert {**found["train"], **found["val"]} == {
        row: expected[row] for row in expected if row not in test_rows
    }
    assert len(splits["val"]) > 0 and len(splits["test"]) == 45  # 30 patients, 1.5 images each
    assert_groups_disjoint(splits)
    assert found["test"][len(entries) - 1] == expected[len(entries) - 1]


def test_chestxray14_7class_keeps_single_findings_of_the_seven(tmp_path: Path) -> None:
    entries = write_nih(tmp_path / "nih")
    card = committed("chestxray14_7class", tmp_path / "nih")
    splits = load_splits(card)
    found = by_row(splits)
    kept = {
        row: card.classes.index(findings)
        for row, (_, findings, _) in enumerate(entries)
        if findings in card.classes
    }
    assert {k: v for split in found.values() for k, v in split.items()} == kept
    dropped = {findings for _, findings, _ in entries} - set(card.classes)
    assert dropped == {"No Finding", "Cardiomegaly|Effusion", "Pneumonia", "Hernia",
                       "Infiltration|Pneumonia", "Pleural_Thickening"}  # fmt: skip
    assert_groups_disjoint(splits)


def test_nih_list_naming_an_image_twice_is_an_error(tmp_path: Path) -> None:
    write_nih(tmp_path / "nih")
    lists = tmp_path / "nih" / "test_list.txt"
    lists.write_text(lists.read_text() + "00000001_000.png\n")
    with pytest.raises(DatasetError, match=r"00000001_000\.png' is listed in both"):
        load_splits(committed("chestxray14", tmp_path / "nih"))


# --------------------------------------------------------------------------- ISIC

ISIC2018 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
ISIC2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def write_isic(root: Path, csv_path: str, images: str, columns: list[str], n: int) -> list[int]:
    rows, labels = [], []
    for row in range(n):
        label = row % (len(columns) - (1 if columns[-1] == "UNK" else 0))
        stem = f"ISIC_{24306 + row:07d}" + ("_downsampled" if row % 5 == 4 else "")
        image(root / images / f"{stem}.jpg", row, rgb=True)
        rows.append([stem, *("1.0" if k == label else "0.0" for k in range(len(columns)))])
        labels.append(label)
    write_csv(root / csv_path, ["image", *columns], rows)
    if columns[-1] == "UNK":  # the lesion of each image: the cards group splits by it
        header = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
        meta = [(r[0], "60.0", "head/neck", f"BCN_{k:07d}", "male") for k, r in enumerate(rows)]
        write_csv(root / "ISIC_2019_Training_Metadata.csv", header, meta)
    else:
        header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
        meta = [(f"HAM_{k:07d}", r[0], "nv", "histo", "60.0", "male", "back")
                for k, r in enumerate(rows)]  # fmt: skip
        write_csv(root / "HAM10000_metadata.csv", header, meta)
    return labels


@pytest.mark.parametrize(
    "name, csv_path, images, columns",
    [
        (
            "isic2018",
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
            "ISIC2018_Task3_Training_Input",
            ISIC2018,
        ),
        ("isic2019", "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Input", ISIC2019),
    ],
)
def test_isic_ground_truth_onehot(
    tmp_path: Path, name: str, csv_path: str, images: str, columns: list[str]
) -> None:
    labels = write_isic(tmp_path / "isic", csv_path, images, columns, 60)
    splits = load_splits(committed(name, tmp_path / "isic"))
    found = by_row(splits)
    assert {k: v for split in found.values() for k, v in split.items()} == dict(enumerate(labels))
    sizes = {split: len(data) for split, data in splits.items()}
    assert sum(sizes.values()) == 60 and sizes["train"] > sizes["test"] > sizes["val"] > 0
    assert splits["train"].images.shape[1:] == (16, 16, 3)
    again = load_splits(committed(name, tmp_path / "isic"))
    assert all(np.array_equal(again[s].labels, splits[s].labels) for s in splits)


# --------------------------------------------------------------------------- retina


def test_aptos2019_grades(tmp_path: Path) -> None:
    root = tmp_path / "aptos"
    ids = [f"{row:03x}e9c1f2{row:04d}" for row in range(100)]
    for row, id_code in enumerate(ids):
        image(root / "train_images" / f"{id_code}.png", row, rgb=True)
    write_csv(root / "train.csv", ["id_code", "diagnosis"], [(i, r % 5) for r, i in enumerate(ids)])
    write_csv(root / "test.csv", ["id_code"], [("0005cfc8afb6",)])  # unlabelled: not read
    card = committed("aptos2019", root)
    assert card.task == "ordinal" and card.primary_metric == "quadratic_kappa"
    found = by_row(load_splits(card))
    assert {k: v for split in found.values() for k, v in split.items()} == {
        row: row % 5 for row in range(100)
    }
    assert all(len(split) for split in found.values())


def test_eyepacs_official_train_and_test(tmp_path: Path) -> None:
    root = tmp_path / "eyepacs"
    train = [(f"{p}_{eye}", (p + k) % 5) for p in (10, 13, 15, 16, 17, 19, 20, 22, 23, 25,
             30, 31, 40, 41, 44, 49) for k, eye in enumerate(("left", "right"))]  # fmt: skip
    test = [(f"{p}_{eye}", p % 5) for p in (1, 2, 3, 5) for eye in ("left", "right")]
    values = {}
    for folder, rows in (("train", train), ("test", test)):
        for name, _ in rows:
            values[name] = len(values)
            image(root / folder / f"{name}.jpeg", values[name], rgb=True)
    write_csv(root / "trainLabels.csv", ["image", "level"], train)
    write_csv(
        root / "retinopathy_solution.csv",
        ["image", "level", "Usage"],
        [(n, level, "Public" if k % 3 else "Private") for k, (n, level) in enumerate(test)],
    )
    splits = load_splits(committed("eyepacs", root))
    found = by_row(splits)
    assert found["test"] == {values[n]: level for n, level in test}
    assert {**found["train"], **found["val"]} == {values[n]: level for n, level in train}
    assert_groups_disjoint(splits)
    assert len(set(splits["test"].groups.tolist())) == 4  # patients 1, 2, 3, 5


# --------------------------------------------------------------------------- pneumonia, PCam


def test_pediatric_pneumonia_kaggle_layout(tmp_path: Path) -> None:
    root = tmp_path / "chest_xray"
    values: dict[tuple[str, int], int] = {}  # (split, label) of each image value
    for split, first, n in (("train", 1, 8), ("val", 1301, 1), ("test", 2001, 2)):
        for p in range(first, first + n):  # patient numbers of a split are its own
            files = {
                "NORMAL": [f"IM-{p:04d}-0001.jpeg", f"IM-{p:04d}-0002.jpeg",
                           f"NORMAL2-IM-{p:04d}-0001.jpeg"],
                "PNEUMONIA": [f"person{p}_bacteria_{2 * p}.jpeg", f"person{p}_virus_{3 * p}.jpeg"],
            }  # fmt: skip
            for label, (folder, names) in enumerate(files.items()):
                for name in names:
                    row = len(values)
                    values[(split, row)] = label
                    image(root / split / folder / name, row)
    (root / "train" / "NORMAL" / ".DS_Store").write_text("junk")
    splits = load_splits(committed("pediatric_pneumonia", root))
    found = by_row(splits)

    def of(split: str) -> dict[int, int]:
        return {row: label for (s, row), label in values.items() if s == split}

    assert found["test"] == of("test")
    assert {**found["train"], **found["val"]} == of("train")  # the val folder is left out
    assert 0 < len(splits["val"]) < len(splits["train"])
    assert_groups_disjoint(splits)
    groups = set(splits["train"].groups.tolist()) | set(splits["val"].groups.tolist())
    assert len(groups) == 24  # IM-0001, NORMAL2-IM-0001 and person1 ... for 8 patients


def test_pcam_official_files(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "pcam"
    root.mkdir()
    made = {}
    for split, n in (("train", 8), ("valid", 4), ("test", 4)):
        x = np.random.default_rng(n).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        for kind, data in (("x", x), ("y", y)):
            with h5py.File(root / f"camelyonpatch_level_2_split_{split}_{kind}.h5", "w") as f:
                f.create_dataset(kind, data=data)
        made[split] = (x, y.reshape(-1))
    splits = load_splits(committed("pcam", root))
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert np.array_equal(splits[ours].images, made[theirs][0])
        assert splits[ours].labels.tolist() == made[theirs][1].tolist()


# --------------------------------------------------------------------------- TB sets


@pytest.mark.parametrize(
    "name, folder, prefix",
    [("montgomery", "MontgomerySet", "MCUCXR"), ("shenzhen", "ChinaSet_AllFiles", "CHNCXR")],
)
def test_tuberculosis_sets_label_from_file_name(
    tmp_path: Path, name: str, folder: str, prefix: str
) -> None:
    root = tmp_path / name
    labels = {}
    for row in range(50):
        label = int(row % 5 < 2)
        labels[row] = label
        image(root / folder / "CXR_png" / f"{prefix}_{row + 1:04d}_{label}.png", row)
        (root / folder / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        reading = root / folder / "ClinicalReadings" / f"{prefix}_{row + 1:04d}_{label}.txt"
        reading.write_text("Patient's Sex: M\nPatient's Age: 040Y\nnormal\n")
    if name == "montgomery":  # masks share the image names: they must not be read
        for side in ("leftMask", "rightMask"):
            image(root / folder / "ManualMask" / side / f"{prefix}_0001_0.png", 4000)
    (root / folder / "CXR_png" / "Thumbs.db").write_bytes(b"junk")
    splits = load_splits(committed(name, root))
    found = by_row(splits)
    assert {k: v for split in found.values() for k, v in split.items()} == labels
    sizes = {split: len(data) for split, data in splits.items()}
    assert sizes["train"] > sizes["test"] >= sizes["val"] > 0


def test_name_pattern_names_the_file_it_cannot_label(tmp_path: Path) -> None:
    root = tmp_path / "montgomery"
    for row in range(20):
        image(root / "MontgomerySet" / "CXR_png" / f"MCUCXR_{row:04d}_{row % 2}.png", row)
    image(root / "MontgomerySet" / "CXR_png" / "MCUCXR_0099.png", 99)
    with pytest.raises(DatasetError, match=r"'MCUCXR_0099\.png' \(row 21\); captured None"):
        load_splits(committed("montgomery", root))
