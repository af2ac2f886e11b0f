"""More committed real-dataset cards, each read from a miniature copy of its official layout.

BACH, iChallenge-AMD, iChallenge-PM, KimiaPath960, CBIS-DDSM and the lesion grouping of
ISIC 2018 / 2019. As in ``test_dataset_zoo.py`` (whose helpers are used), every test
writes the download's real file names, CSV headers, value conventions and folder
structure under ``tmp_path`` with tiny images that encode their row, points the
committed card at it and loads it through ``load_splits``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_dataset_zoo import (  # noqa: F401  (home: the autouse MEDXFER_HOME fixture)
    STEP,
    assert_groups_disjoint,
    by_row,
    committed,
    home,
    image,
    write_csv,
)

import harness.data.readers.cbis_ddsm  # noqa: F401  (registers the cbis_ddsm reader)
from harness.config.cards import DatasetCard
from harness.data import DatasetError
from harness.data.prepare import load_splits


def merged(found: dict[str, dict[int, object]]) -> dict[int, object]:
    """All splits' {row: label} in one mapping."""
    return {row: label for split in found.values() for row, label in split.items()}


def row_groups(splits: dict) -> dict[int, int]:
    """{row encoded in the image: its group index}, over all splits."""
    out = {}
    for data in splits.values():
        top = data.images[:, 1].reshape(len(data), -1).mean(axis=1)
        bottom = data.images[:, -2].reshape(len(data), -1).mean(axis=1)
        rows = 64 * np.rint(top / STEP).astype(int) + np.rint(bottom / STEP).astype(int)
        out.update(zip(rows.tolist(), data.groups.tolist(), strict=True))
    return out


# --------------------------------------------------------------------------- BACH

BACH_CLASSES = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}


def write_bach(root: Path, per_class: int = 10) -> dict[int, int]:
    """Photos/<class>/<prefix>NNN.tif and the header-less microscopy_ground_truth.csv."""
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    lines, labels = [], {}
    for label, (folder, prefix) in enumerate(BACH_CLASSES.items()):
        for k in range(1, per_class + 1):
            row = len(labels)
            name = f"{prefix}{k:03d}.tif"
            image(photos / folder / name, row, rgb=True)
            lines.append(f"{name},{folder}")
            labels[row] = label
    (photos / "microscopy_ground_truth.csv").write_text("\n".join(lines) + "\n")
    (root / "ICIAR2018_BACH_Challenge" / "WSI").mkdir()  # whole slides: not read
    return labels


def test_bach_photos_and_headerless_ground_truth(tmp_path: Path) -> None:
    labels = write_bach(tmp_path / "bach")
    card = committed("bach", tmp_path / "bach")
    assert card.classes == ("Normal", "Benign", "InSitu", "Invasive")
    assert card.primary_metric == "accuracy"
    splits = load_splits(card)
    assert merged(by_row(splits)) == labels  # the first CSV line is data, not a header
    sizes = {split: len(data) for split, data in splits.items()}
    assert sizes == {"train": 24, "val": 8, "test": 8}  # 64/16/20 of 10 per class, stratified
    assert all(sorted(np.bincount(splits[s].labels, minlength=4)) == [n] * 4
               for s, n in (("train", 6), ("val", 2), ("test", 2)))  # fmt: skip
    assert splits["train"].images.shape[1:] == (16, 16, 3)


def test_bach_bad_line_and_missing_photo_are_named(tmp_path: Path) -> None:
    root = tmp_path / "bach"
    write_bach(root)
    csv_path = root / "ICIAR2018_BACH_Challenge" / "Photos" / "microscopy_ground_truth.csv"
    good = csv_path.read_text()
    csv_path.write_text(good + "iv011.tif,Invasive,extra\n")
    with pytest.raises(DatasetError, match=r"microscopy_ground_truth\.csv line 41 has 3 values"):
        load_splits(committed("bach", root))
    csv_path.write_text(good + "iv011.tif,Invasive\n")
    with pytest.raises(DatasetError, match=r"image file .*iv011\.tif not found"):
        load_splits(committed("bach", root))


# --------------------------------------------------------------------------- iChallenge


def test_ichallenge_amd_training400(tmp_path: Path) -> None:
    root = tmp_path / "amd"
    labels = {}
    for row in range(40):
        amd = row % 4 == 0  # 10 AMD, 30 non-AMD, like the real 89 / 311 imbalance
        folder, name = ("AMD", f"A{row:04d}.jpg") if amd else ("Non-AMD", f"N{row:04d}.jpg")
        image(root / "Training400" / folder / name, row, rgb=True)
        labels[row] = int(amd)
    card = committed("ichallenge_amd", root)
    assert card.classes == ("non_amd", "amd") and card.task == "binary"
    splits = load_splits(card)
    assert merged(by_row(splits)) == labels
    assert [int(splits[s].labels.sum()) for s in ("train", "val", "test")] == [6, 2, 2]


def test_ichallenge_pm_merges_high_and_pathological_myopia(tmp_path: Path) -> None:
    root = tmp_path / "pm"
    labels, letters = {}, {}
    for row in range(45):
        letter = "PNH"[row % 3]
        name = f"{letter}{row // 3 + 1:04d}.jpg"
        image(root / "PALM-Training400" / "PALM-Training400" / name, row, rgb=True)  # nested zip
        labels[row], letters[row] = int(letter != "N"), letter
    (root / "PALM-Training400" / "PALM-Training400.zip").write_bytes(b"PK")  # not an image
    card = committed("ichallenge_pm", root)
    splits = load_splits(card)
    found = merged(by_row(splits))
    assert found == labels
    assert {found[r] for r, letter in letters.items() if letter == "H"} == {1}
    assert sum(len(data) for data in splits.values()) == 45


def test_ichallenge_pm_unknown_file_letter_is_named(tmp_path: Path) -> None:
    root = tmp_path / "pm"
    for row in range(12):
        image(root / "PALM-Training400" / f"{'NP'[row % 2]}{row:04d}.jpg", row, rgb=True)
    image(root / "PALM-Training400" / "V0001.jpg", 40, rgb=True)  # a validation image
    with pytest.raises(DatasetError, match=r"'V0001\.jpg'"):
        load_splits(committed("ichallenge_pm", root))


# --------------------------------------------------------------------------- KimiaPath960


def test_kimiapath960_label_from_leading_letter(tmp_path: Path) -> None:
    root = tmp_path / "kimia"
    labels = {}
    for c, letter in enumerate("ABCDEFGHIJKLMNOPQRST"):
        for k in range(1, 11):
            row = len(labels)
            image(root / f"{letter}{k}.tif", row)  # grayscale TIFF
            labels[row] = c
    card = committed("kimiapath960", root)
    assert len(card.classes) == 20
    splits = load_splits(card)
    assert merged(by_row(splits)) == labels
    for split, per_class in (("train", 7), ("val", 1), ("test", 2)):
        assert np.bincount(splits[split].labels, minlength=20).tolist() == [per_class] * 20
    assert splits["test"].images.shape[1:] == (16, 16)


# --------------------------------------------------------------------------- CBIS-DDSM

MASS_HEADER = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]  # fmt: skip
CALC_HEADER = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "calc type", "calc distribution", "assessment", "pathology",
    "subtlety", "image file path", "cropped image file path", "ROI mask file path",
]  # fmt: skip
UID = "1.3.6.1.4.1.9590.100.1.2"


def dicom(path: Path, row: int) -> None:
    """A 16-bit MONOCHROME2 DICOM whose pixels encode ``row`` like ``image``."""
    pixels = np.zeros((32, 24), dtype=np.uint16)
    pixels[:16], pixels[16:] = STEP * (row // 64), STEP * (row % 64)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "MG"
    ds.set_pixel_data(pixels, "MONOCHROME2", 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def cbis_row(kind: str, split: str, patient: int, side: str, view: str, abnormality: int,
             pathology: str) -> list[str]:  # fmt: skip
    """One case-CSV row as TCIA writes it (UID paths that do not match the download)."""
    subject = f"{kind}-{'Training' if split == 'train' else 'Test'}_P_{patient:05d}_{side}_{view}"
    study, series = f"{UID}.{patient}{abnormality}1", f"{UID}.{patient}{abnormality}2"
    roi = f"{subject}_{abnormality}/{study}/{series}/000001.dcm\n"  # real rows end in a newline
    kind_columns = ["OVAL", "CIRCUMSCRIBED"] if kind == "Mass" else ["PLEOMORPHIC", "CLUSTERED"]
    return [f"P_{patient:05d}", "3", "LEFT" if side == "LEFT" else "RIGHT", view,
            str(abnormality), kind.lower() if kind == "Mass" else "calcification", *kind_columns,
            "4", pathology, "4", f"{subject}/{study}/{series}/000000.dcm",
            f"{subject}_{abnormality}/{study}/{series}/000000.dcm", roi]  # fmt: skip


def write_cbis(root: Path) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    """CSVs and CBIS-DDSM/<subject>/<study>/<series>/1-1.dcm; mammogram -> (row, label)."""
    csvs: dict[tuple[str, str], list[list[str]]] = {}
    pathologies = ["MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"]
    for split, patients in (("train", range(1, 21)), ("test", range(101, 106))):
        for patient in patients:
            for side, view in (("LEFT", "CC"), ("LEFT", "MLO"), ("RIGHT", "CC")):
                if view == "MLO" and patient % 2:
                    continue
                kind = "Mass" if patient % 3 else "Calc"
                n = 1 + (patient + len(view)) % 2  # one or two abnormalities on the image
                for abnormality in range(1, n + 1):
                    pathology = pathologies[(patient + abnormality + len(side)) % 3]
                    row = cbis_row(kind, split, patient, side, view, abnormality, pathology)
                    csvs.setdefault((kind, split), []).append(row)
                if patient % 5 == 0:  # the Calc copy of a Mass image: the same mammogram
                    row = cbis_row("Calc", split, patient, side, view, 1, "BENIGN")
                    csvs.setdefault(("Calc", split), []).append(row)
    made: dict[tuple[str, str, str, str], tuple[int, int]] = {}
    written: set[str] = set()
    for (kind, split), rows in csvs.items():
        header = MASS_HEADER if kind == "Mass" else CALC_HEADER
        name = f"{kind.lower()}_case_description_{'train' if split == 'train' else 'test'}_set.csv"
        write_csv(root / name, header, rows)
    for kind in ("Mass", "Calc"):  # mammogram -> worst pathology, first subject folder
        for split in ("train", "test"):
            for entry in csvs.get((kind, split), []):
                key = (split, entry[0], entry[2], entry[3])
                malignant = int(entry[9] == "MALIGNANT")
                if key not in made:
                    made[key] = (len(made), malignant)
                else:
                    made[key] = (made[key][0], max(made[key][1], malignant))
                subject = entry[11].split("/")[0]
                if subject not in written:  # a Calc copy of a Mass view holds the same image
                    written.add(subject)
                    series = f"1.000000-full mammogram images-{24515 + len(made)}"
                    study = f"07-20-2016-DDSM-{74994 + len(made)}"
                    dicom(root / "CBIS-DDSM" / subject / study / series / "1-1.dcm", made[key][0])
                    roi = root / "CBIS-DDSM" / f"{subject}_1" / study / "1.000000-ROI mask images"
                    dicom(roi / "1-1.dcm", 4000)  # crops and masks: other folders, not read
                    dicom(roi / "1-2.dcm", 4001)
    return made


def cbis_card(root: Path) -> DatasetCard:
    card = committed("cbis_ddsm", root)
    params = dataclasses.replace(card.reader.params, window=(0.0, 255.0))  # keep pixel values
    return dataclasses.replace(card, reader=dataclasses.replace(card.reader, params=params))


def test_cbis_ddsm_full_mammograms_by_subject_folder(tmp_path: Path) -> None:
    root = tmp_path / "cbis"
    made = write_cbis(root)
    card = cbis_card(root)
    assert card.classes == ("benign", "malignant") and card.primary_metric == "roc_auc"
    splits = load_splits(card)
    found = by_row(splits)
    expected = {split: {r: y for (s, *_), (r, y) in made.items() if s == split}
                for split in ("train", "test")}  # fmt: skip
    assert found["test"] == expected["test"]  # the official test CSVs
    assert {**found["train"], **found["val"]} == expected["train"]
    assert len(splits["test"]) == 12  # 5 patients: 3 views for even, 2 for odd numbers
    assert len(splits["train"]) + len(splits["val"]) == 50 and len(splits["val"]) > 0
    assert 0 < int(splits["train"].labels.sum()) < len(splits["train"])
    assert_groups_disjoint({s: splits[s] for s in ("train", "val")})
    assert len(set(splits["test"].groups.tolist())) == 5  # patients P_00101 ... P_00105
    train_val = {g for s in ("train", "val") for g in splits[s].groups.tolist()}
    assert len(train_val) == 20
    assert splits["train"].images.shape[1:] == (16, 16)


def test_cbis_ddsm_one_image_per_abnormality(tmp_path: Path) -> None:
    root = tmp_path / "cbis"
    write_cbis(root)
    card = cbis_card(root)
    params = dataclasses.replace(card.reader.params, unit="abnormality")
    card = dataclasses.replace(card, reader=dataclasses.replace(card.reader, params=params))
    splits = load_splits(card)
    rows = 0
    for name in ("mass", "calc"):
        for split in ("train", "test"):
            text = (root / f"{name}_case_description_{split}_set.csv").read_text()
            rows += text.count('.dcm\n"\n')  # one quoted, newline-ended ROI path per row
    assert sum(len(data) for data in splits.values()) == rows > 63


def test_cbis_ddsm_ambiguous_or_missing_folder_is_named(tmp_path: Path) -> None:
    root = tmp_path / "cbis"
    write_cbis(root)
    subject = root / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC"
    series = next(subject.glob("*/*full mammogram*"))
    dicom(series.parent / "1.000000-full mammogram images-99999" / "1-1.dcm", 7)
    with pytest.raises(
        DatasetError,
        match=r"mass_case_description_train_set\.csv line 2: subject folder .*"
        r"Mass-Training_P_00001_LEFT_CC holds 2 candidate DICOM files",
    ):
        load_splits(cbis_card(root))
    for path in sorted(subject.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    subject.rmdir()
    with pytest.raises(DatasetError, match=r"line 2: subject folder .*P_00001_LEFT_CC.* not found"):
        load_splits(cbis_card(root))


def test_cbis_ddsm_unknown_pathology_is_named(tmp_path: Path) -> None:
    root = tmp_path / "cbis"
    write_cbis(root)
    path = root / "calc_case_description_test_set.csv"
    path.write_text(path.read_text().replace("BENIGN", "PROBABLY_BENIGN", 1))
    with pytest.raises(DatasetError, match=r"calc_case_description_test_set\.csv line \d+: "
                       r"pathology 'PROBABLY_BENIGN"):  # fmt: skip
        load_splits(cbis_card(root))


# --------------------------------------------------------------------------- ISIC lesions

ISIC2018_GT = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
ISIC2018 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
ISIC2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def write_isic_lesions(root: Path, version: str, n: int = 84) -> tuple[dict, dict]:
    """Ground truth, images and the metadata CSV; returns row -> label and image -> lesion."""
    columns = ISIC2018 if version == "2018" else ISIC2019
    images = "ISIC2018_Task3_Training_Input" if version == "2018" else "ISIC_2019_Training_Input"
    gt, meta, labels, lesions = [], [], {}, {}
    lesion_number = 27419
    for row in range(n):
        label = (row // 3) % (7 if version == "2018" else 8)
        if row % 3 == 0 or row % 7 == 0:  # runs of 1-3 images of one lesion, one class each
            lesion_number += 1
        stem = f"ISIC_{24306 + row:07d}"
        image(root / images / f"{stem}.jpg", row, rgb=True)
        gt.append([stem, *("1.0" if k == label else "0.0" for k in range(len(columns)))])
        lesion = f"HAM_{lesion_number:07d}"
        if version == "2019" and row % 11 == 5:
            lesion = ""  # the MSK images have no lesion id
        labels[row], lesions[stem] = label, lesion
        if version == "2018":
            meta.append([lesion, stem, columns[label].lower(), "histo", "60.0", "male", "back"])
        else:
            meta.append([stem, "60.0", "posterior torso", lesion, "female"])
    if version == "2018":
        write_csv(root / ISIC2018_GT, ["image", *columns], gt)
        header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
        write_csv(root / "HAM10000_metadata.csv", header, meta[::-1])  # any order
    else:
        write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image", *columns], gt)
        header = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
        write_csv(root / "ISIC_2019_Training_Metadata.csv", header, meta)
    return labels, lesions


@pytest.mark.parametrize("version", ["2018", "2019"])
def test_isic_splits_keep_each_lesion_together(tmp_path: Path, version: str) -> None:
    root = tmp_path / "isic"
    labels, lesions = write_isic_lesions(root, version)
    splits = load_splits(committed(f"isic{version}", root))
    assert merged(by_row(splits)) == labels
    assert_groups_disjoint(splits)
    group_of = row_groups(splits)
    lesion_of = {row: lesions[f"ISIC_{24306 + row:07d}"] or f"own {row}" for row in labels}
    pairs = {(lesion_of[row], group) for row, group in group_of.items()}
    assert len(pairs) == len({lesion for lesion, _ in pairs}) == len({g for _, g in pairs})
    assert len(pairs) < 84  # lesions of several images (one group each) exist
    blank = [stem for stem, lesion in lesions.items() if not lesion]
    assert (len(blank) > 0) == (version == "2019")  # each image without a lesion id alone
    sizes = {split: len(data) for split, data in splits.items()}
    assert sum(sizes.values()) == 84 and sizes["train"] > sizes["test"] > sizes["val"] > 0


def test_isic_image_missing_from_metadata_is_named(tmp_path: Path) -> None:
    root = tmp_path / "isic"
    write_isic_lesions(root, "2018")
    meta = root / "HAM10000_metadata.csv"
    meta.write_text("".join(line for line in meta.open() if "ISIC_0024310" not in line))
    with pytest.raises(DatasetError, match=r"1 image\(s\) .* not in .*HAM10000_metadata\.csv "
                       r"\(column 'image_id'\), e\.g\. 'ISIC_0024310'"):  # fmt: skip
        load_splits(committed("isic2018", root))


def test_isic2018_blank_lesion_id_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "isic"
    write_isic_lesions(root, "2018")
    meta = root / "HAM10000_metadata.csv"
    lines = meta.read_text().splitlines(keepends=True)
    lines[1] = "," + lines[1].split(",", 1)[1]  # HAM10000 gives every image a lesion
    meta.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"gives 'ISIC_\d+' a blank 'lesion_id'"):
        load_splits(committed("isic2018", root))
