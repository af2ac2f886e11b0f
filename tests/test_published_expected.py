"""Committed expected files: published entries cite their source and preset; ids are suite cases;
the generated files are what the generator makes of the committed transcriptions."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_dataset_zoo import (  # noqa: F401  (home: the autouse MEDXFER_HOME fixture)
    CHEXPERT_HEADER,
    by_row,
    committed,
    home,
    write_chexpert,
)

from harness.baselines.expected import EXPECTED_DIR, load_expected
from harness.baselines.published import published_se
from harness.config.suites import load_suite
from harness.data.prepare import load_splits
from harness.protocols.registry import presets_of

GENERATOR = EXPECTED_DIR / "published" / "make_expected.py"
# presets being written alongside the paper suites: (protocol, name) -> version
PLANNED_PRESETS = {
    **{(p, "ssl-medicalimaging"): 1 for p in ("linear", "fewshot", "invariance", "finetune")},
    ("multiview", "ssl-medicalimaging"): 1,
    **{(p, "ssl-transfer"): 1 for p in ("linear", "fewshot", "finetune")},
    ("finetune", "medical-transformers"): 1,
}
SOURCE_FIELDS = ("repository", "commit", "file", "row", "column")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_expected", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _expected_files() -> list[tuple[str, Path]]:
    files = []
    for path in sorted(EXPECTED_DIR.glob("*.yaml")):
        suite = path.name.removesuffix(".yaml").removesuffix(".cuda")
        files.append((suite, path))
    return files


@pytest.mark.parametrize("suite, path", _expected_files(), ids=lambda v: str(v))
def test_every_entry_is_a_case_of_its_suite(suite: str, path: Path) -> None:
    entries = load_expected(path, suite).entries
    cases = {case.case_id for case in load_suite(suite).cases()}
    assert entries, f"{path} holds no entry"
    assert sorted(set(entries) - cases) == []


@pytest.mark.parametrize("suite, path", _expected_files(), ids=lambda v: str(v))
def test_published_entries_cite_their_source(suite: str, path: Path) -> None:
    for case_id, entry in load_expected(path, suite).entries.items():
        if entry.source["kind"] != "published":
            continue
        missing = [k for k in SOURCE_FIELDS if not entry.source.get(k)]
        assert not missing, f"{path}: {case_id} lacks source {missing}"
        assert re.fullmatch(r"[0-9a-f]{40}", entry.source["commit"]), case_id
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.source["repository"]), case_id
        published_se(entry.source.get("interval"))  # a malformed interval raises


@pytest.mark.parametrize("table", _generator().TABLES, ids=lambda t: t.suite)
def test_generated_entries_name_a_preset_that_exists_or_is_planned(table: object) -> None:
    entries = load_expected(EXPECTED_DIR / f"{table.suite}.yaml", table.suite).entries
    assert entries
    for case_id, entry in entries.items():
        protocol = case_id.split("/")[0]
        registered = presets_of(protocol).get(entry.preset)
        if registered is not None:
            assert registered.version == entry.preset_version, case_id
        else:
            assert PLANNED_PRESETS.get((protocol, entry.preset)) == entry.preset_version, case_id
        assert entry.profile == "paper" and entry.source["kind"] == "published"
        assert entry.tolerance_components["rule"].startswith("published-v1")


def test_paper_medical_covers_its_suite_exactly() -> None:
    """The paper suite is regression-checked: every case has a published value (182 numbers)."""
    suite = load_suite("paper-medical")
    entries = load_expected(EXPECTED_DIR / "paper-medical.yaml", "paper-medical").entries
    assert suite.expected_required
    assert set(entries) == {case.case_id for case in suite.cases()}
    assert len(entries) == 13 * 9 + 13 * 2 + 13 + 8 + 10 + 8
    fewshot = entries["fewshot/shenzhen/resnet50.tv_in1k"]
    assert (fewshot.value, fewshot.source["interval"]) == (
        0.7086,
        {"kind": "ci95", "value": 0.0072},
    )
    assert entries["linear/eyepacs/resnet50.pirl"].metric == "mean_per_class_accuracy"
    assert entries["finetune/chexpert_ssl_medical_uzeros/resnet50.moco_v2"].value == 0.7996
    assert entries["multiview/eyepacs/resnet50.pirl"].metric == "mean_cosine"


def test_medical_transformers_entries_use_median_and_runs() -> None:
    path = EXPECTED_DIR / "medical-transformers.yaml"
    entries = load_expected(path, "medical-transformers").entries
    assert len(entries) == 18  # the "ImageNet + DINO" rows are derived cards
    assert {(e.preset, e.preset_version) for e in entries.values()} == {("medical-transformers", 1)}
    dino = entries["finetune/isic2019/deit_small_patch16_224.fb_in1k_dino_isic2019"]
    assert (dino.metric, dino.value) == ("mean_per_class_accuracy", 0.853)
    assert dino.source["row"] == "ImageNet (supervised) + Self-supervised with DINO / DeiT-S"
    kappa = entries["finetune/aptos2019/resnet50.tv_in1k"]
    assert (kappa.metric, kappa.value) == ("quadratic_kappa", 0.893)
    assert kappa.source["interval"] == {"kind": "std", "value": 0.004, "runs": 5,
                                        "statistic": "median"}  # fmt: skip
    assert entries["finetune/isic2019/deit_small_patch16_224.random"].metric == (
        "mean_per_class_accuracy"
    )


@pytest.mark.parametrize("table", _generator().TABLES, ids=lambda t: t.suite)
def test_generator_reproduces_the_committed_file_byte_for_byte(table: object) -> None:
    generator = _generator()
    table = next(t for t in generator.TABLES if t.suite == table.suite)
    assert generator.render(table) == generator.target(table).read_text(encoding="utf-8")


@pytest.mark.parametrize("table", _generator().TABLES, ids=lambda t: t.suite)
def test_transcriptions_are_unique_and_explain_every_uncovered_number(table: object) -> None:
    path = GENERATOR.parent / table.transcription
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [(r["row"], r["column"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r["note"] for r in rows if not r["model"])
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)


@pytest.mark.parametrize("name, uncertain", [("chexpert_ssl_medical", 1),
                                             ("chexpert_ssl_medical_uzeros", 0)])  # fmt: skip
def test_ssl_medical_chexpert_cards_on_a_miniature(
    tmp_path: Path, name: str, uncertain: int
) -> None:
    """Pleural Effusion only, blank -> 0, uncertain -> 1 or 0, every view of train.csv, the
    study's shuffled split (train_count scaled down from 134049 to fit the miniature)."""
    made = write_chexpert(tmp_path / "chexpert")
    card = committed(name, tmp_path / "chexpert")
    assert card.split.params.train_count == 134049 and not card.split.params.grouped
    params = dataclasses.replace(card.split.params, train_count=30)
    card = dataclasses.replace(card, split=dataclasses.replace(card.split, params=params))
    splits = by_row(load_splits(card))
    column = CHEXPERT_HEADER.index("Pleural Effusion")
    code = {"1.0": 1, "0.0": 0, "-1.0": uncertain, "": 0}
    expected = {int(r[-1]): code[r[column]] for r in made["train"]}  # valid.csv is ignored
    assert {**splits["train"], **splits["val"], **splits["test"]} == expected
    assert len(splits["train"]) + len(splits["val"]) == 30
    assert any(r[column] == "-1.0" for r in made["train"])
    assert any(r[3] == "Lateral" for r in made["train"])  # laterals are kept
